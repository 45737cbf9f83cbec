"""The Bellman worker loop: transition batches in, clipped double-Q targets out to the trainer.

    source (LogReplay.SampleBatches stream, reconnected with backoff)
      -> between batches: load new target networks from the registry (Qt1 newest, Qt2 lagged)
      -> decode, compute targets (CEM on Qt1, min(Qt1, Qt2)) in a thread
      -> Trainer.PushTargets(batch_id "<worker>/<seq>"): accepted=false -> wait retry_after_ms and
         push the same batch again; UNAVAILABLE -> back off and retry (idempotent by batch_id)

Reading the stream only after a push succeeds lets gRPC flow control carry the trainer's
back-pressure all the way to log_replay.

Usage::

    worker = BellmanWorker(config, nets, trainer_stub, metrics, executor, source=log_replay_source(stub, config))
    task = asyncio.create_task(worker.run())
    ...
    await worker.stop()
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import Executor
from typing import AsyncIterable, Callable

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from mtopt.bellman.config import BellmanConfig
from mtopt.bellman.metrics import BellmanMetrics
from mtopt.bellman.targets import BadBatchError, TargetNetworkSource, batch_seed, compute_targets, decode_transition_batch
from mtopt.episode_codec import tensor_to_proto
from mtopt.serving.client import RETRYABLE_CODES
from mtopt.v1 import bellman_pb2, log_replay_pb2, log_replay_pb2_grpc, trainer_pb2_grpc

log = logging.getLogger(__name__)

BatchSource = Callable[[], AsyncIterable[log_replay_pb2.TransitionBatch]]
"""Opens one stream of TransitionBatches (called again to reconnect after it fails)."""


def log_replay_source(stub: log_replay_pb2_grpc.LogReplayStub, config: BellmanConfig) -> BatchSource:
    """SampleBatches streams for this worker (long-lived: no deadline; the server paces them)."""

    def open_stream():
        request = log_replay_pb2.SampleRequest(batch_size=config.batch_size, worker_id=config.worker_name, tasks=list(config.tasks))
        return stub.SampleBatches(request)

    return open_stream


class BellmanWorker:
    def __init__(self, config: BellmanConfig, nets: TargetNetworkSource, trainer: trainer_pb2_grpc.TrainerStub, metrics: BellmanMetrics,
                 executor: Executor, source: BatchSource):
        self.config, self.nets, self.trainer, self.metrics = config, nets, trainer, metrics
        self.executor, self.source = executor, source
        self.worker_id = config.worker_name
        self.algo = config.algo()
        self.sequence = 0
        self.targets_computed = self.batches_pushed = self.batches_rejected = 0
        self.last_push_time: float | None = None
        self.started_time = time.time()
        self._pushes: collections.deque = collections.deque(maxlen=50)  # (time, rows)
        self._stopping = asyncio.Event()
        self._last_poll = 0.0

    # -- helpers -------------------------------------------------------------------------------
    async def _io(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _sleep(self, seconds: float) -> bool:
        """Sleeps unless stopping; False when the worker is stopping."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
            return False
        except asyncio.TimeoutError:
            return True

    def _backoff(self, attempt: int) -> float:
        return min(self.config.max_backoff_s, 0.05 * 2 ** min(attempt, 10))

    def targets_per_second(self) -> float:
        pushes = list(self._pushes)
        if len(pushes) < 2 or time.monotonic() - pushes[-1][0] > 30:
            return 0.0
        return sum(n for _, n in pushes[1:]) / max(pushes[-1][0] - pushes[0][0], 1e-9)

    # -- target networks -----------------------------------------------------------------------
    async def refresh_networks(self, force: bool = False) -> bool:
        """Polls the registry (at most every registry_poll_s); True once networks are loaded."""
        now = time.monotonic()
        if force or self.nets.current is None or now - self._last_poll >= self.config.registry_poll_s:
            self._last_poll = now
            try:
                await self._io(self.nets.refresh)
            except grpc.RpcError as e:
                if self.nets.current is not None or e.code() != grpc.StatusCode.NOT_FOUND:
                    self.metrics.errors.labels("registry").inc()
                    log.warning("registry lookup failed (keeping the loaded networks): %s", e.details() if hasattr(e, "details") else e)
            except BadBatchError as e:
                self.metrics.errors.labels("registry").inc()
                log.warning("cannot load target networks: %s", e)
        cur = self.nets.current
        if cur is not None:
            self.metrics.target_version.set(cur.version)
            self.metrics.lagged_version.set(cur.lagged_version)
        return cur is not None

    # -- one batch -----------------------------------------------------------------------------
    def compute(self, msg: log_replay_pb2.TransitionBatch, sequence: int) -> bellman_pb2.TargetBatch:
        """The TargetBatch for one TransitionBatch (blocking: torch)."""
        nets = self.nets.current
        assert nets is not None, "compute() before the target networks are loaded"
        batch = decode_transition_batch(msg, nets.q_t1.tower.image_size, nets.num_task_slots)
        t0 = time.perf_counter()
        tb = compute_targets(nets, batch, self.algo, batch_seed(self.worker_id, sequence, self.config.seed), self.nets.device)
        self.metrics.duration.observe(time.perf_counter() - t0)
        targets = tb.targets.detach().cpu().numpy().astype(np.float32)
        self.metrics.mean_target.set(float(targets.mean()))
        created = Timestamp()
        created.GetCurrentTime()
        return bellman_pb2.TargetBatch(
            batch_id=f"{self.worker_id}/{sequence}", images=tensor_to_proto(batch.images), state_features=tensor_to_proto(batch.states),
            actions=tensor_to_proto(batch.actions), task_indices=tensor_to_proto(batch.tasks), targets=tensor_to_proto(targets),
            target_model_version=nets.version, lagged_model_version=nets.lagged_version, worker_id=self.worker_id,
            sd_version=msg.sd_version, created_time=created,
        )

    async def push(self, tb: bellman_pb2.TargetBatch) -> bool:
        """Pushes until accepted (back-pressure and UNAVAILABLE are waited out); False if the
        trainer refused the batch for good or the worker is stopping."""
        attempt = 0
        while not self._stopping.is_set():
            try:
                ack = await self.trainer.PushTargets(tb, timeout=self.config.call_timeout_s)
            except grpc.aio.AioRpcError as e:
                if e.code() in RETRYABLE_CODES:
                    attempt += 1
                    self.metrics.errors.labels("trainer_unavailable").inc()
                    await self._sleep(self._backoff(attempt))
                    continue
                self.metrics.errors.labels("push_rejected").inc()
                log.error("trainer refused batch %s: %s %s", tb.batch_id, e.code().name, e.details())
                return False
            if ack.accepted:
                rows = int(tb.targets.shape[0])
                self.batches_pushed += 1
                self.metrics.pushed.inc()
                self.last_push_time = time.time()
                self._pushes.append((time.monotonic(), rows))
                return True
            self.batches_rejected += 1
            self.metrics.rejected.inc()
            wait = max(ack.retry_after_ms, 10) / 1000
            self.metrics.backpressure_seconds.inc(wait)
            await self._sleep(wait)
        return False

    async def handle(self, msg: log_replay_pb2.TransitionBatch) -> bool:
        """Targets for one batch, pushed; False if the batch was skipped."""
        while not await self.refresh_networks():
            if not await self._sleep(min(self.config.registry_poll_s, 0.5)):
                return False
        sequence = self.sequence
        self.sequence += 1
        try:
            tb = await self._io(self.compute, msg, sequence)
        except BadBatchError as e:
            self.metrics.errors.labels("bad_batch").inc()
            log.warning("skipping a bad transition batch: %s", e)
            return False
        rows = int(tb.targets.shape[0])
        self.targets_computed += rows
        self.metrics.targets.inc(rows)
        return await self.push(tb)

    # -- the loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Consumes the source (reopening it with backoff after failures) until stop()."""
        attempt = 0
        while not self._stopping.is_set():
            if not await self.refresh_networks(force=True):  # no networks yet: do not open the stream
                await self._sleep(min(self.config.registry_poll_s, 0.5))
                continue
            stream = self.source()
            try:
                async for msg in stream:
                    attempt = 0
                    await self.handle(msg)
                    if self._stopping.is_set():
                        return
                await self._sleep(0.1)  # the stream ended (max_batches): open a new one
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                attempt += 1
                reason = "log_replay_unavailable" if e.code() in RETRYABLE_CODES else "log_replay_error"
                self.metrics.errors.labels(reason).inc()
                log.warning("batch stream failed (%s: %s); reconnecting", e.code().name, e.details())
                await self._sleep(self._backoff(attempt))
            except Exception:
                attempt += 1
                self.metrics.errors.labels("internal").inc()
                log.exception("bellman worker error; restarting the stream")
                await self._sleep(self._backoff(attempt))
            finally:
                await _close(stream)

    def stop(self) -> None:
        self._stopping.set()


async def _close(stream) -> None:
    """Cancels a gRPC stream call or closes an async generator."""
    if hasattr(stream, "cancel"):
        stream.cancel()
    elif hasattr(stream, "aclose"):
        await stream.aclose()
