"""The SuccessDetector gRPC servicer (grpc.aio): converts between protobuf and the domain code.

Every rejected call gets a precise status and message, increments
``mtopt_success_detector_rejected_total{reason}`` and leaves nothing stored.
"""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.episode_store.storage import StorageUnavailableError
from mtopt.success_detector.errors import SdError, TooMany, Unavailable
from mtopt.success_detector.examples import ExampleBook
from mtopt.success_detector.metrics import SdMetrics
from mtopt.success_detector.storage import VersionRecord
from mtopt.success_detector.versions import VersionManager
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, success_detector_pb2 as pb, success_detector_pb2_grpc

log = logging.getLogger(__name__)

_STATE = {
    "PENDING": pb.SD_VERSION_STATE_PENDING, "TRAINING": pb.SD_VERSION_STATE_TRAINING,
    "READY": pb.SD_VERSION_STATE_READY, "FAILED": pb.SD_VERSION_STATE_FAILED,
}


def _ts(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def version_proto(record: VersionRecord, catalogue: TaskCatalogue, serving: int) -> pb.SdVersion:
    tasks = []
    for name, slot in zip(record.tasks, record.slots):
        t = catalogue[name] if name in catalogue else None
        tasks.append(common_pb2.Task(name=name, index=slot, skill=t.skill if t else "", description=t.description if t else ""))
    return pb.SdVersion(
        version=record.version, state=_STATE.get(record.state, pb.SD_VERSION_STATE_UNSPECIFIED), tasks=tasks, metrics=record.metrics,
        num_examples=record.num_examples, created_time=_ts(record.created_time), finished_time=_ts(record.finished_time),
        error=record.error, base_version=record.base_version, serving=record.version == serving and record.state == "READY",
        registry_version=record.registry_version,
    )


class SuccessDetectorServicer(success_detector_pb2_grpc.SuccessDetectorServicer):
    """Classify, AddExamples, TrainVersion and GetVersion over an `ExampleBook` and a `VersionManager`."""

    def __init__(self, book: ExampleBook, versions: VersionManager, metrics: SdMetrics, catalogue: TaskCatalogue, *,
                 max_classify_images: int, max_examples_per_request: int):
        self.book, self.versions, self.metrics, self.catalogue = book, versions, metrics, catalogue
        self.max_classify_images, self.max_examples = max_classify_images, max_examples_per_request

    async def _fail(self, context, e: Exception, what: str):
        if isinstance(e, StorageUnavailableError):
            e = Unavailable(f"{what}: the example storage did not answer ({e}); retry", "unavailable")
        elif isinstance(e, grpc.aio.AioRpcError) or isinstance(e, grpc.RpcError):
            e = Unavailable(f"{what}: the model registry did not answer ({e.code().name}: {e.details()}); retry", "unavailable")
        assert isinstance(e, SdError)
        self.metrics.rejected.labels(e.reason).inc()
        await context.abort(getattr(grpc.StatusCode, e.status), e.message)

    def _ready_or_unavailable(self) -> None:
        if not (self.book.loaded and self.versions.loaded):
            raise Unavailable("success_detector is still loading its examples and versions (health NOT_SERVING); retry shortly")

    async def Classify(self, request, context):
        t0 = time.perf_counter()
        try:
            self._ready_or_unavailable()
            if len(request.images) > self.max_classify_images:
                raise TooMany(f"{len(request.images)} images in one Classify; send at most {self.max_classify_images} per call")
            probs, record, tasks = await self.versions.classify(request.images, request.tasks, request.sd_version)
        except (SdError, StorageUnavailableError, grpc.RpcError) as e:
            await self._fail(context, e, "Classify")
        self.metrics.images_classified.inc(len(request.images))
        self.metrics.classify_seconds.observe(time.perf_counter() - t0)
        self.metrics.loaded_versions.set(len(self.versions.cache))
        return pb.ClassifyResponse(scores=[pb.ImageScores(probabilities=row.tolist()) for row in probs], tasks=tasks,
                                   sd_version=record.version)

    async def AddExamples(self, request, context):
        try:
            self._ready_or_unavailable()
            if len(request.examples) > self.max_examples:
                raise TooMany(f"{len(request.examples)} examples in one AddExamples; send at most {self.max_examples} per call")
            prepared = self.book.validate(request.examples)
            added, duplicates = await self.book.add(prepared)
        except (SdError, StorageUnavailableError) as e:
            await self._fail(context, e, "AddExamples")
        for task, n in added.items():
            self.metrics.examples_added.labels(task).inc(n)
        self.metrics.duplicate_examples.inc(duplicates)
        counts = self.book.counts()
        return pb.AddExamplesResponse(
            added=sum(added.values()), duplicates=duplicates,
            counts=[pb.TaskExampleCount(task=t, positives=p, negatives=n) for t, (p, n) in counts.items() if p + n],
        )

    async def TrainVersion(self, request, context):
        try:
            self._ready_or_unavailable()
            record = await self.versions.start_training(request.request_id, list(request.tasks), request.base_version,
                                                        request.train_steps, request.promote_when_ready,
                                                        request.focus_source, request.focus_share)
        except (SdError, StorageUnavailableError, grpc.RpcError) as e:
            await self._fail(context, e, "TrainVersion")
        return pb.TrainVersionResponse(version=version_proto(record, self.catalogue, self.versions.serving_version()))

    async def GetVersion(self, request, context):
        try:
            self._ready_or_unavailable()
            record = await self.versions.get(request.version)
        except (SdError, StorageUnavailableError) as e:
            await self._fail(context, e, "GetVersion")
        return version_proto(record, self.catalogue, self.versions.serving_version())
