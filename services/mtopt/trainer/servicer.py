"""The Trainer gRPC servicer (grpc.aio): validates TargetBatches and calls into `Trainer`.

A rejected PushTargets gets INVALID_ARGUMENT (or RESOURCE_EXHAUSTED for a batch larger than the
trainer accepts), increments ``mtopt_trainer_batches_rejected_total{reason}`` and stores nothing;
a full buffer is not an error (accepted=false with a retry hint, reason "backpressure").
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from concurrent.futures import Executor

import grpc
import numpy as np

from mtopt.episode_codec import EpisodeDecodeError, tensor_from_proto
from mtopt.robot import ACTION_DIM, STATE_DIM
from mtopt.trainer.core import Trainer
from mtopt.trainer.metrics import TrainerMetrics
from mtopt.v1 import bellman_pb2, common_pb2, trainer_pb2 as pb, trainer_pb2_grpc

log = logging.getLogger(__name__)

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


class Rejection(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def decode_target_batch(msg: bellman_pb2.TargetBatch, *, image_size: int, num_slots: int, max_rows: int) -> dict[str, np.ndarray]:
    """The rows of a TargetBatch as numpy arrays, after checking every dtype, shape and value."""
    if not BATCH_ID.match(msg.batch_id):
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid",
                        "batch_id must be 1-200 characters of [A-Za-z0-9._:/-], e.g. <worker_id>/<sequence>")
    if len(msg.targets.shape) != 1:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", f"targets must be float32 [B], got shape {list(msg.targets.shape)}")
    b = int(msg.targets.shape[0])
    if b < 1:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", "the batch is empty (B = 0)")
    if b > max_rows:
        raise Rejection(grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large", f"batch of {b} rows exceeds the trainer's limit of {max_rows}; send smaller batches")
    spec = {
        "images": ("images", np.uint8, (b, image_size, image_size, 3)),
        "states": ("state_features", np.float32, (b, STATE_DIM)),
        "actions": ("actions", np.float32, (b, ACTION_DIM)),
        "tasks": ("task_indices", np.int64, (b,)),
        "targets": ("targets", np.float32, (b,)),
    }
    try:
        rows = {k: tensor_from_proto(getattr(msg, f), name=f, dtype=dt, shape=shape) for k, (f, dt, shape) in spec.items()}
    except EpisodeDecodeError as e:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", str(e)) from None
    if not np.all(np.isfinite(rows["targets"])) or rows["targets"].min() < 0.0 or rows["targets"].max() > 1.0:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", "targets must be finite and within [0, 1]")
    if not (np.all(np.isfinite(rows["states"])) and np.all(np.isfinite(rows["actions"]))):
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", "state_features and actions must be finite")
    if np.abs(rows["actions"]).max() > 1.0 + 1e-6:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", "actions must lie within [-1, 1]")
    if rows["tasks"].min() < 0 or rows["tasks"].max() >= num_slots:
        raise Rejection(grpc.StatusCode.INVALID_ARGUMENT, "invalid", f"task_indices must lie in [0, {num_slots}) (the catalogue's slots)")
    return rows


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    def __init__(self, trainer: Trainer, metrics: TrainerMetrics, executor: Executor):
        self.trainer, self.metrics, self.executor = trainer, metrics, executor

    async def _reject(self, context, r: Rejection):
        self.metrics.rejected.labels(r.reason).inc()
        await context.abort(r.code, r.message)

    def _ack(self, accepted: bool, duplicate: bool, retry_after_ms: int = 0) -> pb.PushAck:
        buf = self.trainer.buffer
        size = len(buf)
        return pb.PushAck(accepted=accepted, duplicate=duplicate, buffer_fill=size / buf.capacity, buffer_size=size,
                          buffer_capacity=buf.capacity, retry_after_ms=retry_after_ms, trainer_step=self.trainer.step)

    async def PushTargets(self, request, context):
        t, c = self.trainer, self.trainer.config
        try:
            rows = decode_target_batch(request, image_size=c.image_size, num_slots=t.catalogue.num_slots, max_rows=c.max_batch_rows)
        except Rejection as r:
            await self._reject(context, r)
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.executor, t.buffer.offer, request.batch_id, rows)
        self.metrics.buffer_rows.set(result.size)
        if result.duplicate:
            self.metrics.duplicates.inc()
            return self._ack(True, True)
        if not result.accepted:
            t.batches_rejected += 1
            self.metrics.rejected.labels("backpressure").inc()
            return self._ack(False, False, t.buffer.retry_after_ms(len(rows["targets"])))
        t.batches_accepted += 1
        self.metrics.accepted.inc()
        self.metrics.rows_accepted.inc(len(rows["targets"]))
        return self._ack(True, False)

    async def GetStatus(self, request, context):
        t = self.trainer
        s = pb.TrainerStatus(
            step=t.step, loss=_finite(t.loss), loss_ema=_finite(t.loss_ema), buffer_size=len(t.buffer), buffer_capacity=t.buffer.capacity,
            last_published_version=t.last_published.version if t.last_published is not None else 0,
            batches_accepted=t.batches_accepted, batches_rejected=t.batches_rejected, steps_per_second=t.steps_per_second(),
            tasks=[common_pb2.Task(name=x.name, skill=x.skill, description=x.description, index=x.index) for x in t.catalogue.tasks], last_checkpoint_step=t.last_checkpoint_step,
        )
        if t.last_published is not None and t.last_published.HasField("created_time"):
            s.last_published_time.CopyFrom(t.last_published.created_time)
        return s

    async def Checkpoint(self, request, context):
        t = self.trainer
        if request.aliases and not request.publish:
            self.metrics.rejected.labels("invalid").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "aliases are only used with publish=true")
        if not t.ready.is_set():
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the trainer is still starting (restoring its checkpoint / reaching the registry); retry")
        loop = asyncio.get_running_loop()
        try:
            info = await loop.run_in_executor(self.executor, t.checkpoint)
            version = None
            if request.publish:
                version = await loop.run_in_executor(self.executor, lambda: t.publish(request.reason or "checkpoint", tuple(request.aliases)))
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNAVAILABLE
            await context.abort(code if code != grpc.StatusCode.UNKNOWN else grpc.StatusCode.UNAVAILABLE, f"registry: {e.details() if hasattr(e, 'details') else e}")
        except Exception as e:
            log.exception("checkpoint failed")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"checkpoint storage failed: {e}")
        reply = pb.CheckpointResponse(step=info.step, checkpoint_uri=info.uri)
        if version is not None:
            reply.published_version.CopyFrom(version)
        return reply


def _finite(x: float) -> float:
    return 0.0 if math.isnan(x) else float(x)


