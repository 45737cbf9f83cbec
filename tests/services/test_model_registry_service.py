"""model_registry as a service: health follows the storage, reflection, metrics over HTTP,
replicas sharing one bucket, SIGTERM of the real entry point, configuration errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from store_harness import REPO, free_port
from registry_harness import MODEL, registry_config, wait_until, weights
from test_model_registry_api import Watcher, brief
from mtopt.model_registry import load_config, start_model_registry
from mtopt.model_registry.client import RegistryClient
from mtopt.model_registry.objects import LocalDirObjects
from mtopt.model_registry.errors import StorageUnavailableError
from mtopt.serving import ConfigError, RetryPolicy
from mtopt.v1 import model_registry_pb2 as pb

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class FlakyObjects(LocalDirObjects):
    """A local store whose storage 'does not answer' until `available` is set."""

    available = threading.Event()

    def ping(self):
        if not self.available.is_set():
            raise StorageUnavailableError("storage not answering yet")
        super().ping()


def test_health_is_not_serving_until_storage_answers_and_reflection_lists_the_service(aio_loop, tmp_path):
    FlakyObjects.available.clear()
    config = registry_config(tmp_path, "local", None)
    server = aio_loop.run(start_model_registry(config, objects=FlakyObjects(config.directory), readiness_interval_s=0.1))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "mtopt.v1.ModelRegistry"):
                assert health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == NOT_SERVING
            with pytest.raises(grpc.RpcError) as err:  # calls before the storage answers: retry later
                RegistryClient(channel, retry=RetryPolicy(max_attempts=1)).get_version(MODEL, 1)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            FlakyObjects.available.set()
            wait_until(lambda: health.Check(health_pb2.HealthCheckRequest(service="mtopt.v1.ModelRegistry"), timeout=5).status == SERVING,
                       what="health SERVING")
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
            names = {s.name for s in replies[0].list_services_response.service}
            assert {"mtopt.v1.ModelRegistry", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    finally:
        aio_loop.run(server.stop(0.5))


def test_metrics_are_served_over_http(registry):
    registry.publish(1)
    registry.client.pin(MODEL, "robot-1", 1)
    with pytest.raises(grpc.RpcError):
        registry.client.get_version("nope", 1)
    body = urllib.request.urlopen(f"http://127.0.0.1:{registry.server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'mtopt_model_registry_versions_published_total{model="q_function"} 1.0' in body
    assert 'mtopt_model_registry_latest_version{model="q_function"} 1.0' in body
    assert 'mtopt_model_registry_pinned_robots{model="q_function"} 1.0' in body
    assert 'mtopt_model_registry_rejected_total{reason="not_found"} 1.0' in body
    assert 'mtopt_model_registry_rejected_total{reason="sha256_mismatch"} 0.0' in body
    assert "mtopt_model_registry_watch_streams 0.0" in body
    assert 'mtopt_model_registry_events_total{model="q_function",type="published"} 1.0' in body
    assert "mtopt_model_registry_publish_duration_seconds_count 1.0" in body


@pytest.mark.parametrize("backend_kind", ["s3"])
def test_replicas_over_one_bucket_agree(make_registry, backend_kind):
    a = make_registry()
    b = make_registry(s3_bucket=a.config.s3_bucket)
    watcher = Watcher(b.stub, robot_id="robot-1", alias="latest", send_initial=True)
    assert brief(watcher.wait_for(1)) == [(0, "RESOLVED", "robot-1", 0, 0)]  # subscribed; nothing published yet
    a.publish(1)
    assert brief(watcher.wait_for(4)[1:]) == [(1, "PUBLISHED", "", 1, 0), (2, "ALIAS_SET", "latest", 1, 0),
                                              (2, "RESOLVED", "robot-1", 1, 0)]
    assert b.client.fetch(MODEL, 1) == weights(1)  # B reads what A wrote (on demand, before its next poll)
    # Both publish at once: distinct numbers, one log.
    replies, errors = [], []

    def publish(h, step):
        try:
            replies.append(h.publish(step))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(h, step)) for step, h in zip(range(2, 8), [a, b] * 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and sorted(r.version for r in replies) == [2, 3, 4, 5, 6, 7]
    b.client.set_alias(MODEL, "stable", 4)
    b.client.pin(MODEL, "robot-2", 3)
    def a_resolves_pin():
        try:
            return a.client.resolve("robot-2").version.version == 3
        except grpc.RpcError as e:  # A has not read B's latest log entries yet (stable not set)
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            return False

    wait_until(a_resolves_pin, what="A to see B's pin")
    assert a.client.resolve("robot-1").version.version == 4
    assert a.client.get_version(MODEL, alias="latest").version == 7
    listed = [v.version for v in a.client.list_versions(MODEL)]
    assert listed == [v.version for v in b.client.list_versions(MODEL)] == [7, 6, 5, 4, 3, 2, 1]
    last = a.server.registry.last_sequence(MODEL)  # 7 PUBLISHED, up to 7 latest moves, stable, a pin
    wait_until(lambda: watcher.events and watcher.events[-1].sequence == last, what="B's watcher to see every event")
    logged = [e for e in watcher.events if e.type != pb.VERSION_EVENT_TYPE_RESOLVED]
    assert [e.sequence for e in logged] == list(range(1, last + 1))  # one gap-free log, seen in order
    assert sorted(e.version.version for e in logged if e.type == pb.VERSION_EVENT_TYPE_PUBLISHED) == list(range(1, 8))
    resolved = [e.version.version for e in watcher.events if e.type == pb.VERSION_EVENT_TYPE_RESOLVED]
    assert resolved[-1] == 7 and resolved == sorted(resolved)  # robot-1 followed latest up, never back
    watcher.close()


def test_sigterm_stops_the_entry_point_gracefully(tmp_path):
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, MTOPT_MODEL_REGISTRY_PORT=str(port), MTOPT_MODEL_REGISTRY_METRICS_PORT=str(metrics_port),
               MTOPT_MODEL_REGISTRY_HOST="127.0.0.1", MTOPT_MODEL_REGISTRY_DIRECTORY=str(tmp_path / "models"),
               MTOPT_MODEL_REGISTRY_GRACE_S="2", MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS="latest")
    proc = subprocess.Popen([sys.executable, "-m", "mtopt.model_registry"], env=env, cwd=REPO,
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

            wait_until(serving, timeout=60, what="the registry process to serve")
            client = RegistryClient(channel)
            assert client.publish(MODEL, 1, weights(1)).version == 1
            assert client.resolve("robot-1").version.version == 1  # the configured default alias
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, out.decode()
        assert b"received SIGTERM" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    objects = LocalDirObjects(tmp_path / "models")  # the lock was released; the version and a snapshot are there
    try:
        assert objects.get("models/q_function/versions/0000000001/artifacts/model.pt") == weights(1)["model.pt"]
        assert objects.get("models/q_function/snapshot.json") is not None
    finally:
        objects.close()


def test_configuration_from_the_environment(tmp_path):
    c = load_config({"MTOPT_MODEL_REGISTRY_BACKEND": "s3", "MTOPT_MODEL_REGISTRY_S3_ENDPOINT": "minio:9000",
                     "AWS_ACCESS_KEY_ID": "ak", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS": "latest",
                     "MTOPT_MODEL_REGISTRY_MAX_ARTIFACT_BYTES": "1_000_000"})
    assert (c.backend, c.s3_endpoint, c.s3_access_key, c.default_alias, c.max_artifact_bytes) == ("s3", "minio:9000", "ak", "latest", 1_000_000)
    assert "s3cr3t-value" not in repr(c)
    for env, message in [
        ({"MTOPT_MODEL_REGISTRY_BACKEND": "gcs"}, "MTOPT_MODEL_REGISTRY_BACKEND must be one of local, s3"),
        ({"MTOPT_MODEL_REGISTRY_BACKEND": "s3", "MTOPT_MODEL_REGISTRY_S3_ENDPOINT": "m:9000"}, "MTOPT_S3_ACCESS_KEY"),
        ({"MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS": "Stable"}, "MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS must match"),
        ({"MTOPT_MODEL_REGISTRY_MAX_VERSION_BYTES": "10"}, "MTOPT_MODEL_REGISTRY_MAX_VERSION_BYTES must be >="),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(env)
    env = dict(os.environ, MTOPT_MODEL_REGISTRY_BACKEND="s3", MTOPT_MODEL_REGISTRY_S3_ENDPOINT="http://minio:9000")
    out = subprocess.run([sys.executable, "-m", "mtopt.model_registry"], env=env, cwd=REPO, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"MTOPT_MODEL_REGISTRY_S3_ENDPOINT" in out.stderr and b"without a scheme" in out.stderr
