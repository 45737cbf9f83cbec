"""episode_store over real grpc.aio servers, against the local-directory backend and MinIO."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from store_harness import encode, make_episode
from mtopt.episode_codec import episode_from_proto
from mtopt.v1 import episode_store_pb2 as es_pb

STORED, CAUGHT_UP = es_pb.EPISODE_EVENT_TYPE_STORED, es_pb.EPISODE_EVENT_TYPE_CAUGHT_UP


def ts(seconds: float) -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


class Watcher:
    """Collects WatchEpisodes events in a background thread."""

    def __init__(self, stub, **request):
        self.events: list[es_pb.EpisodeEvent] = []
        self._cond = threading.Condition()
        self.call = stub.WatchEpisodes(es_pb.WatchEpisodesRequest(**request), timeout=60)
        self.error = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for ev in self.call:
                with self._cond:
                    self.events.append(ev)
                    self._cond.notify_all()
        except grpc.RpcError as e:
            self.error = e
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0):
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.events) or self.error is not None and self.error.code() != grpc.StatusCode.CANCELLED, timeout)
        assert ok and predicate(self.events), f"watch events so far: {[(e.type, e.episode.episode_id) for e in self.events]}, error {self.error}"
        return self.events

    def stored_ids(self) -> list[str]:
        return [e.episode.episode_id for e in self.events if e.type == STORED]

    def cancel(self):
        self.call.cancel()
        self._thread.join(timeout=10)


def test_upload_get_list_watch_round_trip(store):
    t0 = time.time()
    episodes = [
        make_episode(robot_id="robot-a", task="lift-red", seed=1, end_time=t0 - 30),
        make_episode(robot_id="robot-b", task="lift-red", seed=2, end_time=t0 - 20),
        make_episode(robot_id="robot-a", task="place-any", seed=3, end_time=t0 - 10),
    ]
    blobs = [encode(e, policy_name="scripted_pick", ground_truth_success={"lift-red": True}) for e in episodes]
    for ep, data in zip(episodes, blobs):
        reply = store.upload(data, chunk_size=1000)
        assert not reply.already_existed
        assert reply.episode.episode_id == ep.episode_id and reply.episode.size_bytes == len(data)
        # layout v3: the bytes sit in the commit-log segment, after its header
        assert reply.episode.storage_key.startswith("index/log/date=") and reply.episode.storage_offset > 0

    got = store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=episodes[0].episode_id), timeout=10)
    assert got.episode.SerializeToString() == blobs[0]
    decoded = episode_from_proto(got.episode)
    np.testing.assert_array_equal(decoded.images, episodes[0].images)
    np.testing.assert_array_equal(decoded.actions, episodes[0].actions)
    assert got.summary.policy_name == "scripted_pick" and got.summary.num_steps == 3 and got.summary.policy_version == 3

    listed = store.list_all()
    assert [s.episode_id for s in listed] == [e.episode_id for e in episodes]  # oldest stored first
    assert [s.episode_id for s in store.list_all(robot_id="robot-a")] == [episodes[0].episode_id, episodes[2].episode_id]
    assert [s.episode_id for s in store.list_all(task="lift-red")] == [episodes[0].episode_id, episodes[1].episode_id]
    window = store.list_all(start_time=ts(t0 - 25), end_time=ts(t0 - 15))
    assert [s.episode_id for s in window] == [episodes[1].episode_id]
    page = store.stub.ListEpisodes(es_pb.ListEpisodesRequest(page_size=2), timeout=10)
    assert len(page.episodes) == 2 and page.next_page_token
    rest = store.stub.ListEpisodes(es_pb.ListEpisodesRequest(page_size=2, page_token=page.next_page_token), timeout=10)
    assert [s.episode_id for s in rest.episodes] == [episodes[2].episode_id] and not rest.next_page_token
    with pytest.raises(grpc.RpcError) as err:
        store.stub.ListEpisodes(es_pb.ListEpisodesRequest(page_size=2, task="lift-red", page_token=page.next_page_token), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Watch: backlog, CAUGHT_UP, then live events.
    # (With several replicas on S3, commits younger than the settle window arrive as live events.)
    watcher = Watcher(store.stub, backfill=True)
    events = watcher.wait_for(lambda evs: any(e.type == CAUGHT_UP for e in evs) and len(evs) == 4)
    assert [e.episode.episode_id for e in events if e.type == STORED] == [e.episode_id for e in episodes]
    i = next(i for i, e in enumerate(events) if e.type == CAUGHT_UP)
    assert all(e.backfill for e in events[:i]) and not any(e.backfill for e in events[i + 1 :])
    if store.kind == "local":
        assert i == 3
    live_only = Watcher(store.stub)  # no cursor, no backfill: only what comes from now on
    live_only.wait_for(lambda evs: any(e.type == CAUGHT_UP for e in evs))
    filtered = Watcher(store.stub, backfill=True, task="place-any")
    filtered.wait_for(lambda evs: any(e.type == CAUGHT_UP for e in evs))

    late = make_episode(robot_id="robot-c", task="place-any", seed=4)
    store.upload(encode(late))
    events = watcher.wait_for(lambda evs: late.episode_id in [e.episode.episode_id for e in evs])
    assert events[-1].type == STORED and not events[-1].backfill
    assert live_only.wait_for(lambda evs: late.episode_id in [e.episode.episode_id for e in evs])
    assert live_only.stored_ids() == [late.episode_id]
    filtered.wait_for(lambda evs: late.episode_id in [e.episode.episode_id for e in evs])
    assert filtered.stored_ids() == [episodes[2].episode_id, late.episode_id]

    # Resume from a cursor: exactly the events after it, without gaps or duplicates.
    cursor = next(e.cursor for e in watcher.events if e.type == STORED and e.episode.episode_id == episodes[1].episode_id)
    resumed = Watcher(store.stub, cursor=cursor)
    resumed.wait_for(lambda evs: any(e.type == CAUGHT_UP for e in evs))
    assert resumed.stored_ids() == [episodes[2].episode_id, late.episode_id]
    for w in (watcher, live_only, filtered, resumed):
        w.cancel()
    assert store.metric("mtopt_episode_store_episodes_stored_total", task="lift-red") == 2
    assert store.metric("mtopt_episode_store_episodes_stored_total", task="place-any") == 2


def test_reupload_is_idempotent_and_conflicts_are_refused(store):
    ep = make_episode(seed=5)
    data = encode(ep)
    first = store.upload(data)
    again = store.upload(data)
    assert not first.already_existed and again.already_existed
    assert again.episode.stored_time == first.episode.stored_time
    assert store.metric("mtopt_episode_store_episodes_stored_total", task=ep.task) == 1
    assert store.metric("mtopt_episode_store_duplicate_uploads_total") == 1

    other = make_episode(episode_id=ep.episode_id, seed=6)
    with pytest.raises(grpc.RpcError) as err:
        store.upload(encode(other))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert ep.episode_id in err.value.details()
    assert store.metric("mtopt_episode_store_rejected_total", reason="conflict") == 1
    assert [s.episode_id for s in store.list_all()] == [ep.episode_id]
    got = store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=ep.episode_id), timeout=10)
    assert got.episode.SerializeToString() == data


def test_put_episode_stores_like_an_upload_and_is_idempotent_across_both(store):
    first, second = make_episode(seed=1), make_episode(seed=2)
    data = encode(first)
    request = es_pb.PutEpisodeRequest(header=es_pb.UploadEpisodeHeader(
        episode_id=first.episode_id, robot_id=first.robot_id, task=first.task, total_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest()), data=data)
    reply = store.stub.PutEpisode(request, timeout=10)
    assert not reply.already_existed and reply.episode.sha256 == request.header.sha256
    assert store.upload(data).already_existed  # the stream finds what the single message stored
    assert store.stub.PutEpisode(request, timeout=10).already_existed
    store.upload(encode(second))
    again = es_pb.PutEpisodeRequest(header=request.header, data=data)
    again.header.episode_id = second.episode_id  # header and bytes disagree
    with pytest.raises(grpc.RpcError) as err:
        store.stub.PutEpisode(again, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    got = store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=first.episode_id), timeout=10)
    assert got.episode.SerializeToString() == data
    assert sorted(s.episode_id for s in store.list_all()) == sorted([first.episode_id, second.episode_id])


def test_concurrent_uploads_of_one_episode_store_it_once(store):
    ep = make_episode(seed=7)
    data = encode(ep)
    replies = []
    threads = [threading.Thread(target=lambda: replies.append(store.upload(data))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(replies) == 6
    assert sum(not r.already_existed for r in replies) == 1
    assert [s.episode_id for s in store.list_all()] == [ep.episode_id]
