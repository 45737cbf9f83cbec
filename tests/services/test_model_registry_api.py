"""model_registry over gRPC (local directory and MinIO): publish / get / list / download round
trips, aliases, pins, rollback, resolve, the watch stream and its resumption, restarts and
idempotent re-publishing. The harness is in registry_harness.py, the fixtures in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import threading
from types import SimpleNamespace

import grpc
import pytest

from registry_harness import MODEL, code_of, wait_until, weights
from mtopt.model_registry.client import ArtifactIntegrityError, AsyncRegistryClient, publish_chunks
from mtopt.v1 import common_pb2, model_registry_pb2 as pb, model_registry_pb2_grpc

ET = pb.VersionEventType


class Watcher:
    """Collects the events of one WatchVersions stream in a background thread."""

    def __init__(self, stub, **request):
        self.events: list[pb.VersionEvent] = []
        self.call = stub.WatchVersions(pb.WatchVersionsRequest(model=request.pop("model", MODEL), **request))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        with contextlib.suppress(grpc.RpcError):
            for e in self.call:
                self.events.append(e)

    def wait_for(self, n: int) -> list[pb.VersionEvent]:
        wait_until(lambda: len(self.events) >= n, what=f"{n} watch events (got {[(e.sequence, ET.Name(e.type)) for e in self.events]})")
        return self.events

    def close(self):
        self.call.cancel()
        self.thread.join(5)


def brief(events) -> list[tuple]:
    """(sequence, type, alias or robot, version, previous) per event, for readable assertions."""
    out = []
    for e in events:
        kind = ET.Name(e.type).removeprefix("VERSION_EVENT_TYPE_")
        out.append((e.sequence, kind, e.robot_id if kind in ("RESOLVED", "PINNED", "UNPINNED") else e.alias,
                    e.version.version, e.previous_version))
    return out


# -- round trips -----------------------------------------------------------------------------------
def test_publish_get_list_and_download_round_trip(registry):
    tasks = [SimpleNamespace(name="lift-red", skill="lift", description="lift a red object", index=0),
             common_pb2.Task(name="place-on-plate", skill="place", index=5)]
    big = os.urandom(300_000)  # several GetArtifact chunks (64 KiB in the harness)
    artifacts = {"q_tower.onnx": big, "q_head.onnx": b"head" * 1000, "model.pt": (common_pb2.ARTIFACT_KIND_TORCH_STATE_DICT, b"w" * 77)}
    v1 = registry.client.publish(MODEL, 1000, artifacts, metrics={"losses/td_loss": 0.25}, tasks=tasks,
                                 labels={"git_sha": "abc123"}, publish_id="run-1/1000")
    assert (v1.model, v1.version, v1.step, list(v1.aliases)) == (MODEL, 1, 1000, ["latest"])
    assert [(a.name, a.kind, a.size_bytes) for a in v1.artifacts] == [
        ("q_tower.onnx", common_pb2.ARTIFACT_KIND_ONNX, len(big)), ("q_head.onnx", common_pb2.ARTIFACT_KIND_ONNX, 4000),
        ("model.pt", common_pb2.ARTIFACT_KIND_TORCH_STATE_DICT, 77)]
    assert v1.artifacts[0].sha256 == hashlib.sha256(big).hexdigest()
    assert v1.artifacts[0].uri.endswith("models/q_function/versions/0000000001/artifacts/q_tower.onnx")
    assert [(t.name, t.skill, t.index) for t in v1.tasks] == [("lift-red", "lift", 0), ("place-on-plate", "place", 5)]
    assert v1.tasks[0].description == "lift a red object" and v1.labels["git_sha"] == "abc123"
    assert v1.metrics["losses/td_loss"] == 0.25 and v1.created_time.seconds > 0

    v2 = registry.publish(2000, parent_version=1)
    v3 = registry.publish(3000, parent_version=2)
    assert (v2.version, v3.version, v3.parent_version) == (2, 3, 2)
    got = registry.stub.GetVersion(pb.GetModelVersionRequest(model=MODEL, version=1), timeout=5)
    assert got.artifacts == v1.artifacts and list(got.aliases) == []  # latest has moved on
    assert registry.stub.GetVersion(pb.GetModelVersionRequest(model=MODEL, alias="latest"), timeout=5).version == 3

    page1 = registry.stub.ListVersions(pb.ListVersionsRequest(model=MODEL, page_size=2), timeout=5)
    assert [v.version for v in page1.versions] == [3, 2] and page1.next_page_token and dict(page1.aliases) == {"latest": 3}
    page2 = registry.stub.ListVersions(pb.ListVersionsRequest(model=MODEL, page_size=2, page_token=page1.next_page_token), timeout=5)
    assert [v.version for v in page2.versions] == [1] and not page2.next_page_token
    assert [v.version for v in registry.client.list_versions(MODEL)] == [3, 2, 1]

    blobs = registry.client.fetch(MODEL, 1)
    assert blobs == {"q_tower.onnx": big, "q_head.onnx": b"head" * 1000, "model.pt": b"w" * 77}  # byte-identical
    assert registry.client.fetch(MODEL, alias="latest") == weights(3000)
    chunks = list(registry.stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1, name="q_tower.onnx", offset=100_000), timeout=10))
    assert chunks[0].artifact.sha256 == v1.artifacts[0].sha256 and not chunks[1].HasField("artifact")
    assert [c.offset for c in chunks] == list(range(100_000, len(big), 64 * 1024))
    assert b"".join(c.data for c in chunks) == big[100_000:]
    by_kind = list(registry.stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1, kind=common_pb2.ARTIFACT_KIND_TORCH_STATE_DICT), timeout=5))
    assert by_kind[0].artifact.name == "model.pt" and b"".join(c.data for c in by_kind) == b"w" * 77
    at_end = list(registry.stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1, name="model.pt", offset=77), timeout=5))
    assert len(at_end) == 1 and at_end[0].offset == 77 and at_end[0].data == b""
    assert registry.metric("mtopt_model_registry_versions_published_total", model=MODEL) == 3
    assert registry.metric("mtopt_model_registry_latest_version", model=MODEL) == 3


def test_latest_moves_on_publish_and_stable_is_set_by_users(registry):
    registry.publish(1)
    with pytest.raises(grpc.RpcError) as err:  # nobody promoted anything yet
        registry.client.resolve("robot-1")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "no alias 'stable'" in err.value.details()
    reply = registry.client.set_alias(MODEL, "stable", 1, reason="eval ok")
    assert (reply.version.version, reply.previous_version, list(reply.version.aliases)) == (1, 0, ["latest", "stable"])
    registry.publish(2)
    assert registry.client.get_version(MODEL, alias="latest").version == 2
    assert registry.client.get_version(MODEL, alias="stable").version == 1  # stable stays until promoted
    again = registry.client.set_alias(MODEL, "stable", 1)
    assert again.previous_version == 1  # idempotent
    assert registry.client.set_alias(MODEL, "stable", 2).previous_version == 1
    v3 = registry.publish(3, aliases=["canary"])
    assert sorted(v3.aliases) == ["canary", "latest"]
    assert dict(registry.stub.ListVersions(pb.ListVersionsRequest(model=MODEL), timeout=5).aliases) == {"latest": 3, "stable": 2, "canary": 3}
    assert registry.client.resolve("robot-1").version.version == 2
    assert registry.client.resolve("robot-1", alias="latest").version.version == 3


def test_pin_overrides_the_alias_for_that_robot_only(registry):
    for step in (1, 2, 3):
        registry.publish(step)
    registry.client.set_alias(MODEL, "stable", 3)
    pin = registry.client.pin(MODEL, "robot-7", 1, reason="bisecting a regression")
    assert (pin.version.version, pin.previous_version) == (1, 0)
    r7, r8 = registry.client.resolve("robot-7"), registry.client.resolve("robot-8")
    assert (r7.version.version, r7.source, r7.alias) == (1, pb.RESOLVE_SOURCE_PIN, "")
    assert (r8.version.version, r8.source, r8.alias) == (3, pb.RESOLVE_SOURCE_ALIAS, "stable")
    assert registry.client.resolve("robot-7", alias="latest").version.version == 1  # a pin beats any alias
    assert registry.client.pin(MODEL, "robot-7", 2).previous_version == 1
    assert registry.metric("mtopt_model_registry_pinned_robots", model=MODEL) == 1
    unpin = registry.client.unpin(MODEL, "robot-7")
    assert (unpin.was_pinned, unpin.previous_version) == (True, 2)
    assert registry.client.resolve("robot-7").version.version == 3
    assert registry.client.unpin(MODEL, "robot-7").was_pinned is False  # idempotent


def test_rollback_walks_an_alias_back(registry):
    for step in (1, 2, 3, 4):
        registry.publish(step)
    for v in (1, 2, 3):
        registry.client.set_alias(MODEL, "stable", v)
    back = registry.client.rollback(MODEL, "stable", reason="v3 drops grasps")
    assert (back.alias, back.from_version, back.version.version) == ("stable", 3, 2)
    assert registry.client.rollback(MODEL, "stable").version.version == 1
    assert code_of(lambda: registry.client.rollback(MODEL, "stable")) == grpc.StatusCode.FAILED_PRECONDITION
    registry.client.set_alias(MODEL, "stable", 4)
    explicit = registry.client.rollback(MODEL, "stable", to_version=2)
    assert (explicit.from_version, explicit.version.version) == (4, 2)
    assert registry.client.rollback(MODEL, "stable").version.version == 1  # history before 2 is kept
    latest_back = registry.client.rollback(MODEL, "latest")
    assert (latest_back.from_version, latest_back.version.version) == (4, 3)
    assert registry.client.resolve("robot-1", alias="latest").version.version == 3


# -- watch -----------------------------------------------------------------------------------------
def test_watch_streams_changes_in_order_and_resumes_after_a_sequence(registry):
    registry.publish(1)
    registry.client.set_alias(MODEL, "stable", 1)
    watcher = Watcher(registry.stub, robot_id="robot-1", send_initial=True)  # follows the default alias, stable
    initial = watcher.wait_for(3)
    assert brief(initial) == [(0, "ALIAS_SET", "latest", 1, 0), (0, "ALIAS_SET", "stable", 1, 0), (0, "RESOLVED", "robot-1", 1, 0)]
    everyone = Watcher(registry.stub, after_sequence=3)  # no robot; everything after what we have seen

    registry.publish(2)                                   # seq 4 PUBLISHED, 5 ALIAS_SET latest
    registry.client.set_alias(MODEL, "stable", 2)         # seq 6 -> robot-1 resolves to 2
    registry.client.pin(MODEL, "robot-1", 1)              # seq 7 -> robot-1 resolves to 1
    registry.client.pin(MODEL, "robot-2", 2)              # seq 8 (another robot: no RESOLVED)
    registry.client.unpin(MODEL, "robot-1")               # seq 9 -> robot-1 resolves to 2
    registry.client.rollback(MODEL, "stable")             # seq 10 -> robot-1 resolves to 1
    expected = [
        (4, "PUBLISHED", "", 2, 0), (5, "ALIAS_SET", "latest", 2, 1),
        (6, "ALIAS_SET", "stable", 2, 1), (6, "RESOLVED", "robot-1", 2, 1),
        (7, "PINNED", "robot-1", 1, 0), (7, "RESOLVED", "robot-1", 1, 2),
        (8, "PINNED", "robot-2", 2, 0),
        (9, "UNPINNED", "robot-1", 0, 1), (9, "RESOLVED", "robot-1", 2, 1),
        (10, "ROLLED_BACK", "stable", 1, 2), (10, "RESOLVED", "robot-1", 1, 2),
    ]
    assert brief(watcher.wait_for(3 + len(expected))[3:]) == expected
    assert brief(everyone.wait_for(7)) == [e for e in expected if e[1] != "RESOLVED"]
    assert watcher.events[3].version.artifacts[0].name == "q_tower.onnx"  # PUBLISHED carries the whole version
    assert registry.metric("mtopt_model_registry_watch_streams") == 2
    watcher.close()
    everyone.close()
    wait_until(lambda: registry.metric("mtopt_model_registry_watch_streams") == 0, what="watch streams to close")

    # Resuming after sequence 6 replays exactly what came after, with RESOLVED as seen from there.
    resumed = Watcher(registry.stub, robot_id="robot-1", after_sequence=6, send_initial=True)
    got = brief(resumed.wait_for(3 + 7))
    assert got[:3] == [(0, "ALIAS_SET", "latest", 2, 0), (0, "ALIAS_SET", "stable", 2, 0),  # the state at sequence 6
                       (0, "RESOLVED", "robot-1", 2, 0)]
    assert got[3:] == expected[4:]
    registry.publish(3)
    assert brief(resumed.wait_for(12)[10:]) == [(11, "PUBLISHED", "", 3, 0), (12, "ALIAS_SET", "latest", 3, 2)]
    resumed.close()


def test_a_robot_can_watch_before_the_first_publish(registry):
    watcher = Watcher(registry.stub, model="success_detector", robot_id="robot-1", alias="latest", send_initial=True)
    assert brief(watcher.wait_for(1)) == [(0, "RESOLVED", "robot-1", 0, 0)]  # nothing to run yet
    registry.publish(1, model="success_detector")
    assert brief(watcher.wait_for(4)[1:]) == [(1, "PUBLISHED", "", 1, 0), (2, "ALIAS_SET", "latest", 1, 0),
                                              (2, "RESOLVED", "robot-1", 1, 0)]
    watcher.close()


def test_many_watchers_share_one_fan_out_without_threads(registry, aio_loop):
    registry.publish(1)

    async def open_watches(n):
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{registry.server.port}")
        stub = model_registry_pb2_grpc.ModelRegistryStub(channel)
        calls = [stub.WatchVersions(pb.WatchVersionsRequest(model=MODEL, robot_id=f"robot-{i}", alias="latest", send_initial=True))
                 for i in range(n)]
        firsts = await asyncio.gather(*(c.read() for c in calls))  # ALIAS_SET latest
        seconds = await asyncio.gather(*(c.read() for c in calls))  # RESOLVED
        assert {e.type for e in firsts} == {ET.Value("VERSION_EVENT_TYPE_ALIAS_SET")}
        assert {(e.type, e.version.version) for e in seconds} == {(ET.Value("VERSION_EVENT_TYPE_RESOLVED"), 1)}
        return channel, calls

    before = threading.active_count()
    channel, calls = aio_loop.run(open_watches(300))
    assert registry.metric("mtopt_model_registry_watch_streams") == 300
    assert threading.active_count() - before < 10
    registry.publish(2)

    async def read_all():
        out = []
        for _ in range(3):  # PUBLISHED, ALIAS_SET latest, RESOLVED
            out.append(await asyncio.gather(*(c.read() for c in calls)))
        for c in calls:
            c.cancel()
        await channel.close()
        return out

    rounds = aio_loop.run(read_all())
    assert [{(ET.Name(e.type), e.version.version) for e in r} for r in rounds] == [
        {("VERSION_EVENT_TYPE_PUBLISHED", 2)}, {("VERSION_EVENT_TYPE_ALIAS_SET", 2)}, {("VERSION_EVENT_TYPE_RESOLVED", 2)}]
    wait_until(lambda: registry.metric("mtopt_model_registry_watch_streams") == 0, what="watch streams to close")


def test_async_client_watch_reconnects_and_resumes_across_a_restart(registry, aio_loop):
    registry.publish(1)
    seen: list[pb.VersionEvent] = []
    done = threading.Event()

    async def follow():
        async with AsyncRegistryClient(f"127.0.0.1:{registry.server.port}", timeout_s=5) as client:
            client.retry = dataclasses.replace(client.retry, initial_backoff_s=0.05, max_backoff_s=0.2)
            async for event in client.watch(MODEL, robot_id="robot-1", alias="latest", send_initial=True):
                seen.append(event)
                if event.type == ET.Value("VERSION_EVENT_TYPE_RESOLVED") and event.version.version == 3:
                    done.set()
                    return

    future = asyncio.run_coroutine_threadsafe(follow(), aio_loop.loop)
    wait_until(lambda: len(seen) >= 2, what="the initial events")
    registry.publish(2)
    wait_until(lambda: len(seen) >= 5, what="version 2")
    registry.restart(grace_s=0.2)
    registry.publish(3)
    future.result(30)
    assert brief(seen) == [
        (0, "ALIAS_SET", "latest", 1, 0), (0, "RESOLVED", "robot-1", 1, 0),
        (3, "PUBLISHED", "", 2, 0), (4, "ALIAS_SET", "latest", 2, 1), (4, "RESOLVED", "robot-1", 2, 1),
        (5, "PUBLISHED", "", 3, 0), (6, "ALIAS_SET", "latest", 3, 2), (6, "RESOLVED", "robot-1", 3, 2),
    ]


# -- durability and idempotency --------------------------------------------------------------------
@pytest.mark.parametrize("snapshot_every", [1000, 2])
def test_restart_keeps_versions_aliases_pins_and_the_log(make_registry, snapshot_every):
    registry = make_registry(snapshot_every=snapshot_every)
    for step in (1, 2, 3):
        registry.publish(step, publish_id=f"run/{step}")
    registry.client.set_alias(MODEL, "stable", 2)
    registry.client.pin(MODEL, "robot-3", 1)
    registry.client.rollback(MODEL, "latest")  # latest 3 -> 2
    registry.publish(1, model="success_detector")
    before = registry.stub.ListVersions(pb.ListVersionsRequest(model=MODEL), timeout=5)
    registry.restart()
    after = registry.stub.ListVersions(pb.ListVersionsRequest(model=MODEL), timeout=5)
    assert after == before
    assert registry.metric("mtopt_model_registry_latest_version", model=MODEL) == 2
    assert registry.metric("mtopt_model_registry_pinned_robots", model=MODEL) == 1
    assert registry.client.resolve("robot-3").version.version == 1
    assert registry.client.resolve("robot-4").version.version == 2
    assert registry.client.fetch(MODEL, 3) == weights(3)
    assert registry.client.get_version("success_detector", 1).version == 1
    assert registry.publish(3, publish_id="run/3").version == 3  # idempotency survives the restart
    assert registry.publish(4, publish_id="run/4").version == 4
    assert registry.client.get_version(MODEL, alias="latest").version == 4
    events = Watcher(registry.stub, after_sequence=6)  # the log itself survived: resume from before the restart
    assert brief(events.wait_for(5)) == [(7, "ALIAS_SET", "stable", 2, 0), (8, "PINNED", "robot-3", 1, 0),
                                         (9, "ROLLED_BACK", "latest", 2, 3), (10, "PUBLISHED", "", 4, 0),
                                         (11, "ALIAS_SET", "latest", 4, 2)]
    events.close()
    assert registry.metric("mtopt_model_registry_latest_version", model=MODEL) == 4


def test_republishing_a_publish_id_is_idempotent(registry):
    first = registry.publish(7, publish_id="run-9/7")
    reply = registry.stub.Publish(iter(publish_chunks(MODEL, 7, weights(7), publish_id="run-9/7")), timeout=10)
    assert reply.already_existed and reply.version == first
    keys = registry.stored_keys()
    # Even a retry that would send its data again is answered at once from the header.
    header_only = publish_chunks(MODEL, 7, weights(7), publish_id="run-9/7")[:1]
    assert registry.stub.Publish(iter(header_only), timeout=10).already_existed
    assert registry.stored_keys() == keys and registry.metric("mtopt_model_registry_duplicate_publishes_total") == 2
    assert [v.version for v in registry.client.list_versions(MODEL)] == [1]
    with pytest.raises(grpc.RpcError) as err:  # same id, other weights: a bug in the publisher
        registry.client.publish(MODEL, 8, weights(8), publish_id="run-9/7")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS and "use a fresh publish_id" in err.value.details()
    assert registry.stored_keys() == keys
    assert registry.metric("mtopt_model_registry_rejected_total", reason="conflict") == 1


class _Broken(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE


def test_client_downloads_resume_after_a_broken_stream_and_check_the_hash(registry):
    big = os.urandom(200_000)
    v = registry.client.publish(MODEL, 1, {"q_tower.onnx": big})
    real, offsets = registry.client.stub.GetArtifact, []

    def flaky(request, timeout=None):
        offsets.append(request.offset)
        stream = real(request, timeout=timeout)
        if len(offsets) == 1:  # the first stream breaks after one chunk
            def broken():
                yield next(stream)
                stream.cancel()
                raise _Broken()
            return broken()
        return stream

    registry.client.stub.GetArtifact = flaky
    registry.client.retry = dataclasses.replace(registry.client.retry, initial_backoff_s=0.01)
    assert registry.client.fetch(MODEL, 1) == {"q_tower.onnx": big}
    assert offsets == [0, 64 * 1024]  # the retry asked only for the rest
    registry.client.stub.GetArtifact = real
    registry.server.registry.objects.put(f"models/{MODEL}/versions/0000000001/artifacts/q_tower.onnx", big[:-1] + b"!")
    with pytest.raises(ArtifactIntegrityError, match="the manifest says"):
        registry.client.fetch(MODEL, v.version)
