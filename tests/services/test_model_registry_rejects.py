"""Every kind of bad input to model_registry gets the right status and a clear message, stores
nothing and is counted in mtopt_model_registry_rejected_total{reason} (local directory and MinIO)."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from registry_harness import MODEL, weights
from mtopt.model_registry.client import publish_chunks
from mtopt.v1 import common_pb2, model_registry_pb2 as pb

INVALID, EXHAUSTED, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND
MAX_ARTIFACT = 1 << 20  # the harness's max_artifact_bytes (max_version_bytes is twice that)


def chunks(**header_overrides):
    """A valid publish of two artifacts (3000 and 1000 bytes, in 1000-byte chunks), header overridable."""
    msgs = publish_chunks(MODEL, 2, weights(2), publish_id="bad/2", chunk_bytes=1000)
    for field, value in header_overrides.items():
        h = msgs[0].header
        h.ClearField(field)
        if isinstance(value, list):
            getattr(h, field).extend(value)
        else:
            setattr(h, field, value)
    return msgs


def artifact(name="q_tower.onnx", kind=common_pb2.ARTIFACT_KIND_ONNX, size=10, sha256="0" * 64):
    return common_pb2.Artifact(name=name, kind=kind, size_bytes=size, sha256=sha256)


def data(name: str, payload: bytes) -> pb.PublishChunk:
    return pb.PublishChunk(data=pb.ArtifactData(artifact_name=name, data=payload))


def sha_mismatch():
    msgs = chunks()
    msgs[2] = data("q_tower.onnx", b"x" * len(msgs[2].data.data))
    return msgs


def more_than_announced():
    msgs = chunks()
    return msgs[:4] + [data("q_tower.onnx", b"!")] + msgs[4:]


def out_of_order():
    msgs = chunks()
    return msgs[:2] + [msgs[4]] + msgs[2:4] + msgs[5:]


def second_header():
    msgs = chunks()
    return msgs[:3] + [msgs[0]] + msgs[3:]


PUBLISH_CASES = {
    "empty stream": (lambda: [], INVALID, "no_header", "empty publish stream"),
    "data before the header": (lambda: chunks()[1:], INVALID, "no_header", "must carry a PublishHeader"),
    "empty model name": (lambda: chunks(model=""), INVALID, "invalid_model", "model '' is invalid"),
    "model name with a space": (lambda: chunks(model="Q function"), INVALID, "invalid_model", "e.g. q_function"),
    "no artifacts": (lambda: chunks(artifacts=[])[:1], INVALID, "invalid_header", "header.artifacts is empty"),
    "artifact name with a slash": (lambda: chunks(artifacts=[artifact(name="../q.onnx")]), INVALID, "invalid_name", "'../q.onnx' is invalid"),
    "duplicate artifact": (lambda: chunks(artifacts=[artifact(), artifact()]), INVALID, "invalid_header", "listed twice"),
    "no artifact kind": (lambda: chunks(artifacts=[artifact(kind=0)]), INVALID, "invalid_header", "set kind"),
    "no size": (lambda: chunks(artifacts=[artifact(size=0)]), INVALID, "invalid_header", "size_bytes must be"),
    "malformed sha256": (lambda: chunks(artifacts=[artifact(sha256="ABC")]), INVALID, "invalid_header", "lower-case hex SHA-256"),
    "negative step": (lambda: chunks(step=-1), INVALID, "invalid_header", "must be >= 0"),
    "bad alias": (lambda: chunks(aliases=["Stable!"]), INVALID, "invalid_name", "'Stable!' is invalid"),
    "artifact over the limit": (lambda: chunks(artifacts=[artifact(size=MAX_ARTIFACT + 1)]), EXHAUSTED, "too_large",
                                "MTOPT_MODEL_REGISTRY_MAX_ARTIFACT_BYTES"),
    "version over the limit": (lambda: chunks(artifacts=[artifact(name=f"a{i}", size=MAX_ARTIFACT) for i in range(3)]), EXHAUSTED,
                               "too_large", "MTOPT_MODEL_REGISTRY_MAX_VERSION_BYTES"),
    "sha256 mismatch": (sha_mismatch, INVALID, "sha256_mismatch", "sha256 of artifact 'q_tower.onnx' is"),
    "truncated stream": (lambda: chunks()[:-1], INVALID, "truncated", "publish stream ended after"),
    "more bytes than announced": (more_than_announced, INVALID, "size_mismatch", "more than its announced size_bytes"),
    "data for an unlisted artifact": (lambda: chunks()[:2] + [data("other.onnx", b"x")], INVALID, "unknown_artifact",
                                      "which the header does not list"),
    "artifacts interleaved": (out_of_order, INVALID, "out_of_order", "in header order"),
    "a second header": (second_header, INVALID, "invalid_header", "only the first PublishChunk"),
}


@pytest.mark.parametrize("case", list(PUBLISH_CASES))
def test_bad_publish_is_rejected_and_stores_nothing(registry, case):
    make, code, reason, message = PUBLISH_CASES[case]
    registry.publish(1)
    keys = registry.stored_keys()
    with pytest.raises(grpc.RpcError) as err:
        registry.stub.Publish(iter(make()), timeout=10)
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details()
    assert registry.metric("mtopt_model_registry_rejected_total", reason=reason) == 1
    assert registry.stored_keys() == keys  # not a byte written: no claim, no artifact, no log entry
    assert [v.version for v in registry.client.list_versions(MODEL)] == [1]
    assert registry.publish(2).version == 2  # and the next good publish takes the next number


def test_the_valid_publish_of_these_cases_is_accepted(registry):
    reply = registry.stub.Publish(iter(chunks()), timeout=10)
    assert reply.version.version == 1 and not reply.already_existed


def _abort(call):
    with pytest.raises(grpc.RpcError) as err:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    return err.value.code(), err.value.details()


def test_bad_lookups_and_changes_are_rejected(registry):
    registry.publish(1)
    registry.publish(2)
    registry.client.set_alias(MODEL, "canary", 2)
    stub = registry.stub
    keys = registry.stored_keys()
    cases = [
        # (call, code, reason, message)
        (lambda: stub.GetVersion(pb.GetModelVersionRequest(model="nope", version=1), timeout=5), NOT_FOUND, "not_found", "unknown model 'nope'"),
        (lambda: stub.GetVersion(pb.GetModelVersionRequest(model=MODEL, version=9), timeout=5), NOT_FOUND, "not_found", "has no version 9"),
        (lambda: stub.GetVersion(pb.GetModelVersionRequest(model=MODEL, alias="stable"), timeout=5), NOT_FOUND, "not_found", "no alias 'stable'"),
        (lambda: stub.GetVersion(pb.GetModelVersionRequest(model=MODEL), timeout=5), INVALID, "invalid_request", "set version"),
        (lambda: stub.GetVersion(pb.GetModelVersionRequest(model="", version=1), timeout=5), INVALID, "invalid_model", "is invalid"),
        (lambda: stub.ListVersions(pb.ListVersionsRequest(model="nope"), timeout=5), NOT_FOUND, "not_found", "unknown model"),
        (lambda: stub.ListVersions(pb.ListVersionsRequest(model=MODEL, page_token="garbage"), timeout=5), INVALID, "invalid_request", "page_token"),
        (lambda: stub.ListVersions(pb.ListVersionsRequest(model=MODEL, page_size=-1), timeout=5), INVALID, "invalid_request", "page_size"),
        (lambda: stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1, name="nope.onnx"), timeout=5), NOT_FOUND, "not_found",
         "has no artifact named 'nope.onnx'"),
        (lambda: stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=3, name="model.pt"), timeout=5), NOT_FOUND, "not_found", "no version 3"),
        (lambda: stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1, name="model.pt", offset=10**6), timeout=5), INVALID,
         "out_of_range", "lies outside"),
        (lambda: stub.GetArtifact(pb.GetArtifactRequest(model=MODEL, version=1), timeout=5), INVALID, "invalid_request", "set name"),
        (lambda: stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="Stable", version=1), timeout=5), INVALID, "invalid_name", "[a-z0-9_-]"),
        (lambda: stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="stable", version=5), timeout=5), NOT_FOUND, "not_found", "no version 5"),
        (lambda: stub.SetAlias(pb.SetAliasRequest(model="nope", alias="stable", version=1), timeout=5), NOT_FOUND, "not_found", "unknown model"),
        (lambda: stub.Pin(pb.PinRequest(model=MODEL, robot_id="robot 1", version=1), timeout=5), INVALID, "invalid_name", "robot_id"),
        (lambda: stub.Pin(pb.PinRequest(model=MODEL, robot_id="robot-1", version=0), timeout=5), INVALID, "invalid_request", "version must be >= 1"),
        (lambda: stub.Unpin(pb.UnpinRequest(model=MODEL, robot_id=""), timeout=5), INVALID, "invalid_name", "robot_id"),
        (lambda: stub.Rollback(pb.RollbackRequest(model=MODEL, alias="canary"), timeout=5), grpc.StatusCode.FAILED_PRECONDITION,
         "failed_precondition", "no earlier version"),
        (lambda: stub.Rollback(pb.RollbackRequest(model=MODEL, alias="stable"), timeout=5), NOT_FOUND, "not_found", "no alias 'stable'"),
        (lambda: stub.Rollback(pb.RollbackRequest(model=MODEL, alias="latest", to_version=7), timeout=5), NOT_FOUND, "not_found", "no version 7"),
        (lambda: stub.Resolve(pb.ResolveRequest(model=MODEL, robot_id="robot-1"), timeout=5), NOT_FOUND, "not_found",
         "robot 'robot-1' is not pinned"),
        (lambda: stub.WatchVersions(pb.WatchVersionsRequest(model=MODEL, after_sequence=99), timeout=5), grpc.StatusCode.OUT_OF_RANGE,
         "out_of_range", "beyond the last event"),
        (lambda: stub.WatchVersions(pb.WatchVersionsRequest(model="Bad Model"), timeout=5), INVALID, "invalid_model", "is invalid"),
    ]
    counts: dict[str, int] = {}
    for call, code, reason, message in cases:
        got_code, details = _abort(call)
        assert (got_code, message in details) == (code, True), (details, message)
        counts[reason] = counts.get(reason, 0) + 1
        assert registry.metric("mtopt_model_registry_rejected_total", reason=reason) == counts[reason], reason
    assert registry.stored_keys() == keys
    assert registry.client.resolve("robot-1", alias="latest").version.version == 2  # nothing changed


def test_an_oversized_artifact_is_refused_before_its_bytes_are_read(registry):
    sent = []

    def requests():
        msgs = chunks(artifacts=[artifact(size=MAX_ARTIFACT + 1, sha256=hashlib.sha256(b"").hexdigest())])
        yield msgs[0]
        for _ in range(1000):  # the server answers after the header; the stream stops here
            sent.append(1)
            yield data("q_tower.onnx", b"x" * 1024)

    with pytest.raises(grpc.RpcError) as err:
        registry.stub.Publish(requests(), timeout=10)
    assert err.value.code() == EXHAUSTED
    assert len(sent) < 1000
    assert registry.stored_keys() == []
