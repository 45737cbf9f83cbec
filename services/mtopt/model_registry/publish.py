"""The Publish stream, checked: the header against the registry's rules and limits, then every
artifact's bytes (in header order) against the announced sizes and SHA-256 hashes.

Everything is verified in memory before anything is written, so a rejected publish stores
nothing. Each error is a `RegistryError` whose reason labels ``mtopt_model_registry_rejected_total``.
"""

from __future__ import annotations

import hashlib
import re
import uuid

from mtopt.model_registry.errors import InvalidRequestError, TooLargeError
from mtopt.model_registry.layout import (
    ALIAS_PATTERN, ARTIFACT_NAME_PATTERN, MAX_PUBLISH_ALIASES, MODEL_PATTERN, ArtifactRecord, NewVersion, TaskRecord,
)
from mtopt.v1 import common_pb2, model_registry_pb2 as pb

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MAX_PUBLISH_ID = 256


def check_model(model: str) -> None:
    if not MODEL_PATTERN.match(model):
        raise InvalidRequestError(f"model {model!r} is invalid: name a model with 1-64 characters of [a-z0-9_.-] starting "
                                  "with a letter or digit, e.g. q_function or success_detector", "invalid_model")


def check_alias(alias: str, field: str = "alias") -> None:
    if not ALIAS_PATTERN.match(alias):
        raise InvalidRequestError(f"{field} {alias!r} is invalid: use 1-64 characters of [a-z0-9_-], e.g. stable", "invalid_name")


def check_header(h: pb.PublishHeader, max_artifact_bytes: int, max_version_bytes: int) -> NewVersion:
    """The verified NewVersion a PublishHeader asks for (RegistryError says what is wrong)."""
    check_model(h.model)
    bad = lambda message, reason="invalid_header": InvalidRequestError(message, reason)  # noqa: E731
    if len(h.publish_id) > MAX_PUBLISH_ID:
        raise bad(f"header.publish_id is {len(h.publish_id)} characters long; keep it under {MAX_PUBLISH_ID} (e.g. <run_id>/<step>)")
    if h.step < 0 or h.parent_version < 0:
        raise bad(f"header.step and header.parent_version must be >= 0, got {h.step} and {h.parent_version}")
    if not h.artifacts:
        raise bad("header.artifacts is empty: list every artifact (name, kind, size_bytes, sha256) that follows")
    names, total = set(), 0
    for a in h.artifacts:
        if not ARTIFACT_NAME_PATTERN.match(a.name):
            raise bad(f"artifact name {a.name!r} is invalid: use 1-128 characters of [A-Za-z0-9._-] starting with a "
                      "letter or digit, e.g. q_tower.onnx", "invalid_name")
        if a.name in names:
            raise bad(f"artifact {a.name!r} is listed twice in the header")
        names.add(a.name)
        if a.kind == common_pb2.ARTIFACT_KIND_UNSPECIFIED or a.kind not in common_pb2.ArtifactKind.values():
            raise bad(f"artifact {a.name!r}: set kind (TORCH_STATE_DICT, ONNX, TORCH_CHECKPOINT or OTHER)")
        if a.size_bytes <= 0:
            raise bad(f"artifact {a.name!r}: size_bytes must be the (positive) length of its bytes, got {a.size_bytes}")
        if a.size_bytes > max_artifact_bytes:
            raise TooLargeError(f"artifact {a.name!r} of {a.size_bytes} bytes exceeds the registry's limit of "
                                f"{max_artifact_bytes} bytes per artifact (MTOPT_MODEL_REGISTRY_MAX_ARTIFACT_BYTES)")
        if not SHA256_HEX.match(a.sha256):
            raise bad(f"artifact {a.name!r}: sha256 must be the lower-case hex SHA-256 of its bytes (64 characters)")
        total += a.size_bytes
    if total > max_version_bytes:
        raise TooLargeError(f"the artifacts total {total} bytes, over the registry's limit of {max_version_bytes} "
                            "bytes per version (MTOPT_MODEL_REGISTRY_MAX_VERSION_BYTES)")
    if len(h.aliases) > MAX_PUBLISH_ALIASES:
        raise bad(f"header.aliases lists {len(h.aliases)} aliases; at most {MAX_PUBLISH_ALIASES}")
    for alias in h.aliases:
        check_alias(alias, "header.aliases entry")
    task_names = [t.name for t in h.tasks]
    if len(set(task_names)) != len(task_names) or not all(task_names):
        raise bad("header.tasks must have unique, non-empty names")
    return NewVersion(
        model=h.model, publish_id=h.publish_id or f"anonymous/{uuid.uuid4().hex}", step=h.step,
        parent_version=h.parent_version, metrics=dict(h.metrics),
        artifacts=tuple(ArtifactRecord(a.name, a.kind, a.size_bytes, a.sha256) for a in h.artifacts),
        aliases=tuple(h.aliases), tasks=tuple(TaskRecord(t.name, t.skill, t.description, t.index) for t in h.tasks),
        labels=dict(h.labels),
    )


async def receive_artifacts(it, new: NewVersion) -> dict[str, bytearray]:
    """Reads every artifact's bytes in header order and checks sizes and hashes."""
    arts = new.artifacts
    index = {a.name: i for i, a in enumerate(arts)}
    blobs: dict[str, bytearray] = {}
    current, buf, digest = 0, bytearray(), hashlib.sha256()
    async for chunk in it:
        if chunk.WhichOneof("payload") != "data":
            raise InvalidRequestError("only the first PublishChunk may carry a header; the others carry ArtifactData", "invalid_header")
        name, data = chunk.data.artifact_name, chunk.data.data
        i = index.get(name)
        if i is None:
            raise InvalidRequestError(f"data for artifact {name!r}, which the header does not list (it lists "
                                      f"{', '.join(index)})", "unknown_artifact")
        if i < current:
            raise InvalidRequestError(f"artifact {name!r} received more than its announced size_bytes="
                                      f"{arts[i].size_bytes}", "size_mismatch")
        a = arts[current]
        if i > current:
            raise InvalidRequestError(f"data for artifact {name!r} arrived before artifact {a.name!r} was complete "
                                      f"({len(buf)} of {a.size_bytes} bytes); send the artifacts one after the other "
                                      "in header order", "out_of_order")
        if len(buf) + len(data) > a.size_bytes:
            raise InvalidRequestError(f"artifact {name!r} received more than its announced size_bytes={a.size_bytes}",
                                      "size_mismatch")
        buf += data
        digest.update(data)
        if len(buf) == a.size_bytes:
            if digest.hexdigest() != a.sha256:
                raise InvalidRequestError(f"sha256 of artifact {name!r} is {digest.hexdigest()}, the header announced "
                                          f"{a.sha256}; nothing was stored", "sha256_mismatch")
            blobs[a.name] = buf
            current, buf, digest = current + 1, bytearray(), hashlib.sha256()
    if current < len(arts):
        a = arts[current]
        raise InvalidRequestError(f"publish stream ended after {len(buf)} of {a.size_bytes} bytes of artifact {a.name!r} "
                                  f"({current} of {len(arts)} artifacts complete); nothing was stored, publish again", "truncated")
    return blobs

