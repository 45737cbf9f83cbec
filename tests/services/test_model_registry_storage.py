"""The registry below gRPC, on a local directory and on real MinIO: the event-log fold, version
claims and visibility, crashes half-way through a publish, replicas racing on one bucket,
snapshots, and reading events older than the in-memory ring."""

from __future__ import annotations

import hashlib
import threading

import pytest

from registry_harness import MODEL, weights
from mtopt.model_registry.client import artifact_kind
from mtopt.model_registry.errors import NotFoundError, PreconditionError, StorageUnavailableError
from mtopt.model_registry.layout import (
    ALIAS_SET, PINNED, PUBLISHED, ROLLED_BACK, UNPINNED, ArtifactRecord, Event, NewVersion, VersionRecord, claim_key, log_key,
    snapshot_key,
)
from mtopt.model_registry.objects import LocalDirObjects, MinioObjects
from mtopt.model_registry.registry import Registry
from mtopt.model_registry.state import ModelState, rewind


def new_version(step: int, publish_id: str | None = None, aliases=()) -> tuple[NewVersion, dict[str, bytes]]:
    blobs = weights(step)
    artifacts = tuple(ArtifactRecord(n, artifact_kind(n), len(d), hashlib.sha256(d).hexdigest()) for n, d in blobs.items())
    return NewVersion(MODEL, publish_id or f"run/{step}", step, artifacts=artifacts, aliases=tuple(aliases)), blobs


class Crash(RuntimeError):
    pass


class Crashing:
    """Wraps an object store; the first put of a key containing ``crash_on`` raises Crash."""

    def __init__(self, inner):
        self.inner, self.crash_on = inner, None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _maybe_crash(self, key):
        if self.crash_on and self.crash_on in key:
            self.crash_on = None
            raise Crash(key)

    def put(self, key, data):
        self._maybe_crash(key)
        self.inner.put(key, data)

    def put_if_absent(self, key, data):
        self._maybe_crash(key)
        return self.inner.put_if_absent(key, data)


@pytest.fixture
def objects(request, tmp_path, backend_kind):
    """One object store (a directory, or a fresh MinIO bucket) for the test."""
    if backend_kind == "local":
        store = LocalDirObjects(tmp_path / "models", fsync=False)
    else:
        minio = request.getfixturevalue("minio_server")
        store = MinioObjects(minio.endpoint, minio.new_bucket_name(), minio.access_key, minio.secret_key)
    yield store
    store.close()


def opened(objects, **kwargs) -> Registry:
    """A registry process over ``objects`` (a second one over the same objects is a restart)."""
    r = Registry(objects, **kwargs)
    r.ensure_loaded()
    return r


def _ev(seq, type_, **kw):
    return Event(seq, type_, MODEL, 0, **kw)


def test_state_folds_aliases_history_pins_and_rewinds():
    s = ModelState(MODEL)
    new, _ = new_version(1)
    for v in (1, 2, 3):
        s.apply(_ev(s.last_sequence + 1, PUBLISHED, version=v, record=VersionRecord.create(new, v, 0)))
    events = [_ev(4, ALIAS_SET, alias="stable", version=1), _ev(5, ALIAS_SET, alias="stable", version=2, previous_version=1),
              _ev(6, ALIAS_SET, alias="stable", version=3, previous_version=2), _ev(7, PINNED, robot_id="r1", version=1),
              _ev(8, ROLLED_BACK, alias="stable", version=2, previous_version=3), _ev(9, UNPINNED, robot_id="r1", previous_version=1)]
    for e in events:
        s.apply(e)
    assert (s.aliases, s.history, s.pins) == ({"stable": 2}, {"stable": [1]}, {})
    assert s.plan_rollback("stable", 0, "")[1:] == (2, 1)
    with pytest.raises(NotFoundError):
        s.plan_rollback("canary", 0, "")
    assert s.plan_set_alias("stable", 2, "")[0] == []  # already there: no event
    at5 = rewind(s.aliases, s.pins.get("r1", 0), "r1", events[2:], 5)
    assert (at5.aliases, at5.pin) == ({"stable": 2}, 0)
    at7 = rewind(s.aliases, 0, "r1", events[4:], 7)
    assert (at7.aliases, at7.pin) == ({"stable": 3}, 1)
    assert rewind(s.aliases, 0, "r1", events, 3).aliases == {}
    with pytest.raises(ValueError, match="jumps"):
        s.apply(_ev(11, PINNED, robot_id="r1", version=1))
    s2 = ModelState(MODEL)
    s2.apply(_ev(1, PUBLISHED, version=1, record=VersionRecord.create(new, 1, 0)))
    s2.apply(_ev(2, ALIAS_SET, alias="stable", version=1))
    with pytest.raises(PreconditionError, match="no earlier version"):
        s2.plan_rollback("stable", 0, "")
    assert ModelState.from_snapshot(s.to_snapshot()).to_snapshot() == s.to_snapshot()


def test_a_version_is_visible_only_after_its_event_and_a_crashed_publish_is_finished_by_its_retry(objects):
    crashing = Crashing(objects)
    registry = opened(crashing)
    registry.publish(*new_version(1))
    for crash_on in ("/artifacts/q_head.onnx", "manifest.json", "/log/"):
        crashing.crash_on = crash_on
        with pytest.raises(Crash):
            registry.publish(*new_version(2))
        restarted = opened(crashing)
        assert [r.version for r, _ in restarted.list_versions(MODEL, 0, 10)[0]] == [1], crash_on  # nothing half-done is visible
        with pytest.raises(NotFoundError):
            restarted.get_version(MODEL, 2)
        assert objects.get(claim_key(MODEL, 2)) is not None  # only the reservation of number 2 remains
        registry = restarted
    # The retry finishes the crashed publish under the number it had reserved.
    record2, existed = restarted.publish(*new_version(2))
    assert (record2.version, existed) == (2, False)
    for name, data in weights(2).items():
        assert objects.get(f"models/{MODEL}/versions/0000000002/artifacts/{name}") == data
    # A crashed publish that is never retried leaves a gap: the next publishes skip its number.
    crashing.crash_on = "manifest.json"
    with pytest.raises(Crash):
        restarted.publish(*new_version(3))
    again = opened(crashing)
    assert [again.publish(*new_version(step))[0].version for step in (4, 3)] == [4, 5]
    assert [r.version for r, _ in again.list_versions(MODEL, 0, 10)[0]] == [5, 4, 2, 1]
    assert again.get_version(MODEL, alias="latest")[0].version == 5
    assert again.publish(*new_version(2))[1] is True


def test_snapshots_speed_up_restarts_and_a_broken_one_is_ignored(objects):
    registry = opened(objects, snapshot_every=3)
    for step in range(1, 5):
        registry.publish(*new_version(step))
    registry.set_alias(MODEL, "stable", 2)
    registry.pin(MODEL, "robot-1", 1)
    assert objects.get(snapshot_key(MODEL)) is not None
    expected = registry.list_versions(MODEL, 0, 100)
    for corrupt in (False, True):
        if corrupt:
            objects.put(snapshot_key(MODEL), b"{not json")
        restarted = opened(objects, snapshot_every=3)
        assert restarted.list_versions(MODEL, 0, 100) == expected
        assert restarted.resolve(MODEL, "robot-1", "stable")[0].version == 1
        assert [e.sequence for e in restarted.events(MODEL, 0)] == list(range(1, 11))  # older than the snapshot: from the log


def test_events_older_than_the_ring_are_read_from_the_log(objects):
    registry = opened(objects, ring_size=4)
    registry.publish(*new_version(1))
    for i in range(10):
        registry.pin(MODEL, f"robot-{i}", 1)
    assert registry.cached_events(MODEL, 3) is None
    assert [e.sequence for e in registry.cached_events(MODEL, 9)] == [10, 11, 12]
    assert [e.sequence for e in registry.events(MODEL, 3)] == list(range(4, 13))
    start = registry.watch_start(MODEL, 5, "robot-7")
    assert [e.sequence for e in start.backlog] == list(range(6, 13)) and (start.at.pin, start.last_sequence) == (0, 12)
    assert registry.watch_start(MODEL, 0, "robot-7").at.pin == 1


@pytest.mark.parametrize("backend_kind", ["s3"])
def test_replicas_racing_on_one_bucket_never_collide(objects, minio_server, backend_kind):
    other = MinioObjects(minio_server.endpoint, objects.bucket, minio_server.access_key, minio_server.secret_key)
    replicas = [opened(objects), opened(other)]
    barrier, results, errors = threading.Barrier(10), [], []

    def publish(i):
        step = 1 if i >= 8 else i + 2  # threads 8 and 9 retry one publish_id through both replicas
        barrier.wait()
        try:
            results.append((step, replicas[i % 2].publish(*new_version(step))))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    created = sorted(r.version for _, (r, existed) in results if not existed)
    assert len(created) == len(set(created)) == 9  # distinct numbers (a raced publish_id may leave a gap)
    once = [(r.version, existed) for step, (r, existed) in results if step == 1]
    assert once[0][0] == once[1][0] and sorted(e for _, e in once) == [False, True]  # one version for one publish_id
    for r in replicas:
        r.refresh_all()
    states = [r.list_versions(MODEL, 0, 100) for r in replicas]
    assert states[0] == states[1] and [v.version for v, _ in states[0][0]] == created[::-1]
    assert states[0][2] == {"latest": created[-1]}
    assert objects.get(log_key(MODEL, 1)) is not None and replicas[0].last_sequence(MODEL) == replicas[1].last_sequence(MODEL)
    other.close()


def test_storage_that_does_not_answer_is_unavailable(tmp_path):
    objects = MinioObjects("127.0.0.1:9", "mtopt", "a", "b", timeout_s=1.0)
    registry = Registry(objects)
    with pytest.raises(StorageUnavailableError, match="127.0.0.1:9"):
        registry.ensure_loaded()
    with pytest.raises(StorageUnavailableError, match="not loaded its storage yet"):
        registry.get_version(MODEL, 1)
    objects.close()
    first = LocalDirObjects(tmp_path / "models")
    with pytest.raises(StorageUnavailableError, match="in use by another model_registry"):
        LocalDirObjects(tmp_path / "models")
    first.close()
