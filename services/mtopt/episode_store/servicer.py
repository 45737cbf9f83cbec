"""The EpisodeStore gRPC servicer (grpc.aio): converts between protobuf and storage records.

Every rejected call gets a precise status and message, increments
``mtopt_episode_store_rejected_total{reason}`` and leaves nothing stored.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
from concurrent.futures import Executor
from typing import Callable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.episode_codec import ID_PATTERN, EpisodeDecodeError, parse_episode, validate_episode
from mtopt.episode_store.layout import EpisodeRecord, LogName, NewEpisode, check_cursor
from mtopt.episode_store.metrics import StoreMetrics
from mtopt.episode_store.storage import EpisodeBackend, EpisodeConflictError, StorageUnavailableError
from mtopt.episode_store.watch import WatchHub, follow
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, episode_store_pb2 as pb, episode_store_pb2_grpc

log = logging.getLogger(__name__)

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
_CODE_FOR_DECODE_REASON = {"too_large": grpc.StatusCode.RESOURCE_EXHAUSTED}


class Rejection(Exception):
    """A call refused for bad input: status code, metric reason, message for the client."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _invalid(reason: str, message: str) -> Rejection:
    return Rejection(grpc.StatusCode.INVALID_ARGUMENT, reason, message)


def _ts(ns: int) -> Timestamp | None:
    if not ns:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(ns)
    return ts


def summary_of(r: EpisodeRecord) -> pb.EpisodeSummary:
    s = pb.EpisodeSummary(
        episode_id=r.episode_id, robot_id=r.robot_id, task=r.task, policy_version=r.policy_version,
        policy_name=r.policy_name, num_steps=r.num_steps, size_bytes=r.size_bytes, sha256=r.sha256,
        terminated_by_policy=r.terminated_by_policy, metadata=dict(r.metadata), storage_key=r.storage_key,
        storage_offset=r.data_offset,
    )
    for field, ns in (("start_time", r.start_ns), ("end_time", r.end_ns), ("stored_time", r.stored_ns)):
        ts = _ts(ns)
        if ts is not None:
            getattr(s, field).CopyFrom(ts)
    return s


class EpisodeStoreServicer(episode_store_pb2_grpc.EpisodeStoreServicer):
    """Upload, Get, List and Watch over an `EpisodeBackend`."""

    def __init__(
        self, backend: EpisodeBackend, hub: WatchHub, metrics: StoreMetrics, executor: Executor, *,
        catalogue: TaskCatalogue | None, max_episode_bytes: int, image_shape: tuple[int, int, int] | None = None,
        inline_bytes: int = 0,
    ):
        self.backend, self.hub, self.metrics, self._executor = backend, hub, metrics, executor
        self.catalogue = catalogue
        self.max_episode_bytes = max_episode_bytes
        self.image_shape = image_shape
        self.inline_bytes = inline_bytes
        self._writes: set[asyncio.Future] = set()

    async def run_io(self, fn: Callable, *args):
        """Runs a blocking call in the store's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def drain(self) -> None:
        """Waits for storage writes still running (e.g. of cancelled calls) to finish."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def _reject(self, context, r: Rejection):
        self.metrics.rejected.labels(r.reason).inc()
        log.info("rejected (%s): %s", r.reason, r.message)
        await context.abort(r.code, r.message)

    async def _unavailable(self, context, operation: str, e: Exception):
        self.metrics.storage_errors.labels(operation).inc()
        log.warning("%s failed: %s", operation, e)
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"episode storage did not answer, retry later: {e}")

    # -- UploadEpisode / PutEpisode -----------------------------------------------------------
    async def UploadEpisode(self, request_iterator, context):
        return await self._upload(context, self._receive(request_iterator))

    async def PutEpisode(self, request, context):
        return await self._upload(context, self._received(request))

    async def _upload(self, context, receive) -> pb.UploadEpisodeResponse:
        """Receives (``receive``: a coroutine returning header and bytes), validates, stores."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.metrics.uploads_in_flight.inc()
        try:
            header, data = await receive
            # Validate, then join a group commit, whose segment write completes the future: a
            # small new episode right here on the loop, anything else with one hop to the
            # thread pool. A cancelled call still finishes its write.
            new = committed = None
            if len(data) <= self.inline_bytes:
                new = self._validate(header, data)
                committed = self.backend.submit_nowait(new, data, loop)
            if committed is None:
                if new is None:
                    new, submitted = await self._track(loop.run_in_executor(self._executor, self._validate_and_submit, header, data))
                else:
                    submitted = await self._track(loop.run_in_executor(self._executor, self.backend.submit, new, data))
                committed = asyncio.wrap_future(submitted)
            result = await self._track(committed)
        except Rejection as r:
            await self._reject(context, r)
        except EpisodeConflictError as e:
            await self._reject(context, Rejection(grpc.StatusCode.ALREADY_EXISTS, "conflict", str(e)))
        except StorageUnavailableError as e:
            await self._unavailable(context, "upload", e)
        except asyncio.CancelledError:
            self.metrics.rejected.labels("cancelled").inc()
            raise
        finally:
            self.metrics.uploads_in_flight.dec()
        if result.already_existed:
            self.metrics.duplicates.inc()
        else:
            self.metrics.stored.labels(new.task).inc()
            self.metrics.stored_bytes.labels(new.task).inc(new.size_bytes)
            self.hub.wake()
        self.metrics.upload_seconds.observe(loop.time() - started)
        return pb.UploadEpisodeResponse(episode=summary_of(result.record), already_existed=result.already_existed)

    async def _received(self, request: pb.PutEpisodeRequest) -> tuple[pb.UploadEpisodeHeader, bytes]:
        if not request.HasField("header"):
            raise _invalid("no_header", "PutEpisodeRequest.header is missing: set the UploadEpisodeHeader of the episode")
        h = request.header
        self._check_header(h)
        if len(request.data) != h.total_bytes:
            reason = "truncated" if len(request.data) < h.total_bytes else "size_mismatch"
            raise _invalid(reason, f"data has {len(request.data)} bytes, header.total_bytes says {h.total_bytes}; nothing was stored, send exactly the serialized Episode")
        self._check_digest(h, request.data)
        return h, request.data

    async def _receive(self, request_iterator) -> tuple[pb.UploadEpisodeHeader, bytes]:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise _invalid("no_header", "empty upload stream: send an UploadEpisodeHeader, then the data chunks") from None
        if first.WhichOneof("payload") != "header":
            raise _invalid("no_header", "the first UploadEpisodeChunk must carry an UploadEpisodeHeader, not data")
        h = first.header
        self._check_header(h)
        buf = bytearray()
        async for chunk in it:
            if chunk.WhichOneof("payload") != "data":
                raise _invalid("invalid_header", "only the first UploadEpisodeChunk may carry a header; the others carry data")
            if len(buf) + len(chunk.data) > h.total_bytes:
                raise _invalid("size_mismatch", f"received more than the announced total_bytes={h.total_bytes}; send exactly the serialized Episode")
            buf += chunk.data
        if len(buf) < h.total_bytes:
            raise _invalid("truncated", f"upload stream ended after {len(buf)} of {h.total_bytes} bytes; nothing was stored, upload the episode again")
        self._check_digest(h, buf)
        return h, bytes(buf)

    @staticmethod
    def _check_digest(h: pb.UploadEpisodeHeader, data: bytes | bytearray) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != h.sha256:
            raise _invalid("sha256_mismatch", f"sha256 of the received bytes is {digest}, the header announced {h.sha256}; nothing was stored")

    def _check_header(self, h: pb.UploadEpisodeHeader) -> None:
        for field in ("episode_id", "robot_id"):
            value = getattr(h, field)
            if not ID_PATTERN.match(value):
                raise _invalid("invalid_id", f"header.{field} {value!r} is invalid: use 1-128 characters from [A-Za-z0-9._-], starting with a letter or digit")
        if self.catalogue is not None and h.task not in self.catalogue:
            raise _invalid("unknown_task", f"unknown task {h.task!r}; known tasks: {', '.join(self.catalogue.names)}")
        if h.total_bytes <= 0:
            raise _invalid("invalid_header", f"header.total_bytes must be the (positive) length of the serialized Episode, got {h.total_bytes}")
        if h.total_bytes > self.max_episode_bytes:
            raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large",
                            f"episode of {h.total_bytes} bytes exceeds the store's limit of {self.max_episode_bytes} bytes (MTOPT_EPISODE_STORE_MAX_EPISODE_BYTES)")
        if not SHA256_HEX.match(h.sha256):
            raise _invalid("invalid_header", "header.sha256 must be the lower-case hex SHA-256 of the serialized Episode (64 characters)")

    def _track(self, future: asyncio.Future):
        """Shields a storage step from the call's cancellation; `drain` waits for it."""
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)
        return asyncio.shield(future)

    def _validate_and_submit(self, h: pb.UploadEpisodeHeader, data: bytes):
        """(NewEpisode, Future of the PutResult): validates the bytes, then submits them to the
        backend's group commit (in the thread pool)."""
        new = self._validate(h, data)
        return new, self.backend.submit(new, data)

    def _validate(self, h: pb.UploadEpisodeHeader, data: bytes) -> NewEpisode:
        """Parses and validates the bytes (CPU work: on the loop for small episodes, else in
        the thread pool)."""
        try:
            msg = parse_episode(data)
            num_steps = validate_episode(msg, catalogue=self.catalogue, image_shape=self.image_shape)
        except EpisodeDecodeError as e:
            raise Rejection(_CODE_FOR_DECODE_REASON.get(e.reason, grpc.StatusCode.INVALID_ARGUMENT), e.reason, str(e)) from None
        for field in ("episode_id", "robot_id", "task"):
            if getattr(h, field) != getattr(msg, field):
                raise _invalid("header_mismatch", f"header.{field}={getattr(h, field)!r} but the Episode says {getattr(msg, field)!r}")
        return NewEpisode(
            episode_id=msg.episode_id, robot_id=msg.robot_id, task=msg.task, sha256=h.sha256, size_bytes=len(data),
            policy_version=msg.policy_version, policy_name=msg.policy_name, num_steps=num_steps,
            start_ns=msg.start_time.ToNanoseconds() if msg.HasField("start_time") else 0,
            end_ns=msg.end_time.ToNanoseconds() if msg.HasField("end_time") else 0,
            terminated_by_policy=msg.terminated_by_policy, metadata=dict(msg.metadata),
        )

    # -- GetEpisode --------------------------------------------------------------------------
    async def GetEpisode(self, request, context):
        try:
            if not ID_PATTERN.match(request.episode_id):
                raise _invalid("invalid_id", f"episode_id {request.episode_id!r} is not a valid episode id")
            found = await self.run_io(self.backend.fetch, request.episode_id)
            if found is None:
                raise Rejection(grpc.StatusCode.NOT_FOUND, "not_found", f"episode {request.episode_id!r} is not stored (or its upload has not completed)")
            record, data = found
        except Rejection as r:
            await self._reject(context, r)
        except StorageUnavailableError as e:
            await self._unavailable(context, "get", e)
        return pb.GetEpisodeResponse(summary=summary_of(record), episode=common_pb2.Episode.FromString(data))

    # -- ListEpisodes ------------------------------------------------------------------------
    @staticmethod
    def _matcher(robot_id: str, task: str, start_ns: int | None = None, end_ns: int | None = None):
        def match(name: LogName) -> bool:
            return ((not robot_id or name.robot_id == robot_id) and (not task or name.task == task)
                    and (start_ns is None or name.end_ns >= start_ns) and (end_ns is None or name.end_ns < end_ns))
        return match

    async def ListEpisodes(self, request, context):
        try:
            if request.page_size < 0:
                raise _invalid("invalid_request", f"page_size must be >= 0, got {request.page_size}")
            size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
            start_ns = request.start_time.ToNanoseconds() if request.HasField("start_time") else None
            end_ns = request.end_time.ToNanoseconds() if request.HasField("end_time") else None
            filters = hashlib.sha256(repr((start_ns, end_ns, request.robot_id, request.task)).encode()).hexdigest()[:16]
            after = self._decode_token(request.page_token, filters) if request.page_token else ""
            match = self._matcher(request.robot_id, request.task, start_ns, end_ns)
            records, last, reached_end = await self.run_io(self.backend.scan_log, after, size + 1, match, 50_000, None)
        except Rejection as r:
            await self._reject(context, r)
        except StorageUnavailableError as e:
            await self._unavailable(context, "list", e)
        token = ""
        if len(records) > size:
            records = records[:size]
            token = self._encode_token(records[-1].cursor, filters)
        elif not reached_end:  # scan budget spent: continue where it stopped
            token = self._encode_token(last, filters)
        return pb.ListEpisodesResponse(episodes=[summary_of(r) for r in records], next_page_token=token)

    @staticmethod
    def _encode_token(cursor: str, filters: str) -> str:
        return base64.urlsafe_b64encode(json.dumps({"a": cursor, "f": filters}).encode()).decode()

    @staticmethod
    def _decode_token(token: str, filters: str) -> str:
        try:
            d = json.loads(base64.urlsafe_b64decode(token.encode()))
            cursor = d["a"]
            check_cursor(cursor)
        except Exception:
            raise _invalid("invalid_request", "page_token is not a next_page_token of ListEpisodes") from None
        if d.get("f") != filters:
            raise _invalid("invalid_request", "page_token was issued for other filters: repeat the first request's filters")
        return cursor

    # -- WatchEpisodes -----------------------------------------------------------------------
    async def WatchEpisodes(self, request, context):
        if request.cursor:
            try:
                check_cursor(request.cursor)
            except ValueError:
                await self._reject(context, _invalid("invalid_request", "cursor is not an EpisodeEvent.cursor of this store"))
            cursor = request.cursor
        else:
            cursor = "" if request.backfill else self.hub.position
        match = self._matcher(request.robot_id, request.task)
        self.metrics.watch_streams.inc()
        try:
            async for item in follow(self.hub, cursor, match):
                if item[0] == "stored":
                    _, record, backfill = item
                    yield pb.EpisodeEvent(type=pb.EPISODE_EVENT_TYPE_STORED, episode=summary_of(record), cursor=record.cursor, backfill=backfill)
                else:
                    yield pb.EpisodeEvent(type=pb.EPISODE_EVENT_TYPE_CAUGHT_UP, cursor=item[1])
        except StorageUnavailableError as e:
            await self._unavailable(context, "watch", e)
        finally:
            self.metrics.watch_streams.dec()
