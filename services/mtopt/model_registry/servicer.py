"""The ModelRegistry gRPC servicer (grpc.aio): converts between protobuf and registry records.

Every rejected call gets a precise status and message, increments
``mtopt_model_registry_rejected_total{reason}`` and leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
from concurrent.futures import Executor
from typing import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.model_registry.errors import InvalidRequestError, RegistryError, StorageUnavailableError
from mtopt.model_registry.layout import (
    ALIAS_SET, PINNED, PUBLISHED, ROBOT_PATTERN, ROLLED_BACK, UNPINNED, ArtifactRecord, Event, VersionRecord, artifact_key,
)
from mtopt.model_registry.metrics import RegistryMetrics
from mtopt.model_registry.publish import check_alias, check_header, check_model, receive_artifacts
from mtopt.model_registry.registry import Registry
from mtopt.model_registry.watch import WatchHub, follow
from mtopt.v1 import common_pb2, model_registry_pb2 as pb, model_registry_pb2_grpc

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 1000
MAX_REASON = 1024
_EVENT_TYPE = {
    PUBLISHED: pb.VERSION_EVENT_TYPE_PUBLISHED, ALIAS_SET: pb.VERSION_EVENT_TYPE_ALIAS_SET, PINNED: pb.VERSION_EVENT_TYPE_PINNED,
    UNPINNED: pb.VERSION_EVENT_TYPE_UNPINNED, ROLLED_BACK: pb.VERSION_EVENT_TYPE_ROLLED_BACK,
}
_SOURCE = {"pin": pb.RESOLVE_SOURCE_PIN, "alias": pb.RESOLVE_SOURCE_ALIAS}


def _ts(ns: int) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def _check_robot(robot_id: str, required: bool = True) -> None:
    if (required or robot_id) and not ROBOT_PATTERN.match(robot_id):
        raise InvalidRequestError(f"robot_id {robot_id!r} is invalid: use 1-128 characters of [A-Za-z0-9._-] starting with a "
                                  "letter or digit", "invalid_name")


def _check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON:
        raise InvalidRequestError(f"reason is {len(reason)} characters long; keep it under {MAX_REASON}")


class ModelRegistryServicer(model_registry_pb2_grpc.ModelRegistryServicer):
    """Publish, lookups, aliases, pins, rollback, resolve and watch over a `Registry`."""

    def __init__(
        self, registry: Registry, hub: WatchHub, metrics: RegistryMetrics, executor: Executor, *,
        default_alias: str = "stable", max_artifact_bytes: int = 256 << 20, max_version_bytes: int = 512 << 20,
        chunk_bytes: int = 1 << 20,
    ):
        self.registry, self.hub, self.metrics, self._executor = registry, hub, metrics, executor
        self.default_alias = default_alias
        self.max_artifact_bytes, self.max_version_bytes, self.chunk_bytes = max_artifact_bytes, max_version_bytes, chunk_bytes
        self._writes: set[asyncio.Future] = set()
        self._event_protos: collections.OrderedDict[tuple[str, int], pb.VersionEvent] = collections.OrderedDict()

    async def run_io(self, fn: Callable, *args):
        """Runs a blocking call in the registry's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def drain(self) -> None:
        """Waits for publishes still being written (e.g. of cancelled calls) to finish."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _fail(self, context, e: Exception, operation: str):
        if isinstance(e, RegistryError):
            self.metrics.rejected.labels(e.reason).inc()
            log.info("rejected %s (%s): %s", operation, e.reason, e.message)
            await context.abort(grpc.StatusCode[e.status], e.message)
        self.metrics.storage_errors.labels(operation).inc()
        log.warning("%s failed: %s", operation, e)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"model storage did not answer, retry later: {e}")

    # -- protobuf ----------------------------------------------------------------------------------
    def version_proto(self, record: VersionRecord, aliases: list[str] = ()) -> common_pb2.ModelVersion:
        uri = self.registry.objects.uri
        return common_pb2.ModelVersion(
            model=record.model, version=record.version, step=record.step, created_time=_ts(record.created_ns),
            parent_version=record.parent_version, metrics=dict(record.metrics), aliases=list(aliases),
            artifacts=[self.artifact_proto(record, a, uri) for a in record.artifacts],
            tasks=[common_pb2.Task(name=t.name, skill=t.skill, description=t.description, index=t.index) for t in record.tasks],
            labels=dict(record.labels),
        )

    @staticmethod
    def artifact_proto(record: VersionRecord, a: ArtifactRecord, uri) -> common_pb2.Artifact:
        return common_pb2.Artifact(name=a.name, kind=a.kind, uri=uri(artifact_key(record.model, record.version, a.name)),
                                   size_bytes=a.size_bytes, sha256=a.sha256)

    def event_proto(self, e: Event) -> pb.VersionEvent:
        """The VersionEvent of a log event, built once and shared by every stream."""
        key = (e.model, e.sequence)
        msg = self._event_protos.get(key)
        if msg is None:
            record = e.record if e.record is not None else self.registry.version_record(e.model, e.version) if e.version else None
            msg = pb.VersionEvent(sequence=e.sequence, type=_EVENT_TYPE[e.type], model=e.model, alias=e.alias,
                                  robot_id=e.robot_id, previous_version=e.previous_version, time=_ts(e.time_ns))
            if record is not None:
                msg.version.CopyFrom(self.version_proto(record))
            self._event_protos[key] = msg
            while len(self._event_protos) > 4096:
                self._event_protos.popitem(last=False)
        return msg

    # -- Publish -------------------------------------------------------------------------------------
    async def Publish(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            it = request_iterator.__aiter__()
            try:
                first = await it.__anext__()
            except StopAsyncIteration:
                raise InvalidRequestError("empty publish stream: send a PublishHeader, then the artifacts' data", "no_header") from None
            if first.WhichOneof("payload") != "header":
                raise InvalidRequestError("the first PublishChunk must carry a PublishHeader, not artifact data", "no_header")
            new = check_header(first.header, self.max_artifact_bytes, self.max_version_bytes)
            record = await self.run_io(self.registry.find_published, new)
            existed = record is not None
            if not existed:  # a retry of a finished publish is answered without reading its data
                blobs = await receive_artifacts(it, new)
                write = loop.run_in_executor(self._executor, self.registry.publish, new, blobs)
                self._writes.add(write)
                write.add_done_callback(self._writes.discard)
                record, existed = await asyncio.shield(write)  # a cancelled call still finishes its write
        except asyncio.CancelledError:
            self.metrics.rejected.labels("cancelled").inc()
            raise
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "publish")
        if existed:
            self.metrics.duplicates.inc()
        else:
            self.metrics.published.labels(new.model).inc()
            self.metrics.published_bytes.labels(new.model).inc(sum(a.size_bytes for a in new.artifacts))
            log.info("published %s version %d (step %d, %d artifacts)", new.model, record.version, record.step, len(record.artifacts))
        self.metrics.publish_seconds.observe(loop.time() - started)
        return pb.PublishResponse(version=self.version_proto(record, self.registry.aliases_of(record.model, record.version)),
                                  already_existed=existed)

    # -- lookups -------------------------------------------------------------------------------------
    async def GetVersion(self, request, context):
        try:
            check_model(request.model)
            selector = request.WhichOneof("selector")
            if selector is None:
                raise InvalidRequestError("set version (a number) or alias (e.g. latest)")
            if selector == "alias":
                check_alias(request.alias)
                record, aliases = await self.run_io(self.registry.get_version, request.model, 0, request.alias)
            else:
                record, aliases = await self.run_io(self.registry.get_version, request.model, request.version)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "get_version")
        return self.version_proto(record, aliases)

    async def ListVersions(self, request, context):
        try:
            check_model(request.model)
            if request.page_size < 0:
                raise InvalidRequestError(f"page_size must be >= 0, got {request.page_size}")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            below = self._decode_token(request.page_token, request.model) if request.page_token else 0
            page, next_below, aliases = await self.run_io(self.registry.list_versions, request.model, below, size)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "list_versions")
        token = base64.urlsafe_b64encode(json.dumps({"m": request.model, "b": next_below}).encode()).decode() if next_below else ""
        return pb.ListVersionsResponse(versions=[self.version_proto(r, a) for r, a in page], next_page_token=token, aliases=aliases)

    @staticmethod
    def _decode_token(token: str, model: str) -> int:
        try:
            d = json.loads(base64.urlsafe_b64decode(token.encode()))
            below, token_model = int(d["b"]), d["m"]
        except Exception:
            raise InvalidRequestError("page_token is not a next_page_token of ListVersions") from None
        if token_model != model:
            raise InvalidRequestError(f"page_token was issued for model {token_model!r}, not {model!r}")
        return below

    async def GetArtifact(self, request, context):
        try:
            check_model(request.model)
            if request.version <= 0:
                raise InvalidRequestError(f"version must be >= 1, got {request.version} (resolve an alias with GetVersion first)")
            if not request.name and request.kind == common_pb2.ARTIFACT_KIND_UNSPECIFIED:
                raise InvalidRequestError("set name (e.g. q_tower.onnx) or kind of the artifact to download")
            artifact, key = await self.run_io(self.registry.artifact, request.model, request.version, request.name, request.kind)
            if not 0 <= request.offset <= artifact.size_bytes:
                raise InvalidRequestError(f"offset {request.offset} lies outside [0, {artifact.size_bytes}] of artifact "
                                          f"{artifact.name!r}", "out_of_range")
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "get_artifact")
        record = self.registry.version_record(request.model, request.version)
        description = self.artifact_proto(record, artifact, self.registry.objects.uri)
        pos, size, first = request.offset, artifact.size_bytes, True
        while first or pos < size:
            n = min(self.chunk_bytes, size - pos)
            try:
                data = await self.run_io(self.registry.read_artifact, key, pos, n) if n else b""
                if len(data) != n:
                    raise StorageUnavailableError(f"artifact object {key} is shorter than its manifest says ({pos + len(data)} "
                                                  f"of {size} bytes)")
            except StorageUnavailableError as e:
                await self._fail(context, e, "get_artifact")
            yield pb.ArtifactChunk(artifact=description if first else None, offset=pos, data=data)
            self.metrics.artifact_bytes_sent.inc(n)
            pos, first = pos + n, False

    # -- aliases, pins, rollback, resolve ------------------------------------------------------------
    async def _version_reply(self, model: str, version: int) -> common_pb2.ModelVersion:
        record, aliases = await self.run_io(self.registry.get_version, model, version)
        return self.version_proto(record, aliases)

    async def SetAlias(self, request, context):
        try:
            check_model(request.model)
            check_alias(request.alias)
            _check_reason(request.reason)
            previous = await self.run_io(self.registry.set_alias, request.model, request.alias, request.version, request.reason)
            version = await self._version_reply(request.model, request.version)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "set_alias")
        return pb.SetAliasResponse(version=version, previous_version=previous)

    async def Pin(self, request, context):
        try:
            check_model(request.model)
            _check_robot(request.robot_id)
            _check_reason(request.reason)
            previous = await self.run_io(self.registry.pin, request.model, request.robot_id, request.version, request.reason)
            version = await self._version_reply(request.model, request.version)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "pin")
        return pb.PinResponse(version=version, previous_version=previous)

    async def Unpin(self, request, context):
        try:
            check_model(request.model)
            _check_robot(request.robot_id)
            previous = await self.run_io(self.registry.unpin, request.model, request.robot_id)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "unpin")
        return pb.UnpinResponse(was_pinned=bool(previous), previous_version=previous)

    async def Rollback(self, request, context):
        try:
            check_model(request.model)
            check_alias(request.alias)
            _check_reason(request.reason)
            from_version, to_version = await self.run_io(self.registry.rollback, request.model, request.alias,
                                                         request.to_version, request.reason)
            version = await self._version_reply(request.model, to_version)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "rollback")
        return pb.RollbackResponse(alias=request.alias, from_version=from_version, version=version)

    async def Resolve(self, request, context):
        try:
            check_model(request.model)
            _check_robot(request.robot_id, required=False)
            alias = request.alias or self.default_alias
            check_alias(alias)
            record, source, aliases = await self.run_io(self.registry.resolve, request.model, request.robot_id, alias)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "resolve")
        return pb.ResolveResponse(version=self.version_proto(record, aliases), source=_SOURCE[source],
                                  alias=alias if source == "alias" else "")

    # -- WatchVersions -------------------------------------------------------------------------------
    async def WatchVersions(self, request, context):
        try:
            check_model(request.model)
            _check_robot(request.robot_id, required=False)
            alias = request.alias or self.default_alias
            check_alias(alias)
            if request.after_sequence < 0:
                raise InvalidRequestError(f"after_sequence must be >= 0, got {request.after_sequence}")
            start = await self.run_io(self.registry.watch_start, request.model, request.after_sequence, request.robot_id)
        except (RegistryError, StorageUnavailableError) as e:
            await self._fail(context, e, "watch")
        model, robot_id = request.model, request.robot_id
        self.metrics.watch_streams.inc()
        try:
            if request.send_initial:
                for name, v in sorted(start.at.aliases.items()):
                    yield pb.VersionEvent(sequence=0, type=pb.VERSION_EVENT_TYPE_ALIAS_SET, model=model, alias=name,
                                          version=self._version_or_none(model, v))
                if robot_id:
                    v = start.at.pin or start.at.aliases.get(alias, 0)
                    yield pb.VersionEvent(sequence=0, type=pb.VERSION_EVENT_TYPE_RESOLVED, model=model, robot_id=robot_id,
                                          alias="" if start.at.pin else alias, version=self._version_or_none(model, v))
            async for item in follow(self.hub, model, start, robot_id, alias):
                if item[0] == "event":
                    yield self.event_proto(item[1])
                else:
                    _, v, previous, followed, sequence = item
                    yield pb.VersionEvent(sequence=sequence, type=pb.VERSION_EVENT_TYPE_RESOLVED, model=model, robot_id=robot_id,
                                          alias=followed, previous_version=previous, version=self._version_or_none(model, v))
        except StorageUnavailableError as e:
            await self._fail(context, e, "watch")
        finally:
            self.metrics.watch_streams.dec()

    def _version_or_none(self, model: str, version: int) -> common_pb2.ModelVersion | None:
        record = self.registry.version_record(model, version) if version else None
        return None if record is None else self.version_proto(record)
