"""episode_store as a service: health, reflection, metrics over HTTP, streams without threads,
restarts during uploads, broken uploads, SIGTERM of the real entry point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from store_harness import REPO, chunks, encode, free_port, make_episode, store_config
from mtopt.episode_store import start_episode_store
from mtopt.episode_store.storage import LocalDirBackend, StorageUnavailableError
from mtopt.serving import RetryPolicy, retry_idempotent
from mtopt.serving.client import RETRYABLE_CODES
from mtopt.v1 import episode_store_pb2 as es_pb
from mtopt.v1 import episode_store_pb2_grpc as es_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def wait_until(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class FlakyBackend(LocalDirBackend):
    """A local backend whose storage 'does not answer' until `available` is set."""

    available = threading.Event()

    def ping(self):
        if not self.available.is_set():
            raise StorageUnavailableError("storage not answering yet")
        super().ping()


def test_health_is_not_serving_until_storage_answers_and_reflection_lists_the_service(aio_loop, tmp_path):
    FlakyBackend.available.clear()
    config = store_config(tmp_path, "local", None)
    store = aio_loop.run(start_episode_store(config, backend=FlakyBackend(config.directory), readiness_interval_s=0.1))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{store.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "mtopt.v1.EpisodeStore"):
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == NOT_SERVING
            FlakyBackend.available.set()
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(service="mtopt.v1.EpisodeStore"), timeout=5).status == SERVING,
                       what="health SERVING")
            assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == SERVING

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = list(reflection.ServerReflectionInfo(iter([
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="mtopt.v1.EpisodeStore"),
            ]), timeout=5))
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"mtopt.v1.EpisodeStore", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
            assert replies[1].file_descriptor_response.file_descriptor_proto
    finally:
        aio_loop.run(store.stop(0.5))


def test_metrics_are_served_over_http(store):
    ep = make_episode(task="lift-blue")
    store.upload(encode(ep))
    with pytest.raises(grpc.RpcError):
        store.upload(encode(ep), sha256="0" * 64)
    body = urllib.request.urlopen(f"http://127.0.0.1:{store.store.metrics_port}/metrics", timeout=5).read().decode()
    assert 'mtopt_episode_store_episodes_stored_total{task="lift-blue"} 1.0' in body
    assert 'mtopt_episode_store_rejected_total{reason="sha256_mismatch"} 1.0' in body
    assert "mtopt_episode_store_upload_duration_seconds_count 1.0" in body
    assert 'mtopt_episode_store_stored_bytes_total{task="lift-blue"}' in body


def test_watch_streams_cost_no_threads(store, aio_loop):
    async def open_watches(n):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{store.store.port}")
        stub = es_grpc.EpisodeStoreStub(channel)
        calls = [stub.WatchEpisodes(es_pb.WatchEpisodesRequest(backfill=True)) for _ in range(n)]
        firsts = await asyncio.gather(*(c.read() for c in calls))
        assert all(f.type == es_pb.EPISODE_EVENT_TYPE_CAUGHT_UP for f in firsts)
        return channel, calls

    before = threading.active_count()
    channel, calls = aio_loop.run(open_watches(200))
    assert store.metric("mtopt_episode_store_watch_streams") == 200
    assert threading.active_count() - before < 10
    ep = make_episode()
    store.upload(encode(ep))

    async def read_all():
        events = await asyncio.gather(*(c.read() for c in calls))
        for c in calls:
            c.cancel()
        await channel.close()
        return events

    events = aio_loop.run(read_all())
    assert {e.episode.episode_id for e in events} == {ep.episode_id}
    wait_until(lambda: store.metric("mtopt_episode_store_watch_streams") == 0, what="watch streams to close")


def test_cancelled_upload_is_never_listed(store):
    ep = make_episode()
    data = encode(ep)
    sent_half, release = threading.Event(), threading.Event()

    def requests():
        msgs = chunks(data, chunk_size=256)
        yield from msgs[: len(msgs) // 2]
        sent_half.set()
        release.wait(10)  # the robot loses its connection here

    future = store.stub.UploadEpisode.future(requests(), timeout=30)
    assert sent_half.wait(10)
    time.sleep(0.05)
    future.cancel()
    release.set()
    # The server sees the stream end early (truncated) or the call cancelled, depending on timing.
    wait_until(lambda: store.metric("mtopt_episode_store_rejected_total", reason="cancelled")
               + store.metric("mtopt_episode_store_rejected_total", reason="truncated") == 1, what="the rejection metric")
    wait_until(lambda: store.metric("mtopt_episode_store_uploads_in_flight") == 0, what="the upload to end")
    assert store.list_all() == []
    with pytest.raises(grpc.RpcError) as err:
        store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=ep.episode_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert store.upload(data).already_existed is False  # the retry stores it, once
    assert [s.episode_id for s in store.list_all()] == [ep.episode_id]


def test_store_restart_during_uploads_loses_no_acknowledged_episode(make_store):
    store = make_store(grace_s=0.3)
    blobs = [encode(make_episode(robot_id=f"robot-{i % 4}", seed=i)) for i in range(32)]
    ids = [es_pb.UploadEpisodeChunk.FromString(chunks(b)[0].SerializeToString()).header.episode_id for b in blobs]
    policy = RetryPolicy(max_attempts=100, initial_backoff_s=0.02, max_backoff_s=0.3,
                         retryable_codes=RETRYABLE_CODES | {grpc.StatusCode.CANCELLED})
    acked: dict[str, es_pb.UploadEpisodeResponse] = {}
    lock = threading.Lock()

    def robot(k):
        for data, episode_id in list(zip(blobs, ids))[k::4]:
            reply = retry_idempotent(lambda: store.upload(data, timeout=5), policy)
            with lock:
                acked[episode_id] = reply

    # One more robot is half-way through an upload when the store goes down.
    slow_data = encode(make_episode(robot_id="robot-slow", seed=99))
    slow_id = chunks(slow_data)[0].header.episode_id
    in_flight, restarted, first_attempt = threading.Event(), threading.Event(), []

    def slow_robot():
        def requests():
            msgs = chunks(slow_data, chunk_size=256)
            yield from msgs[:3]
            in_flight.set()
            restarted.wait(30)
            yield from msgs[3:]

        try:
            first_attempt.append(store.stub.UploadEpisode(requests(), timeout=30))
        except grpc.RpcError as e:
            first_attempt.append(e.code())
        reply = retry_idempotent(lambda: store.upload(slow_data, timeout=5), policy)
        with lock:
            acked[slow_id] = reply

    threads = [threading.Thread(target=robot, args=(k,)) for k in range(4)] + [threading.Thread(target=slow_robot)]
    for t in threads:
        t.start()
    assert in_flight.wait(20)
    for stop_after in (6, 16):
        wait_until(lambda: len(acked) >= stop_after, what=f"{stop_after} acknowledged uploads")
        store.restart(grace_s=0.3)
        restarted.set()
    for t in threads:
        t.join(60)
    assert first_attempt and isinstance(first_attempt[0], grpc.StatusCode)  # the stream broke with the restart
    ids.append(slow_id)
    assert set(acked) == set(ids)
    listed = [s.episode_id for s in store.list_all()]
    assert sorted(listed) == sorted(ids)  # every acknowledged episode, none twice
    for data, episode_id in zip(blobs[:4], ids):
        got = store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=episode_id), timeout=10)
        assert got.episode.SerializeToString() == data
    # A watch from the beginning sees each exactly once too.
    events = []
    for ev in store.stub.WatchEpisodes(es_pb.WatchEpisodesRequest(backfill=True), timeout=20):
        if ev.type == es_pb.EPISODE_EVENT_TYPE_CAUGHT_UP:
            if len(events) == len(ids):
                break
            continue
        events.append(ev.episode.episode_id)
        if len(events) == len(ids):
            break
    assert sorted(events) == sorted(ids)


def test_sigterm_stops_the_entry_point_gracefully(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, MTOPT_EPISODE_STORE_PORT=str(port), MTOPT_EPISODE_STORE_METRICS_PORT=str(metrics_port),
               MTOPT_EPISODE_STORE_HOST="127.0.0.1", MTOPT_EPISODE_STORE_DIRECTORY=str(tmp_path / "ep"),
               MTOPT_EPISODE_STORE_GRACE_S="2")
    proc = subprocess.Popen([sys.executable, "-m", "mtopt.episode_store"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            def serving():
                try:
                    return health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == SERVING
                except grpc.RpcError:
                    assert proc.poll() is None, proc.stdout.read().decode()
                    return False

            wait_until(serving, timeout=60, what="the store process to serve")
            ep = make_episode()
            reply = es_grpc.EpisodeStoreStub(channel).UploadEpisode(iter(chunks(encode(ep))), timeout=10)
            assert not reply.already_existed
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"received SIGTERM" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    backend = LocalDirBackend(tmp_path / "ep")  # the lock was released, the episode is there
    try:
        assert backend.get(ep.episode_id) is not None
    finally:
        backend.close()


def test_invalid_configuration_names_the_variable(tmp_path):
    env = dict(os.environ, MTOPT_EPISODE_STORE_BACKEND="s3", MTOPT_EPISODE_STORE_S3_ENDPOINT="http://minio:9000")
    out = subprocess.run([sys.executable, "-m", "mtopt.episode_store"], env=env, cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"MTOPT_EPISODE_STORE_S3_ENDPOINT" in out.stderr and b"without a scheme" in out.stderr
