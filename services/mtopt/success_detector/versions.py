"""SD versions: their records, training them one at a time, the serving one, classifying with any.

Version numbers are assigned by this service when training starts (the proto needs one at
once), starting at 1; the registry's own version number of the published weights is
``registry_version`` (and the registry version carries ``labels["sd_version"]``). Promotion is
the registry alias ``serving`` on model ``success_detector``; Classify with sd_version 0 uses the
version that alias points at, or the newest READY version while the alias is unset.

Usage (inside the event loop)::

    versions = VersionManager(settings, catalogue, storage, book, registry, sync_registry, run_io, run_infer)
    await versions.load()                                  # records, the registry's versions, adopt pending work
    record = await versions.start_training("req-1", ["lift-red"], base_version=0, train_steps=0, promote=True)
    probs, record, tasks = await versions.classify(images, ["lift-red"], sd_version=0)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, Sequence

import grpc
import numpy as np

from mtopt.episode_codec import EpisodeDecodeError, decode_image
from mtopt.success_detector import training
from mtopt.success_detector.errors import InvalidRequest, NotFound, Precondition, TooMany, Unavailable
from mtopt.success_detector.examples import ExampleBook
from mtopt.success_detector.models import ARTIFACT, MODEL, SERVING_ALIAS, ModelCache, parse_network
from mtopt.success_detector.storage import FAILED, FINAL_STATES, PENDING, READY, TRAINING, SdStorage, VersionRecord
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import model_registry_pb2 as reg_pb

log = logging.getLogger(__name__)
MAX_REQUEST_ID = 256


@dataclasses.dataclass(frozen=True)
class VersionSettings:
    train: training.TrainSettings
    max_train_steps: int
    max_pending: int
    max_loaded: int
    shared_storage: bool
    train_timeout_s: float
    registry_timeout_s: float


class VersionManager:
    """Every SD version this deployment knows, and the work on them."""

    def __init__(self, settings: VersionSettings, catalogue: TaskCatalogue, storage: SdStorage, book: ExampleBook,
                 registry, sync_registry, run_io: Callable[..., Awaitable], run_infer: Callable[..., Awaitable]):
        self.settings, self.catalogue, self.storage, self.book = settings, catalogue, storage, book
        self.registry, self.sync_registry, self._run_io, self._run_infer = registry, sync_registry, run_io, run_infer
        self.records: dict[int, VersionRecord] = {}
        self.requests: dict[str, int] = {}
        self.serving_alias = 0  # SD version the registry alias points at (0: unset)
        self.cache = ModelCache(self._fetch, run_infer, settings.max_loaded, settings.train.device)
        self.loaded = False
        self.listeners: list[Callable[[str, VersionRecord], None]] = []  # ("ready"|"failed"|"serving", record)
        self._trainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sd-train")
        self._cancel = threading.Event()
        self._create_lock = asyncio.Lock()
        self._jobs: set[asyncio.Future] = set()

    # -- loading and the registry ----------------------------------------------------------------
    async def _list_registry(self) -> tuple[list, dict[str, int]]:
        out, token, aliases = [], "", {}
        while True:
            request = reg_pb.ListVersionsRequest(model=MODEL, page_size=1000, page_token=token)
            try:
                reply = await self.registry.stub.ListVersions(request, timeout=self.settings.registry_timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:  # nothing published yet
                    return [], {}
                raise
            out += reply.versions
            aliases = dict(reply.aliases)
            token = reply.next_page_token
            if not token:
                return out, aliases

    async def load(self) -> None:
        """Reads the version records, merges what the registry holds (versions whose records were
        lost, or that were published just before a crash), and re-queues interrupted training."""
        records = await self._run_io(self.storage.load_versions)
        published, aliases = await self._list_registry()
        by_registry = {}
        for mv in published:
            sd_version = int(mv.labels.get("sd_version", "0") or 0)
            if sd_version <= 0:
                continue
            by_registry[mv.version] = sd_version
            known = records.get(sd_version)
            if known is None or known.state != READY:
                records[sd_version] = VersionRecord(
                    version=sd_version, state=READY, request_id=mv.labels.get("request_id", ""), tasks=[t.name for t in mv.tasks],
                    slots=[t.index for t in mv.tasks], base_version=known.base_version if known else 0, train_steps=mv.step,
                    promote=known.promote if known else False, num_examples=int(mv.metrics.get("train/num_examples", 0)),
                    metrics=dict(mv.metrics), created_time=mv.created_time.ToSeconds(), finished_time=mv.created_time.ToSeconds(),
                    registry_version=mv.version,
                )
                await self._run_io(self.storage.save_version, records[sd_version])
        self.records.update(records)
        self.requests.update({r.request_id: r.version for r in records.values() if r.request_id})
        self.serving_alias = by_registry.get(aliases.get(SERVING_ALIAS, 0), 0)
        now = time.time()
        for record in sorted(records.values(), key=lambda r: r.version):
            stale = not self.settings.shared_storage or now - record.updated_time > self.settings.train_timeout_s
            if record.state == PENDING or (record.state == TRAINING and stale):
                log.info("SD version %d was %s when the service last stopped: training it again", record.version, record.state)
                self._submit(dataclasses.replace(record, state=PENDING, error=""))
        self.loaded = True
        self._emit("serving", self.records.get(self.serving_version()))

    async def refresh_serving(self) -> None:
        """Follows the registry's ``serving`` alias (moved by another replica or by hand)."""
        try:
            mv = await self.registry.stub.GetVersion(reg_pb.GetModelVersionRequest(model=MODEL, alias=SERVING_ALIAS),
                                                     timeout=self.settings.registry_timeout_s)
            sd_version = int(mv.labels.get("sd_version", "0") or 0)
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
            sd_version = 0
        if sd_version != self.serving_alias:
            self.serving_alias = sd_version
            self._emit("serving", self.records.get(self.serving_version()))

    def serving_version(self) -> int:
        """The alias's version, else the newest READY one, else 0."""
        if self.serving_alias:
            return self.serving_alias
        ready = [v for v, r in self.records.items() if r.state == READY]
        return max(ready, default=0)

    async def _fetch(self, registry_version: int) -> tuple[dict, bytes]:
        try:
            mv, blobs = await self.registry.fetch_version(MODEL, registry_version, names=[ARTIFACT])
        except grpc.aio.AioRpcError as e:
            raise Unavailable(f"cannot load the weights of registry version {registry_version} of {MODEL!r}: "
                              f"{e.code().name} {e.details()}") from None
        try:
            return parse_network(mv.labels), blobs[ARTIFACT]
        except ValueError as e:
            raise Precondition(f"registry version {registry_version} of {MODEL!r} is not a usable SD version: {e}",
                               "version_not_ready") from None

    def _emit(self, event: str, record: VersionRecord | None) -> None:
        for listener in self.listeners:
            listener(event, record)

    # -- lookups ---------------------------------------------------------------------------------
    async def get(self, version: int) -> VersionRecord:
        """A version's record (0: the serving one); NotFound if there is none."""
        if version < 0:
            raise InvalidRequest(f"version must be >= 0 (0 for the serving version), got {version}", "invalid_request")
        if version == 0:
            version = self.serving_version()
            if version == 0:
                raise NotFound("no SD version is serving yet: add examples, then TrainVersion with promote_when_ready", "no_ready_version")
        record = self.records.get(version)
        if (record is None or record.state not in FINAL_STATES) and self.settings.shared_storage and version not in self._local_jobs():
            stored = await self._run_io(self.storage.get_version, version)  # another replica may own it
            if stored is not None:
                self.records[version] = record = stored
        if record is None:
            known = sorted(self.records)
            raise NotFound(f"unknown SD version {version}; known versions: {known[-10:] or 'none'}")
        return record

    def _local_jobs(self) -> set[int]:
        return {getattr(f, "sd_version", 0) for f in self._jobs}

    # -- classification --------------------------------------------------------------------------
    async def classify(self, images: Sequence, tasks: Sequence[str], sd_version: int) -> tuple[np.ndarray, VersionRecord, list[str]]:
        """P(success) (len(images), len(tasks)) for encoded Image messages; ``tasks`` empty = all of the version's."""
        if sd_version < 0:
            raise InvalidRequest(f"sd_version must be >= 0 (0 for the serving version), got {sd_version}", "invalid_request")
        if sd_version == 0 and self.serving_version() == 0:
            raise Precondition("no READY SD version yet: add examples, then TrainVersion (promote_when_ready) and wait for READY",
                               "no_ready_version")
        record = await self.get(sd_version)
        if record.state != READY:
            raise Precondition(f"SD version {record.version} is {record.state}, not READY; poll GetVersion until it is",
                               "version_not_ready")
        slot_of = dict(zip(record.tasks, record.slots))
        names = list(tasks) or list(record.tasks)
        unknown = [t for t in names if t not in slot_of]
        if unknown:
            raise InvalidRequest(f"SD version {record.version} does not know tasks {unknown}; it knows {record.tasks}", "unknown_task")
        sd, network = await self.cache.get(record)
        size = int(network["image_size"])
        probs = await self._run_infer(_predict, sd, list(images), [slot_of[t] for t in names], size)
        return probs, record, names

    # -- training --------------------------------------------------------------------------------
    async def start_training(self, request_id: str, tasks: Sequence[str], base_version: int, train_steps: int,
                             promote: bool, focus_source: str = "", focus_share: float = 0.0) -> VersionRecord:
        """Starts training a new version (or returns the one ``request_id`` started before)."""
        if not request_id or len(request_id) > MAX_REQUEST_ID:
            raise InvalidRequest(f"request_id must be 1-{MAX_REQUEST_ID} characters (an idempotency key you choose)", "invalid_request")
        if not 0.0 <= focus_share < 1.0:  # also false for NaN
            raise InvalidRequest(f"focus_share must lie in [0, 1), got {focus_share}", "invalid_request")
        if focus_share and not focus_source:
            raise InvalidRequest("a non-zero focus_share needs the focus_source its examples come from", "invalid_request")
        if len(focus_source) > MAX_REQUEST_ID:
            raise InvalidRequest(f"focus_source must be at most {MAX_REQUEST_ID} characters", "invalid_request")
        async with self._create_lock:
            if request_id in self.requests:
                return await self.get(self.requests[request_id])
            bound = await self._run_io(self.storage.lookup_request, request_id)
            if bound is not None:
                self.requests[request_id] = bound
                return await self.get(bound)
            if self.settings.shared_storage:  # other replicas may have added examples since this one started
                await self.book.load()
            names = self._check_train_request(tasks, train_steps)
            steps = train_steps or self.settings.train.train_steps
            if base_version:
                base = await self.get(base_version)
                if base.state != READY:
                    raise Precondition(f"base_version {base_version} is {base.state}; warm-start from a READY version", "version_not_ready")
            busy = sum(1 for r in self.records.values() if r.state in (PENDING, TRAINING))
            if busy >= self.settings.max_pending:
                raise TooMany(f"{busy} SD versions are already waiting or training (limit {self.settings.max_pending}); "
                              "retry when one is READY", "busy")
            now = time.time()
            make = lambda n: VersionRecord(  # noqa: E731
                version=n, state=PENDING, request_id=request_id, tasks=names, slots=[self.catalogue[t].index for t in names],
                base_version=base_version, train_steps=steps, promote=promote, created_time=now, updated_time=now,
                focus_source=focus_source if focus_share else "", focus_share=float(focus_share))
            record = await self._run_io(self.storage.allocate_version, max(self.records, default=0) + 1, make)
            winner = await self._run_io(self.storage.claim_request, request_id, record.version)
            if winner != record.version:  # another replica took this request_id first
                record = dataclasses.replace(record, state=FAILED, error=f"duplicate of request {request_id!r}, see version {winner}",
                                             finished_time=time.time())
                await self._run_io(self.storage.save_version, record)
                self.records[record.version] = record
                self.requests[request_id] = winner
                return await self.get(winner)
            self.records[record.version] = record
            self.requests[request_id] = record.version
            self._submit(record)
            return record

    def _check_train_request(self, tasks: Sequence[str], train_steps: int) -> list[str]:
        if train_steps < 0 or train_steps > self.settings.max_train_steps:
            raise InvalidRequest(f"train_steps must lie in [0, {self.settings.max_train_steps}] (0: the server default), "
                                 f"got {train_steps}", "invalid_request")
        counts = self.book.counts()
        unknown = [t for t in tasks if t not in self.catalogue]
        if unknown:
            raise InvalidRequest(f"tasks {unknown} are not in the task catalogue ({', '.join(self.catalogue.names)})", "unknown_task")
        names = sorted(set(tasks) or {t for t, (p, n) in counts.items() if p + n}, key=lambda t: self.catalogue[t].index)
        if not names:
            raise Precondition("there are no labelled examples: call AddExamples before TrainVersion", "no_examples")
        lacking = [t for t in names if 0 in counts.get(t, (0, 0))]
        if lacking:
            raise Precondition(f"tasks {lacking} need at least one positive and one negative example each "
                               f"(have {[counts.get(t, (0, 0)) for t in lacking]} positives/negatives); add examples first", "no_examples")
        return names

    def _submit(self, record: VersionRecord) -> None:
        self.records[record.version] = record
        entries = self.book.entries(record.tasks)
        base = self.records.get(record.base_version) if record.base_version else None
        future = asyncio.get_running_loop().run_in_executor(self._trainer, self._train, record, entries, base)
        future.sd_version = record.version  # type: ignore[attr-defined]
        self._jobs.add(future)
        future.add_done_callback(self._finished)

    def _train(self, record: VersionRecord, entries, base: VersionRecord | None):
        """The training thread: one version from PENDING to READY or FAILED."""
        if self._cancel.is_set():
            return record, None
        record = dataclasses.replace(record, state=TRAINING)
        self.storage.save_version(record)
        self.records[record.version] = record
        detector = None
        try:
            examples, hashes, sources = training.load_examples(self.storage, entries, self.catalogue, self.settings.train.image_size)
            base_weights = None
            if base is not None:
                mv, blobs = self.sync_registry.fetch_version(MODEL, base.registry_version, names=[ARTIFACT])
                base_weights = (parse_network(mv.labels), blobs[ARTIFACT])
            settings = dataclasses.replace(self.settings.train, train_steps=record.train_steps, seed=record.version)
            focus = (record.focus_source, record.focus_share) if record.focus_share else None
            result = training.train_and_evaluate(examples, hashes, self.catalogue, settings, base_weights, self._cancel,
                                                 sources=sources, focus=focus)
            published = training.publish(self.sync_registry, record, result, self.catalogue, base.registry_version if base else 0)
            detector = (result.detector, result.network)
            record = dataclasses.replace(record, state=READY, metrics=result.metrics, num_examples=result.num_examples,
                                         registry_version=published.version, finished_time=time.time())
        except training.TrainingCancelled:
            record = dataclasses.replace(record, state=PENDING)  # trained again at the next start
        except Exception as e:  # a failed version is reported in its record, never a crash
            log.exception("training SD version %d failed", record.version)
            record = dataclasses.replace(record, state=FAILED, error=f"{type(e).__name__}: {e}", finished_time=time.time())
        try:
            self.storage.save_version(record)
        except Exception:
            log.exception("could not save the record of SD version %d", record.version)
        self.records[record.version] = record
        return record, detector

    def _finished(self, future: asyncio.Future) -> None:
        self._jobs.discard(future)
        if future.cancelled() or future.exception() is not None:
            return
        record, detector = future.result()
        if record.state == READY:
            if detector is not None:
                self.cache.put(record.version, *detector)
            if record.promote:
                self.serving_alias = record.version
            self._emit("ready", record)
            self._emit("serving", self.records.get(self.serving_version()))
        elif record.state == FAILED:
            self._emit("failed", record)

    async def close(self) -> None:
        """Stops training: a version in training is left PENDING (trained again at the next start)."""
        self._cancel.set()
        self._trainer.shutdown(wait=False, cancel_futures=True)
        running = [f for f in self._jobs if not f.done()]
        if running:  # the running job stops within one batch and saves its record as PENDING
            await asyncio.wait(running, timeout=30)


def _predict(sd, images: list, slots: list[int], size: int) -> np.ndarray:
    """Runs on the inference thread: decode and check every image, then score them all."""
    arrays = []
    for i, image in enumerate(images):
        try:
            arrays.append(decode_image(image, name=f"images[{i}]", expected_shape=(size, size, 3)))
        except EpisodeDecodeError as e:
            raise InvalidRequest(str(e), "invalid_image") from None
    if not arrays:
        return np.zeros((0, len(slots)), np.float32)
    return sd.predict(np.stack(arrays), slots)
