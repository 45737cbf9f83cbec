"""Rewards from the success detector: which tasks an episode is labelled for (impersonation,
restricted to what the SD version knows) and the SD's verdict per task (probability >= threshold).

Every call has a deadline and is retried with backoff (Classify and GetVersion are pure reads).

Usage::

    labeller = Labeller(SuccessDetectorStub(channel), catalogue, mode="skill", threshold=0.5)
    version = await labeller.serving_version()           # SdVersion, or None if none is READY
    known = await labeller.known_tasks(version.version)
    tasks = labeller.tasks_for("lift-red", known)          # ["lift-any", "lift-red", ...]
    verdicts = await labeller.classify([final_image], [tasks], version.version)   # [{"lift-red": True, ...}]
"""

from __future__ import annotations

from typing import Sequence

import grpc

from mtopt.core.replay import impersonate
from mtopt.serving import RetryPolicy, retry_idempotent_async
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, success_detector_pb2 as sd_pb

READY = sd_pb.SD_VERSION_STATE_READY


class Labeller:
    """Talks to success_detector for log_replay."""

    def __init__(
        self, stub, catalogue: TaskCatalogue, *, mode: str, threshold: float, timeout_s: float = 10.0,
        retry: RetryPolicy = RetryPolicy(), max_images: int = 32,
    ):
        self.stub, self.catalogue, self.mode, self.threshold = stub, catalogue, mode, threshold
        self.timeout_s, self.retry, self.max_images = timeout_s, retry, max_images
        self._ready_versions: dict[int, sd_pb.SdVersion] = {}

    async def get_version(self, version: int) -> sd_pb.SdVersion:
        """GetVersion (0: the serving one); READY versions are immutable and cached."""
        if version in self._ready_versions:
            return self._ready_versions[version]
        reply = await retry_idempotent_async(
            lambda: self.stub.GetVersion(sd_pb.GetSdVersionRequest(version=version), timeout=self.timeout_s), self.retry
        )
        if reply.state == READY:
            self._ready_versions[reply.version] = reply
        return reply

    async def serving_version(self) -> sd_pb.SdVersion | None:
        """The serving SD version if it is READY; None while there is none."""
        try:
            reply = await self.get_version(0)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                return None
            raise
        return reply if reply.state == READY and reply.version > 0 else None

    async def known_tasks(self, version: int) -> set[str]:
        """Tasks of our catalogue that SD ``version`` scores."""
        reply = await self.get_version(version)
        return {t.name for t in reply.tasks if t.name in self.catalogue}

    def tasks_for(self, collecting_task: str, known: set[str]) -> list[str]:
        """Impersonation targets of an episode collected for ``collecting_task`` that the SD knows."""
        return [t.name for t in impersonate(self.catalogue[collecting_task], self.catalogue, self.mode) if t.name in known]

    async def probabilities(self, images: Sequence[common_pb2.Image], tasks: Sequence[str], version: int) -> list[list[float]]:
        """P(success) of every image for every task, one Classify call per ``max_images`` images."""
        out: list[list[float]] = []
        for i in range(0, len(images), self.max_images):
            request = sd_pb.ClassifyRequest(images=list(images[i : i + self.max_images]), tasks=list(tasks), sd_version=version)
            reply = await retry_idempotent_async(lambda: self.stub.Classify(request, timeout=self.timeout_s), self.retry)
            index = {name: j for j, name in enumerate(reply.tasks)}
            if len(reply.scores) != len(request.images) or any(t not in index for t in tasks):
                raise RuntimeError(f"success_detector answered {len(reply.scores)} scores for tasks {list(reply.tasks)}; "
                                   f"asked {len(request.images)} images for {list(tasks)}")
            out += [[s.probabilities[index[t]] for t in tasks] for s in reply.scores]
        return out

    async def classify(
        self, images: Sequence[common_pb2.Image], tasks: Sequence[Sequence[str]], version: int
    ) -> list[dict[str, bool]]:
        """task -> success for each image, for that image's tasks (one call for the union)."""
        union = sorted({t for ts in tasks for t in ts})
        if not union or not images:
            return [{} for _ in images]
        probs = await self.probabilities(images, union, version)
        col = {t: j for j, t in enumerate(union)}
        return [{t: bool(p[col[t]] >= self.threshold) for t in ts} for p, ts in zip(probs, tasks)]
