"""Every kind of bad input gets the right status and a clear message, stores nothing and is
counted in mtopt_episode_store_rejected_total{reason} (local directory and MinIO)."""

from __future__ import annotations

import hashlib
import uuid

import cv2
import grpc
import numpy as np
import pytest

from store_harness import chunks, encode, make_episode
from mtopt.episode_codec import episode_to_proto, tensor_to_proto
from mtopt.v1 import common_pb2
from mtopt.v1 import episode_store_pb2 as es_pb

INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
MAX_BYTES = 1 << 20  # the harness's max_episode_bytes


def _proto(**kwargs):
    ep = make_episode(**kwargs)
    return ep, episode_to_proto(ep)


def malformed():
    data = b"\xff" * 200
    return chunks(data, header=dict(episode_id="bad-bytes", robot_id="robot-0", task="lift-red")), "bad-bytes"


def too_large():
    ep = make_episode()
    return chunks(encode(ep), total=MAX_BYTES + 1), ep.episode_id


def more_bytes_than_announced():
    ep = make_episode()
    data = encode(ep)
    return chunks(data, total=len(data) - 10, sha256=hashlib.sha256(data[:-10]).hexdigest()), ep.episode_id


def truncated_stream():
    ep = make_episode()
    data = encode(ep)
    return chunks(data, chunk_size=512)[: 1 + len(data) // 1024], ep.episode_id


def sha_mismatch():
    ep = make_episode()
    return chunks(encode(ep), sha256="0" * 64), ep.episode_id


def no_header_first():
    ep = make_episode()
    return chunks(encode(ep))[1:], ep.episode_id


def empty_stream():
    return [], None


def header_disagrees():
    ep = make_episode(robot_id="robot-0")
    return chunks(encode(ep), header=dict(episode_id=ep.episode_id, robot_id="robot-9", task=ep.task)), ep.episode_id


def path_traversal_id():
    ep = make_episode(episode_id="x")
    msg = episode_to_proto(ep)
    msg.episode_id = "../../etc/passwd"
    return chunks(msg.SerializeToString()), None


def unknown_task():
    ep = make_episode()
    msg = episode_to_proto(ep)
    msg.task = "juggle-knives"
    return chunks(msg.SerializeToString()), ep.episode_id


def wrong_image_shape():
    ep = make_episode(size=(17, 16))
    return chunks(encode(ep)), ep.episode_id


def inconsistent_image_shapes():
    ep, msg = _proto()
    msg.steps[1].image.CopyFrom(episode_to_proto(make_episode(size=(16, 12))).steps[0].image)
    return chunks(msg.SerializeToString()), ep.episode_id


def wrong_image_dtype():
    ep, msg = _proto()
    ok, png16 = cv2.imencode(".png", np.full((16, 16, 3), 40000, np.uint16))
    msg.steps[0].image.data = png16.tobytes()
    return chunks(msg.SerializeToString()), ep.episode_id


def grey_image():
    ep, msg = _proto()
    ok, png = cv2.imencode(".png", np.zeros((16, 16), np.uint8))
    msg.final_image.CopyFrom(common_pb2.Image(data=png.tobytes(), encoding=common_pb2.IMAGE_ENCODING_PNG, height=16, width=16, channels=1))
    return chunks(msg.SerializeToString()), ep.episode_id


def corrupt_image():
    ep, msg = _proto()
    msg.steps[2].image.data = msg.steps[2].image.data[:40]
    return chunks(msg.SerializeToString()), ep.episode_id


def nan_action():
    ep, msg = _proto()
    msg.steps[1].action.CopyFrom(tensor_to_proto(np.array([0.1, np.nan, 0.0, -1.0], np.float32)))
    return chunks(msg.SerializeToString()), ep.episode_id


def out_of_range_action():
    ep, msg = _proto()
    msg.steps[0].action.CopyFrom(tensor_to_proto(np.array([0.1, 1.5, 0.0, -1.0], np.float32)))
    return chunks(msg.SerializeToString()), ep.episode_id


def float64_action():
    ep, msg = _proto()
    msg.steps[0].action.CopyFrom(tensor_to_proto(np.array([0.1, 0.5, 0.0, -1.0], np.float64)))
    return chunks(msg.SerializeToString()), ep.episode_id


def wrong_action_length():
    ep, msg = _proto()
    msg.steps[0].action.data = msg.steps[0].action.data[:-4]
    return chunks(msg.SerializeToString()), ep.episode_id


def infinite_state():
    ep, msg = _proto()
    msg.final_state_features.CopyFrom(tensor_to_proto(np.array([np.inf, 0.0], np.float32)))
    return chunks(msg.SerializeToString()), ep.episode_id


CASES = {
    "malformed bytes": (malformed, INVALID, "malformed", "do not parse"),
    "oversized episode": (too_large, EXHAUSTED, "too_large", "exceeds the store's limit"),
    "more bytes than announced": (more_bytes_than_announced, INVALID, "size_mismatch", "more than the announced"),
    "truncated stream": (truncated_stream, INVALID, "truncated", "stream ended after"),
    "sha256 mismatch": (sha_mismatch, INVALID, "sha256_mismatch", "sha256"),
    "data before header": (no_header_first, INVALID, "no_header", "first UploadEpisodeChunk"),
    "empty stream": (empty_stream, INVALID, "no_header", "empty upload stream"),
    "header disagrees with episode": (header_disagrees, INVALID, "header_mismatch", "header.robot_id"),
    "path traversal id": (path_traversal_id, INVALID, "invalid_id", "episode_id"),
    "unknown task": (unknown_task, INVALID, "unknown_task", "unknown task 'juggle-knives'"),
    "wrong image shape": (wrong_image_shape, INVALID, "image", "shape must be (16, 16, 3)"),
    "inconsistent image shapes": (inconsistent_image_shapes, INVALID, "image", "shape must be"),
    "16-bit image": (wrong_image_dtype, INVALID, "image", "8-bit"),
    "grey image": (grey_image, INVALID, "image", "got (16, 16, 1)"),
    "corrupt image": (corrupt_image, INVALID, "image", "steps[2].image"),
    "NaN action": (nan_action, INVALID, "action", "NaN"),
    "out-of-range action": (out_of_range_action, INVALID, "action", "[-1, 1]"),
    "float64 action": (float64_action, INVALID, "action", "must be float32"),
    "short action tensor": (wrong_action_length, INVALID, "action", "needs 16 bytes"),
    "infinite state": (infinite_state, INVALID, "state", "final.state_features"),
}


def assert_nothing_stored(store, episode_id):
    assert store.list_all() == []
    if episode_id:
        with pytest.raises(grpc.RpcError) as err:
            store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=episode_id), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    if store.kind == "local":
        root = store.config.directory
        assert not (root / "episodes").exists() and not (root / "index").exists()
        assert list((root / "tmp").iterdir()) == []
    else:
        backend = store.store.backend
        assert list(backend.client.list_objects(backend.bucket, recursive=True)) == []


PUT_MESSAGES = {  # where PutEpisode words it differently (one message, no stream)
    "more bytes than announced": "data has", "truncated stream": "data has",
    "data before header": "header is missing", "empty stream": "header is missing",
}


def as_put_request(messages) -> es_pb.PutEpisodeRequest:
    """The same upload as one PutEpisode message: its header (if any) and all of its data."""
    request = es_pb.PutEpisodeRequest()
    for m in messages:
        if m.WhichOneof("payload") == "header":
            request.header.CopyFrom(m.header)
        else:
            request.data += m.data
    return request


@pytest.mark.parametrize("validate", ["on_loop", "in_pool"])
@pytest.mark.parametrize("rpc", ["UploadEpisode", "PutEpisode"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_upload_is_rejected_and_counted(make_store, case, rpc, validate):
    """Every case, through both RPCs, validated on the event loop (small episodes, the default)
    and in the thread pool (larger ones; here every episode, inline_validate_bytes=0)."""
    store = make_store(**({"inline_validate_bytes": 0} if validate == "in_pool" else {}))
    build, code, reason, message = CASES[case]
    messages, episode_id = build()
    send = (lambda m: store.stub.UploadEpisode(iter(m), timeout=30)) if rpc == "UploadEpisode" else \
        (lambda m: store.stub.PutEpisode(as_put_request(m), timeout=30))
    before = store.metric("mtopt_episode_store_rejected_total", reason=reason)
    with pytest.raises(grpc.RpcError) as err:
        send(messages)
    assert err.value.code() == code, err.value.details()
    assert (PUT_MESSAGES.get(case, message) if rpc == "PutEpisode" else message) in err.value.details()
    assert store.metric("mtopt_episode_store_rejected_total", reason=reason) == before + 1
    assert_nothing_stored(store, episode_id)
    # The store still works after the rejection.
    assert not send(chunks(encode(make_episode()))).already_existed


def test_unknown_and_invalid_ids_on_get(store):
    with pytest.raises(grpc.RpcError) as err:
        store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id=uuid.uuid4().hex), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "not stored" in err.value.details()
    assert store.metric("mtopt_episode_store_rejected_total", reason="not_found") == 1
    with pytest.raises(grpc.RpcError) as err:
        store.stub.GetEpisode(es_pb.GetEpisodeRequest(episode_id="../secret"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert store.metric("mtopt_episode_store_rejected_total", reason="invalid_id") == 1


def test_invalid_list_and_watch_requests(store):
    for request in (es_pb.ListEpisodesRequest(page_size=-1), es_pb.ListEpisodesRequest(page_token="not-a-token")):
        with pytest.raises(grpc.RpcError) as err:
            store.stub.ListEpisodes(request, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        list(store.stub.WatchEpisodes(es_pb.WatchEpisodesRequest(cursor="bogus"), timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in err.value.details()
    assert store.metric("mtopt_episode_store_rejected_total", reason="invalid_request") == 3
