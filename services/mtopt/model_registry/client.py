"""Client helpers for the model registry: publishing weights, fetching them, following versions.

Used by the trainer (publish), Bellman workers and the success detector (fetch / watch) and
robot agents (resolve / watch). Every call has a deadline; only idempotent calls are retried
(publish is, because it always carries a publish_id, chosen here if the caller gives none).
Downloads resume from the last byte received and are checked against the manifest's SHA-256.

Usage::

    with RegistryClient("dns:///model-registry:50055") as registry:
        v = registry.publish("q_function", step=5000, artifacts={"q_tower.onnx": a, "q_head.onnx": b,
                             "model.pt": weights}, metrics={"losses/td_loss": 0.12}, publish_id=f"{run}/5000")
        blobs = registry.fetch("q_function", v.version)          # {"q_tower.onnx": b"...", ...}
        target = registry.resolve("robot-7").version.version

    async with AsyncRegistryClient("localhost:50055") as registry:
        async for event in registry.watch("q_function", robot_id="robot-7", send_initial=True):
            if event.type == VERSION_EVENT_TYPE_RESOLVED and event.HasField("version"):
                version, blobs = await registry.fetch_version("q_function", event.version.version)
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from typing import AsyncIterator, Iterable, Iterator, Mapping, Sequence

import grpc

from mtopt.serving.client import RETRYABLE_CODES, RetryPolicy, make_aio_channel, make_channel, retry_idempotent, retry_idempotent_async
from mtopt.v1 import common_pb2, model_registry_pb2 as pb, model_registry_pb2_grpc

DEFAULT_MODEL = "q_function"
CHUNK_BYTES = 1 << 20
VERSION_EVENT_TYPE_RESOLVED = pb.VERSION_EVENT_TYPE_RESOLVED

ArtifactInput = bytes | tuple[int, bytes]
"""An artifact's bytes, or (common_pb2.ArtifactKind, bytes) to set its kind explicitly."""


class ArtifactIntegrityError(RuntimeError):
    """A downloaded artifact does not match the size or SHA-256 of its manifest."""


def artifact_kind(name: str) -> int:
    """The ArtifactKind a file name suggests: *.onnx ONNX, *checkpoint*/*.ckpt TORCH_CHECKPOINT,
    *.pt/*.pth TORCH_STATE_DICT, else OTHER."""
    lower = name.lower()
    if lower.endswith(".onnx"):
        return common_pb2.ARTIFACT_KIND_ONNX
    if "checkpoint" in lower or lower.endswith(".ckpt"):
        return common_pb2.ARTIFACT_KIND_TORCH_CHECKPOINT
    if lower.endswith((".pt", ".pth")):
        return common_pb2.ARTIFACT_KIND_TORCH_STATE_DICT
    return common_pb2.ARTIFACT_KIND_OTHER


def _task_proto(t) -> common_pb2.Task:
    if isinstance(t, common_pb2.Task):
        return t
    return common_pb2.Task(name=t.name, skill=getattr(t, "skill", ""), description=getattr(t, "description", ""),
                           index=getattr(t, "index", 0))


def publish_chunks(
    model: str, step: int, artifacts: Mapping[str, ArtifactInput], *, publish_id: str, metrics: Mapping[str, float] | None = None,
    parent_version: int = 0, aliases: Sequence[str] = (), tasks: Iterable = (), labels: Mapping[str, str] | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[pb.PublishChunk]:
    """The messages of one Publish stream: the header, then each artifact's bytes in chunks.

    ``tasks`` takes mtopt.v1.Task messages or objects with name/skill/description/index
    (e.g. mtopt.tasks.Task).
    """
    items = [(name, *(value if isinstance(value, tuple) else (artifact_kind(name), value))) for name, value in artifacts.items()]
    header = pb.PublishHeader(
        model=model, publish_id=publish_id, step=step, parent_version=parent_version, metrics=dict(metrics or {}),
        artifacts=[common_pb2.Artifact(name=n, kind=k, size_bytes=len(d), sha256=hashlib.sha256(d).hexdigest()) for n, k, d in items],
        aliases=list(aliases), tasks=[_task_proto(t) for t in tasks], labels=dict(labels or {}),
    )
    out = [pb.PublishChunk(header=header)]
    for name, _, data in items:
        view = memoryview(data)
        out += [pb.PublishChunk(data=pb.ArtifactData(artifact_name=name, data=bytes(view[i : i + chunk_bytes])))
                for i in range(0, len(data), chunk_bytes)]
    return out


def _check(artifact: common_pb2.Artifact, data: bytes | bytearray) -> bytes:
    if len(data) != artifact.size_bytes or hashlib.sha256(data).hexdigest() != artifact.sha256:
        raise ArtifactIntegrityError(f"artifact {artifact.name!r}: downloaded {len(data)} bytes with sha256 "
                                     f"{hashlib.sha256(data).hexdigest()}, the manifest says {artifact.size_bytes} bytes "
                                     f"and {artifact.sha256}")
    return bytes(data)


def _selected(version: common_pb2.ModelVersion, names: Iterable[str] | None) -> list[common_pb2.Artifact]:
    if names is None:
        return list(version.artifacts)
    by_name = {a.name: a for a in version.artifacts}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"version {version.version} of {version.model!r} has no artifact {missing}; it has {sorted(by_name)}")
    return [by_name[n] for n in names]


def _get_request(model: str, version: int, alias: str) -> pb.GetModelVersionRequest:
    return pb.GetModelVersionRequest(model=model, version=version) if version else pb.GetModelVersionRequest(model=model, alias=alias)


def _download_timeout(timeout_s: float, size: int) -> float:
    return timeout_s + size / 5e6  # at least 5 MB/s on top of the base deadline


class RegistryClient:
    """Synchronous client (trainer, Bellman workers, tools). Thread-safe."""

    def __init__(self, target: str | grpc.Channel, *, timeout_s: float = 30.0, retry: RetryPolicy = RetryPolicy()):
        self._own = isinstance(target, str)
        self.channel = make_channel(target, default_timeout_s=timeout_s) if isinstance(target, str) else target
        self.stub = model_registry_pb2_grpc.ModelRegistryStub(self.channel)
        self.timeout_s, self.retry = timeout_s, retry

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self.channel.close()

    def publish(
        self, model: str, step: int, artifacts: Mapping[str, ArtifactInput], *, metrics: Mapping[str, float] | None = None,
        parent_version: int = 0, aliases: Sequence[str] = (), tasks: Iterable = (), labels: Mapping[str, str] | None = None,
        publish_id: str | None = None,
    ) -> common_pb2.ModelVersion:
        """Publishes a new version and returns it (retries are safe: same publish_id)."""
        chunks = publish_chunks(model, step, artifacts, publish_id=publish_id or f"{model}/{uuid.uuid4().hex}", metrics=metrics,
                                parent_version=parent_version, aliases=aliases, tasks=list(tasks), labels=labels)
        timeout = _download_timeout(self.timeout_s, sum(a.size_bytes for a in chunks[0].header.artifacts))
        return retry_idempotent(lambda: self.stub.Publish(iter(chunks), timeout=timeout), self.retry).version

    def get_version(self, model: str = DEFAULT_MODEL, version: int = 0, alias: str = "latest") -> common_pb2.ModelVersion:
        """A version by number, or (version 0) the one ``alias`` points at."""
        return retry_idempotent(lambda: self.stub.GetVersion(_get_request(model, version, alias), timeout=self.timeout_s), self.retry)

    def list_versions(self, model: str = DEFAULT_MODEL) -> list[common_pb2.ModelVersion]:
        """Every version, newest first."""
        out, token = [], ""
        while True:
            reply = retry_idempotent(lambda: self.stub.ListVersions(pb.ListVersionsRequest(model=model, page_size=1000, page_token=token),
                                                                     timeout=self.timeout_s), self.retry)
            out.extend(reply.versions)
            token = reply.next_page_token
            if not token:
                return out

    def download(self, model: str, version: int, artifact: common_pb2.Artifact) -> bytes:
        """One artifact's bytes, resuming after an interrupted stream, checked against its SHA-256."""
        buf, attempt = bytearray(), 1
        while True:
            try:
                request = pb.GetArtifactRequest(model=model, version=version, name=artifact.name, offset=len(buf))
                for chunk in self.stub.GetArtifact(request, timeout=_download_timeout(self.timeout_s, artifact.size_bytes - len(buf))):
                    buf += chunk.data
                return _check(artifact, buf)
            except grpc.RpcError as e:
                if e.code() not in self.retry.retryable_codes or attempt >= self.retry.max_attempts:
                    raise
                time.sleep(self.retry.backoff_s(attempt))
                attempt += 1

    def fetch_version(self, model: str = DEFAULT_MODEL, version: int = 0, *, alias: str = "latest",
                      names: Iterable[str] | None = None) -> tuple[common_pb2.ModelVersion, dict[str, bytes]]:
        """(the version, {artifact name: bytes}) by number, or (version 0) by alias."""
        v = self.get_version(model, version, alias)
        return v, {a.name: self.download(model, v.version, a) for a in _selected(v, names)}

    def fetch(self, model: str = DEFAULT_MODEL, version: int = 0, *, alias: str = "latest",
              names: Iterable[str] | None = None) -> dict[str, bytes]:
        """{artifact name: bytes} of a version (by number, or by alias when version is 0)."""
        return self.fetch_version(model, version, alias=alias, names=names)[1]

    def resolve(self, robot_id: str, model: str = DEFAULT_MODEL, alias: str = "") -> pb.ResolveResponse:
        """The version ``robot_id`` should run (its pin, else ``alias``, else the server's default alias)."""
        request = pb.ResolveRequest(model=model, robot_id=robot_id, alias=alias)
        return retry_idempotent(lambda: self.stub.Resolve(request, timeout=self.timeout_s), self.retry)

    # Changes are idempotent (setting the same target twice is a no-op), so they are retried too.
    def set_alias(self, model: str, alias: str, version: int, reason: str = "") -> pb.SetAliasResponse:
        request = pb.SetAliasRequest(model=model, alias=alias, version=version, reason=reason)
        return retry_idempotent(lambda: self.stub.SetAlias(request, timeout=self.timeout_s), self.retry)

    def pin(self, model: str, robot_id: str, version: int, reason: str = "") -> pb.PinResponse:
        request = pb.PinRequest(model=model, robot_id=robot_id, version=version, reason=reason)
        return retry_idempotent(lambda: self.stub.Pin(request, timeout=self.timeout_s), self.retry)

    def unpin(self, model: str, robot_id: str) -> pb.UnpinResponse:
        request = pb.UnpinRequest(model=model, robot_id=robot_id)
        return retry_idempotent(lambda: self.stub.Unpin(request, timeout=self.timeout_s), self.retry)

    def rollback(self, model: str, alias: str, to_version: int = 0, reason: str = "") -> pb.RollbackResponse:
        """Not retried: without to_version a second rollback would move the alias further back."""
        request = pb.RollbackRequest(model=model, alias=alias, to_version=to_version, reason=reason)
        return self.stub.Rollback(request, timeout=self.timeout_s)

    def watch(self, model: str = DEFAULT_MODEL, *, robot_id: str = "", alias: str = "", after_sequence: int = 0,
              send_initial: bool = False) -> Iterator[pb.VersionEvent]:
        """One WatchVersions stream (blocking iterator, no reconnect; see AsyncRegistryClient.watch)."""
        request = pb.WatchVersionsRequest(model=model, robot_id=robot_id, alias=alias, after_sequence=after_sequence,
                                          send_initial=send_initial)
        return self.stub.WatchVersions(request)


class AsyncRegistryClient:
    """grpc.aio client (robot agents and other asyncio services); create it inside its event loop."""

    def __init__(self, target: str, *, timeout_s: float = 30.0, retry: RetryPolicy = RetryPolicy()):
        self.channel = make_aio_channel(target, default_timeout_s=timeout_s)
        self.stub = model_registry_pb2_grpc.ModelRegistryStub(self.channel)
        self.timeout_s, self.retry = timeout_s, retry

    async def __aenter__(self) -> "AsyncRegistryClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def publish(
        self, model: str, step: int, artifacts: Mapping[str, ArtifactInput], *, metrics: Mapping[str, float] | None = None,
        parent_version: int = 0, aliases: Sequence[str] = (), tasks: Iterable = (), labels: Mapping[str, str] | None = None,
        publish_id: str | None = None,
    ) -> common_pb2.ModelVersion:
        chunks = publish_chunks(model, step, artifacts, publish_id=publish_id or f"{model}/{uuid.uuid4().hex}", metrics=metrics,
                                parent_version=parent_version, aliases=aliases, tasks=list(tasks), labels=labels)
        timeout = _download_timeout(self.timeout_s, sum(a.size_bytes for a in chunks[0].header.artifacts))
        reply = await retry_idempotent_async(lambda: self.stub.Publish(iter(chunks), timeout=timeout), self.retry)
        return reply.version

    async def get_version(self, model: str = DEFAULT_MODEL, version: int = 0, alias: str = "latest") -> common_pb2.ModelVersion:
        return await retry_idempotent_async(lambda: self.stub.GetVersion(_get_request(model, version, alias), timeout=self.timeout_s),
                                            self.retry)

    async def download(self, model: str, version: int, artifact: common_pb2.Artifact) -> bytes:
        buf, attempt = bytearray(), 1
        while True:
            try:
                request = pb.GetArtifactRequest(model=model, version=version, name=artifact.name, offset=len(buf))
                async for chunk in self.stub.GetArtifact(request, timeout=_download_timeout(self.timeout_s, artifact.size_bytes - len(buf))):
                    buf += chunk.data
                return _check(artifact, buf)
            except grpc.RpcError as e:
                if e.code() not in self.retry.retryable_codes or attempt >= self.retry.max_attempts:
                    raise
                await asyncio.sleep(self.retry.backoff_s(attempt))
                attempt += 1

    async def fetch_version(self, model: str = DEFAULT_MODEL, version: int = 0, *, alias: str = "latest",
                            names: Iterable[str] | None = None) -> tuple[common_pb2.ModelVersion, dict[str, bytes]]:
        v = await self.get_version(model, version, alias)
        return v, {a.name: await self.download(model, v.version, a) for a in _selected(v, names)}

    async def fetch(self, model: str = DEFAULT_MODEL, version: int = 0, *, alias: str = "latest",
                    names: Iterable[str] | None = None) -> dict[str, bytes]:
        return (await self.fetch_version(model, version, alias=alias, names=names))[1]

    async def resolve(self, robot_id: str, model: str = DEFAULT_MODEL, alias: str = "") -> pb.ResolveResponse:
        request = pb.ResolveRequest(model=model, robot_id=robot_id, alias=alias)
        return await retry_idempotent_async(lambda: self.stub.Resolve(request, timeout=self.timeout_s), self.retry)

    async def watch(self, model: str = DEFAULT_MODEL, *, robot_id: str = "", alias: str = "", after_sequence: int = 0,
                    send_initial: bool = False, reconnect: bool = True) -> AsyncIterator[pb.VersionEvent]:
        """Registry events until the caller stops iterating; reconnects after a broken stream
        (with backoff), resuming after the last sequence received, so nothing is missed or
        repeated. If the registry's log was reset (OUT_OF_RANGE) it starts over with the
        current state (send_initial)."""
        last, initial, attempt = after_sequence, send_initial, 1
        while True:
            request = pb.WatchVersionsRequest(model=model, robot_id=robot_id, alias=alias, after_sequence=last, send_initial=initial)
            call = self.stub.WatchVersions(request)
            try:
                async for event in call:
                    attempt = 1
                    last = max(last, event.sequence)
                    yield event
                initial = False
                if not reconnect:
                    return
            except grpc.RpcError as e:
                code = e.code()
                if code == grpc.StatusCode.OUT_OF_RANGE:
                    last, initial = 0, True
                elif code not in RETRYABLE_CODES or not reconnect:
                    raise
                else:
                    initial = False
            finally:
                call.cancel()
            await asyncio.sleep(self.retry.backoff_s(min(attempt, 10)))
            attempt += 1
