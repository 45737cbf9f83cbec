"""Spool -> uploader -> a real in-process episode_store: exactly once, outages, rejections, restarts."""

from __future__ import annotations


import grpc
import pytest

from agent_harness import agent_config, wait_until
from store_harness import encode, make_episode

from mtopt_agent.metrics import AgentMetrics
from mtopt_agent.runtime import AgentRuntime
from mtopt_agent.spool import EpisodeSpool
from mtopt_agent.uploader import Result, Uploader
from mtopt.serving.client import RetryPolicy
from mtopt.v1 import episode_store_pb2_grpc as es_grpc

FAST = RetryPolicy(initial_backoff_s=0.02, max_backoff_s=0.2)


def _stored_ids(store) -> list[str]:
    return [s.episode_id for s in store.list_all()]


def test_collected_episodes_land_in_the_store_exactly_once(store, tmp_path):
    config = agent_config(tmp_path, store_address=f"127.0.0.1:{store.store.port}", max_episodes=6)
    with AgentRuntime(config) as runtime:
        reports = []
        runtime.agent.run(runtime.stop_event, 6, on_episode=reports.append)
        assert runtime.spool.wait_until_empty(30)
        m = runtime.metrics
        assert m.value("mtopt_robot_agent_uploaded_episodes_total") == 6
        assert m.value("mtopt_robot_agent_spool_episodes") == 0
    ids = _stored_ids(store)
    assert sorted(ids) == sorted(r.episode_id for r in reports) and len(set(ids)) == 6
    stored = {s.episode_id: s for s in store.list_all()}
    for r in reports:
        s = stored[r.episode_id]
        assert (s.robot_id, s.task, s.policy_version, s.num_steps) == ("sim-0", r.task, 0, r.num_steps)
        assert s.policy_name == "scripted"
    assert store.metric("mtopt_episode_store_duplicate_uploads_total") == 0


def test_store_outage_during_collection_loses_and_duplicates_nothing(store, tmp_path):
    store.stop(grace_s=0.1)  # the store is down before the robot starts
    config = agent_config(tmp_path, store_address=f"127.0.0.1:{store.config.port}")
    with AgentRuntime(config) as runtime:
        reports = []
        runtime.agent.run(runtime.stop_event, 8, on_episode=reports.append)  # collection goes on
        assert runtime.spool.depth == 8
        wait_until(lambda: runtime.metrics.value("mtopt_robot_agent_upload_errors_total", {"code": "UNAVAILABLE"}) >= 2,
                   what="failed upload attempts while the store is down")
        assert runtime.metrics.value("mtopt_robot_agent_uploaded_episodes_total") == 0
        store.start()
        runtime.agent.run(runtime.stop_event, 2, on_episode=reports.append)
        assert runtime.spool.wait_until_empty(30)
        assert runtime.metrics.value("mtopt_robot_agent_uploaded_episodes_total") == 10
    ids = _stored_ids(store)
    assert len(ids) == 10 and sorted(ids) == sorted(r.episode_id for r in reports)


def test_store_restart_while_uploading(store, tmp_path):
    config = agent_config(tmp_path, store_address=f"127.0.0.1:{store.store.port}")
    with AgentRuntime(config) as runtime:
        reports = []
        runtime.agent.run(runtime.stop_event, 40, on_episode=reports.append)  # the uploader is busy with these
        store.restart(grace_s=0.2)
        runtime.agent.run(runtime.stop_event, 10, on_episode=reports.append)
        assert runtime.spool.wait_until_empty(30)
        assert runtime.metrics.value("mtopt_robot_agent_uploaded_episodes_total") == 50
    ids = _stored_ids(store)
    assert len(ids) == len(set(ids)) == 50
    assert set(ids) == {r.episode_id for r in reports}


def test_pending_episodes_from_before_a_restart_are_uploaded(store, tmp_path):
    spool = EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20, fsync=False)
    episodes = [make_episode(robot_id="sim-0", seed=i) for i in range(3)]
    for e in episodes:
        spool.put(e.episode_id, encode(e))
    spool.close()  # the agent process died with three episodes pending
    config = agent_config(tmp_path, store_address=f"127.0.0.1:{store.store.port}")
    with AgentRuntime(config) as runtime:
        assert runtime.spool.depth == 3
        assert runtime.spool.wait_until_empty(30)
    assert sorted(_stored_ids(store)) == sorted(e.episode_id for e in episodes)


def test_a_lost_acknowledgement_is_answered_by_an_idempotent_reupload(store, tmp_path):
    episode = make_episode(robot_id="sim-0")
    data = encode(episode)
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20, fsync=False) as spool:
        entry = spool.put(episode.episode_id, data)
        store.upload(data)  # the store stored it, but the robot never saw the ack
        metrics = AgentMetrics()
        uploader = Uploader(spool, store.stub, metrics, backoff=FAST)
        assert uploader.upload_once(entry).result is Result.DUPLICATE
        assert spool.depth == 0
        assert metrics.value("mtopt_robot_agent_duplicate_uploads_total") == 1
    assert _stored_ids(store) == [episode.episode_id]


def test_refused_episodes_go_to_rejected_with_the_message_and_the_rest_is_uploaded(make_store, tmp_path):
    store = make_store(max_episode_bytes=200_000)
    good = [make_episode(robot_id="sim-0", seed=i) for i in range(2)]
    unknown_task = make_episode(robot_id="sim-0", task="juggle", seed=5)
    too_big = make_episode(robot_id="sim-0", size=(200, 200), seed=6)  # random pixels: PNG barely compresses
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 30, fsync=False) as spool:
        for e in (good[0], unknown_task, too_big, good[1]):
            spool.put(e.episode_id, encode(e))
        metrics = AgentMetrics()
        uploader = Uploader(spool, store.stub, metrics, backoff=FAST)
        uploader.start()
        assert spool.wait_until_empty(30)
        uploader.stop()
        rejected = {err["episode_id"]: err for _, err in spool.rejected()}
    assert sorted(_stored_ids(store)) == sorted(e.episode_id for e in good)
    assert rejected[unknown_task.episode_id]["code"] == "INVALID_ARGUMENT"
    assert "unknown task 'juggle'" in rejected[unknown_task.episode_id]["message"]
    assert rejected[too_big.episode_id]["code"] == "RESOURCE_EXHAUSTED"
    assert metrics.value("mtopt_robot_agent_rejected_episodes_total", {"code": "INVALID_ARGUMENT"}) == 1
    assert metrics.value("mtopt_robot_agent_upload_errors_total", {"code": "RESOURCE_EXHAUSTED"}) == 1
    assert metrics.value("mtopt_robot_agent_uploaded_episodes_total") == 2


class _Failing(grpc.RpcError):
    def __init__(self, code):
        self._code = code

    def code(self):
        return self._code

    def details(self):
        return f"test says {self._code.name}"


class _FailingStub:
    """An EpisodeStore stub whose uploads always fail with one status code."""

    def __init__(self, code):
        self.calls = 0
        outer = self

        class _Call:
            def result(self):
                raise _Failing(code)

        class _Method:
            def future(self, request, timeout=None):
                outer.calls += 1
                return _Call()

        self.UploadEpisode = self.PutEpisode = _Method()


class _OlderStore:
    """The real store's stub, counting calls per method; ``put_unimplemented``: PutEpisode
    answers UNIMPLEMENTED, as a store from before PutEpisode does."""

    def __init__(self, stub, put_unimplemented: bool):
        self.calls: dict[str, int] = {"PutEpisode": 0, "UploadEpisode": 0}
        outer = self

        class _Method:
            def __init__(self, name):
                self.name = name

            def future(self, request, timeout=None):
                outer.calls[self.name] += 1
                if self.name == "PutEpisode" and put_unimplemented:
                    return _FailingStub(grpc.StatusCode.UNIMPLEMENTED).PutEpisode.future(request)
                return getattr(stub, self.name).future(request, timeout=timeout)

        self.PutEpisode, self.UploadEpisode = _Method("PutEpisode"), _Method("UploadEpisode")


@pytest.mark.parametrize("older_store", [False, True])
def test_small_episodes_go_in_one_message_large_ones_and_older_stores_in_streams(store, tmp_path, older_store):
    episodes = [make_episode(robot_id="sim-0", seed=i) for i in range(3)] + [make_episode(robot_id="sim-0", seed=3, size=(96, 96))]
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 22, fsync=False) as spool:
        entries = [spool.put(e.episode_id, encode(e)) for e in episodes]
        stub = _OlderStore(store.stub, put_unimplemented=older_store)
        uploader = Uploader(spool, stub, backoff=FAST)
        uploader.single_message_max_bytes = max(e.size_bytes for e in entries[:3])  # the last one streams
        large = sum(e.size_bytes > uploader.single_message_max_bytes for e in entries)
        assert [uploader.upload_once(entry).result for entry in entries] == [Result.UPLOADED] * 4
        assert spool.depth == 0
    assert sorted(_stored_ids(store)) == sorted(e.episode_id for e in episodes)
    if older_store:  # one UNIMPLEMENTED, then streams only
        assert stub.calls == {"PutEpisode": 1, "UploadEpisode": 4} and not uploader.single_message
    else:
        assert large == 1 and stub.calls == {"PutEpisode": 3, "UploadEpisode": 1} and uploader.single_message


def test_unexpected_errors_are_retried_a_bounded_number_of_times(tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20, fsync=False) as spool:
        e = make_episode(robot_id="sim-0")
        entry = spool.put(e.episode_id, encode(e))
        stub = _FailingStub(grpc.StatusCode.INTERNAL)
        uploader = Uploader(spool, stub, backoff=FAST, max_attempts=3)
        assert [uploader.upload_once(entry).result for _ in range(3)] == [Result.RETRY, Result.RETRY, Result.REJECTED]
        [(_, err)] = spool.rejected()
        assert err["code"] == "INTERNAL" and "gave up after 3 attempts" in err["message"]


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED])
def test_transient_errors_never_reject(tmp_path, code):
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20, fsync=False) as spool:
        e = make_episode(robot_id="sim-0")
        entry = spool.put(e.episode_id, encode(e))
        uploader = Uploader(spool, _FailingStub(code), backoff=FAST, max_attempts=2)
        assert all(uploader.upload_once(entry).result is Result.RETRY for _ in range(5))
        assert spool.depth == 1 and spool.rejected_count == 0


def test_a_corrupt_spool_file_is_rejected_not_uploaded(store, tmp_path):
    with EpisodeSpool(tmp_path / "spool", max_bytes=1 << 20, fsync=False) as spool:
        entry = spool.put("abc123", b"\xff\xff not a protobuf")
        uploader = Uploader(spool, es_grpc.EpisodeStoreStub(store.channel), backoff=FAST)
        outcome = uploader.upload_once(entry)
        assert outcome.result is Result.REJECTED and outcome.code == "CORRUPT_SPOOL_FILE"
    assert _stored_ids(store) == []
