"""The LogReplay gRPC servicer: protobuf <-> the replay core (sampling, stats, relabelling)."""

from __future__ import annotations

import asyncio
import logging
import math

import grpc
import numpy as np

from mtopt.core.replay import Batch
from mtopt.episode_codec import tensor_to_proto
from mtopt.log_replay.follower import ReplayCore
from mtopt.log_replay.relabel import RelabelRejected, Relabeller
from mtopt.v1 import common_pb2, log_replay_pb2 as pb, log_replay_pb2_grpc

log = logging.getLogger(__name__)

IMPERSONATION = {"orig": pb.IMPERSONATION_MODE_ORIG, "all": pb.IMPERSONATION_MODE_ALL, "skill": pb.IMPERSONATION_MODE_SKILL}


def batch_to_proto(batch: Batch, tasks: list[common_pb2.Task], sd_version: int, sequence: int) -> pb.TransitionBatch:
    """The wire form of a sampled batch; terminal rows get an all-zero next observation."""
    done = batch.dones > 0
    next_images, next_states = batch.next_images, batch.next_states.astype(np.float32)
    if done.any():
        next_images, next_states = next_images.copy(), next_states.copy()
        next_images[done] = 0
        next_states[done] = 0
    return pb.TransitionBatch(
        images=tensor_to_proto(batch.images), state_features=tensor_to_proto(batch.states.astype(np.float32)),
        actions=tensor_to_proto(batch.actions.astype(np.float32)), next_images=tensor_to_proto(next_images),
        next_state_features=tensor_to_proto(next_states), task_indices=tensor_to_proto(batch.tasks.astype(np.int64)),
        rewards=tensor_to_proto(batch.rewards.astype(np.float32)), dones=tensor_to_proto(batch.dones.astype(np.float32)),
        successes=tensor_to_proto(batch.successes.astype(bool)), episode_ids=batch.episode_ids, tasks=tasks,
        sd_version=sd_version, sequence=sequence,
    )


class LogReplayServicer(log_replay_pb2_grpc.LogReplayServicer):
    def __init__(self, core: ReplayCore, relabeller: Relabeller, *, impersonation: str, success_fraction: float,
                 min_per_task: int, min_total: int, max_batch_size: int, wait_s: float = 1.0):
        self.core, self.relabeller = core, relabeller
        self.impersonation = IMPERSONATION[impersonation]
        self.success_fraction, self.min_per_task, self.min_total = success_fraction, min_per_task, min_total
        self.max_batch_size, self.wait_s = max_batch_size, wait_s
        catalogue = core.cache.catalogue
        self.task_protos = [common_pb2.Task(name=t.name, skill=t.skill, description=t.description, index=t.index) for t in catalogue]

    async def _reject(self, context, code: grpc.StatusCode, reason: str, message: str):
        self.core.metrics.rejected.labels(reason).inc()
        await context.abort(code, message)

    # -- SampleBatches -------------------------------------------------------------------------
    async def SampleBatches(self, request, context):
        catalogue = self.core.cache.catalogue
        if request.batch_size <= 0 or request.batch_size > self.max_batch_size:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "batch_size",
                               f"batch_size must lie in [1, {self.max_batch_size}], got {request.batch_size}")
        if request.max_batches < 0:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "max_batches",
                               f"max_batches must be >= 0 (0 streams until cancelled), got {request.max_batches}")
        unknown = [t for t in request.tasks if t not in catalogue]
        if unknown:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "unknown_task",
                               f"unknown tasks {unknown}; known tasks: {', '.join(catalogue.names)}")
        fraction = request.success_fraction if request.HasField("success_fraction") else self.success_fraction
        if not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, "success_fraction",
                               f"success_fraction must lie in [0, 1], got {fraction}")
        explicit = bool(request.tasks)
        wanted = sorted({catalogue[t].index for t in request.tasks}) if explicit else catalogue.indices
        rng = np.random.default_rng()
        metrics = self.core.metrics
        metrics.streams.inc()
        try:
            sequence = 0
            while request.max_batches == 0 or sequence < request.max_batches:
                keys = await self._wait_for_data(wanted, explicit, context)
                if keys is None:
                    return
                msg = await self.core.run_io(self._sample, keys, request.batch_size, rng, fraction, sequence)
                yield msg
                sequence += 1
                metrics.batches.inc()
                metrics.transitions_served.inc(request.batch_size)
        finally:
            metrics.streams.dec()

    def _sample(self, keys, batch_size, rng, fraction, sequence) -> pb.TransitionBatch:
        sd_version = self.core.sd_version
        batch = self.core.cache.sample(batch_size, rng, fraction, keys)
        return batch_to_proto(batch, self.task_protos, sd_version, sequence)

    async def _wait_for_data(self, wanted: list[int], explicit: bool, context) -> list[int] | None:
        """The tasks to sample from once there is enough data; None if the stream should end."""
        core = self.core
        while not core.closed and not context.cancelled():
            keys, total = core.cache.eligible(wanted, self.min_per_task)
            if keys and total >= self.min_total and (not explicit or len(keys) == len(wanted)):
                return keys
            async with core.data_changed:
                try:
                    await asyncio.wait_for(core.data_changed.wait(), self.wait_s)
                except asyncio.TimeoutError:
                    pass
        return None

    # -- GetStats ------------------------------------------------------------------------------
    async def GetStats(self, request, context):
        core = self.core
        counts = core.cache.counts()
        state = core.state
        reply = pb.ReplayStats(
            tasks=[pb.TaskBufferStats(task=name, success_transitions=c.success_transitions, failure_transitions=c.failure_transitions,
                                      success_episodes=c.success_episodes, failure_episodes=c.failure_episodes, bytes=c.bytes)
                   for name, c in counts.items()],
            bytes_total=core.cache.nbytes, episodes_processed=state.episodes_processed, cursor=state.cursor,
            sd_version=state.sd_version, impersonation=self.impersonation,
            batches_served=int(core.metrics.value("mtopt_log_replay_batches_served_total")), caught_up=core.caught_up,
        )
        if self.relabeller.latest is not None:
            reply.relabel.CopyFrom(self.relabeller.latest.to_proto())
        return reply

    # -- Relabel -------------------------------------------------------------------------------
    async def Relabel(self, request, context):
        try:
            run, already = await self.relabeller.request(request.sd_version, list(request.tasks))
        except RelabelRejected as e:
            await self._reject(context, e.code, e.reason, str(e))
        except grpc.RpcError as e:
            self.core.metrics.dependency_errors.labels("success_detector").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"success_detector did not answer: {e.details()}; retry later")
        return pb.RelabelResponse(progress=run.to_proto(), already_started=already)
