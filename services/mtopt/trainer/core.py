"""The trainer's work, free of gRPC: the train buffer, the SGD loop thread, publishing and
checkpoints. The servicer only converts protobuf and calls into `Trainer`.

Usage::

    trainer = Trainer(config, catalogue, RegistryClient(config.registry_address), CheckpointStore(objects), metrics)
    trainer.start()                      # thread: restore -> ensure a registry version -> train
    trainer.buffer.offer(batch_id, rows) # from PushTargets
    version = trainer.publish(reason="manual")
    trainer.stop(); trainer.checkpoint() # on SIGTERM
"""

from __future__ import annotations

import collections
import io
import json
import logging
import threading
import time
import uuid

import grpc
import numpy as np
import torch

from mtopt.core.bellman import TargetNetworks
from mtopt.core.export import export_onnx_bytes
from mtopt.core.learner import Learner, TargetBatch
from mtopt.core.config import DEFAULT_TOWER_STEM
from mtopt.core.networks import QNetwork
from mtopt.model_registry.client import RegistryClient
from mtopt.robot import ACTION_DIM, STATE_DIM
from mtopt.tasks import TaskCatalogue
from mtopt.trainer.buffer import TrainBuffer
from mtopt.trainer.checkpoints import CheckpointInfo, CheckpointStore
from mtopt.trainer.config import TrainerConfig
from mtopt.trainer.metrics import TrainerMetrics
from mtopt.v1 import common_pb2

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("MTOPT_TRAINER_DEVICE=cuda but torch sees no CUDA device; use cpu or auto")
    return torch.device(name)


def state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_state(data: bytes, device: torch.device | str = "cpu") -> dict:
    """torch.load with weights_only=True: never unpickle arbitrary objects."""
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def _cpu(state: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


class Trainer:
    """Owns the online Q-network, its optimiser, Qt1 and the train buffer; see the module docstring."""

    def __init__(self, config: TrainerConfig, catalogue: TaskCatalogue, registry: RegistryClient, checkpoints: CheckpointStore,
                 metrics: TrainerMetrics):
        self.config, self.catalogue, self.registry, self.checkpoints, self.metrics = config, catalogue, registry, checkpoints, metrics
        self.algo = config.algo()
        self.device = resolve_device(config.device)
        self.network = {"num_task_slots": catalogue.num_slots, "image_size": config.image_size, "channels": config.channels,
                        "multi_head": config.multi_head, "point_readout": config.point_readout}
        if config.tower_stem != DEFAULT_TOWER_STEM:  # versions published before the option existed keep their label
            self.network["stem"] = config.tower_stem
        self.network_label = json.dumps(self.network, sort_keys=True)
        with torch.random.fork_rng(devices=[]):  # seeded initial weights without touching the process's RNG
            torch.manual_seed(config.seed)
            self.q = QNetwork(**self.network).to(self.device)
        self.learner = Learner(self.q, self.algo)
        self.targets = TargetNetworks(self.q, self.algo)
        self.buffer = TrainBuffer(config.buffer_capacity_rows, (config.image_size, config.image_size, 3), STATE_DIM, ACTION_DIM,
                                  max_row_uses=config.max_row_uses, dedup_memory=config.dedup_memory)
        self.rng = np.random.default_rng(config.seed)
        self.lock = threading.Lock()  # the networks and optimiser
        self._publish_lock = threading.Lock()
        self.run_id = uuid.uuid4().hex[:12]
        self._publishes = 0
        self.loss, self.loss_ema = float("nan"), float("nan")
        self.last_published: common_pb2.ModelVersion | None = None
        self.last_checkpoint_step = 0
        self.batches_accepted = self.batches_rejected = 0
        self._step_times: collections.deque = collections.deque(maxlen=50)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._running = threading.Event()  # cleared by pause()
        self._running.set()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        metrics.buffer_capacity.set(config.buffer_capacity_rows)

    @property
    def step(self) -> int:
        return self.learner.steps

    # -- start-up ------------------------------------------------------------------------------
    def restore(self) -> None:
        """Loads the last checkpoint; without one, the registry's latest weights (if any, same network)."""
        self.checkpoints.objects.ping()  # S3: also creates the bucket when allowed
        found = self.checkpoints.load()
        latest = self._latest_version()
        if found is not None:
            info, data = found
            state = load_state(data, self.device)
            if state.get("network") != self.network_label:
                raise RuntimeError(f"checkpoint {info.uri} is for network {state.get('network')}, the config asks for "
                                   f"{self.network_label}; use another checkpoint directory/bucket or matching settings")
            with self.lock:
                self.learner.load_state_dict({"q": state["q"], "optimizer": state["optimizer"], "steps": state["step"]})
                self.targets.q_t1.load_state_dict(state["q_t1"])
                self.targets.q_t2.load_state_dict(state["q_t1"])
                self.loss_ema = float(state.get("loss_ema", float("nan")))
            self.last_checkpoint_step = int(state["step"])
            log.info("trainer resumed from checkpoint %s at step %d", info.uri, self.step)
        elif latest is not None and latest.labels.get("network") == self.network_label:
            blobs = {a.name: self.registry.download(self.config.model, latest.version, a)
                     for a in latest.artifacts if a.name in ("model.pt", "target.pt")}
            with self.lock:
                self.q.load_state_dict(load_state(blobs["model.pt"], self.device))
                self.targets.load(self.q)
                if "target.pt" in blobs:
                    self.targets.q_t1.load_state_dict(load_state(blobs["target.pt"], self.device))
                self.learner.steps = int(latest.step)
            log.info("trainer has no checkpoint; starting from registry version %d (step %d)", latest.version, latest.step)
        self.last_published = latest
        if latest is not None:
            self.metrics.published_version.set(latest.version)
        self.metrics.step.set(self.step)

    def _latest_version(self) -> common_pb2.ModelVersion | None:
        try:
            return self.registry.get_version(self.config.model, 0, "latest")
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def bootstrap(self) -> None:
        """restore(), then publish the current weights if the registry has no version yet."""
        self.restore()
        if self.last_published is None:
            self.publish(reason="initial")

    # -- the loop ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="trainer-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def pause(self) -> None:
        """Stops taking SGD steps after the current one (maintenance, tests); PushTargets still
        fills the buffer, so workers see back-pressure once it is full."""
        self._running.clear()
        with self._step_lock:  # wait for a step in progress
            pass

    def resume(self) -> None:
        self._running.set()

    def _run(self) -> None:
        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        attempt = 0
        while not self._stop.is_set() and not self.ready.is_set():
            try:
                self.bootstrap()
                self.ready.set()
            except Exception as e:  # registry or storage not answering yet: retry with backoff
                attempt += 1
                self.error = e
                log.warning("trainer start-up failed (attempt %d), retrying: %s", attempt, e)
                self._stop.wait(min(5.0, 0.1 * 2 ** min(attempt, 6)))
        self.error = None
        while not self._stop.is_set():
            if not self._running.wait(0.2):
                continue
            with self._step_lock:
                if self._running.is_set():
                    self.train_once(timeout_s=0.2)

    def train_once(self, timeout_s: float) -> bool:
        """One SGD step if the buffer has enough rows within ``timeout_s``; False when starved."""
        c = self.config
        t0 = time.monotonic()
        rows, waited = self.buffer.wait_and_sample(c.batch_size, c.min_buffer_rows, self.rng, timeout_s)
        self.metrics.starved.inc(waited)
        if rows is None:
            self.metrics.buffer_rows.set(len(self.buffer))
            return False
        tb = TargetBatch(*(torch.from_numpy(rows[k]).to(self.device) for k in ("images", "states", "actions", "tasks", "targets")))
        with self.lock:
            loss = self.learner.step(tb)
            self.targets.update(self.q)
            step = self.learner.steps
        self.loss = loss
        self.loss_ema = loss if np.isnan(self.loss_ema) else 0.98 * self.loss_ema + 0.02 * loss
        now = time.monotonic()
        self._step_times.append(now)
        m = self.metrics
        m.steps.inc()
        m.step.set(step)
        m.loss.set(loss)
        m.loss_ema.set(self.loss_ema)
        m.buffer_rows.set(len(self.buffer))
        m.step_seconds.observe(now - t0 - waited)
        if step % c.publish_every_steps == 0:
            try:
                self.publish(reason="periodic")
            except Exception as e:
                m.publish_errors.inc()
                log.warning("publishing step %d failed (next try at the next interval): %s", step, e)
        if step % c.checkpoint_every_steps == 0:
            try:
                self.checkpoint()
            except Exception as e:
                log.warning("checkpoint at step %d failed: %s", step, e)
        return True

    def steps_per_second(self) -> float:
        times = list(self._step_times)
        if len(times) < 2 or time.monotonic() - times[-1] > 10.0:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    # -- publishing and checkpoints ------------------------------------------------------------
    def publish(self, reason: str = "", aliases: tuple[str, ...] = ()) -> common_pb2.ModelVersion:
        """Publishes the current weights (model.pt, target.pt = Qt1, ONNX tower and head)."""
        with self._publish_lock:
            with self.lock:
                online, qt1, step = _cpu(self.q.state_dict()), _cpu(self.targets.q_t1.state_dict()), self.learner.steps
            q_cpu = QNetwork(**self.network)
            q_cpu.load_state_dict(online)
            artifacts = {"model.pt": state_bytes(online), "target.pt": state_bytes(qt1), **export_onnx_bytes(q_cpu)}
            metrics = {} if np.isnan(self.loss_ema) else {"losses/td_loss": float(self.loss_ema), "losses/last": float(self.loss)}
            self._publishes += 1
            version = self.registry.publish(
                self.config.model, step, artifacts, metrics=metrics,
                parent_version=self.last_published.version if self.last_published is not None else 0,
                aliases=aliases, tasks=self.catalogue.tasks,
                labels={"network": self.network_label, "publisher": "trainer", "reason": reason or "periodic", "run_id": self.run_id},
                publish_id=f"trainer/{self.run_id}/{self._publishes}",
            )
            self.last_published = version
            self.metrics.publishes.inc()
            self.metrics.published_version.set(version.version)
            log.info("published %s version %d at step %d (%s)", self.config.model, version.version, step, reason or "periodic")
            return version

    def checkpoint(self) -> CheckpointInfo:
        """Writes the full training state (online net, optimiser, Qt1, step) durably."""
        with self.lock:
            state = {"q": _cpu(self.q.state_dict()), "q_t1": _cpu(self.targets.q_t1.state_dict()),
                     "optimizer": _optimizer_cpu(self.learner.optimizer.state_dict()), "step": self.learner.steps,
                     "network": self.network_label, "loss_ema": float(self.loss_ema)}
        info = self.checkpoints.save(state_bytes(state), state["step"])
        self.last_checkpoint_step = info.step
        self.metrics.checkpoints.inc()
        self.metrics.checkpoint_step.set(info.step)
        log.info("checkpoint at step %d -> %s", info.step, info.uri)
        return info


def _optimizer_cpu(state: dict) -> dict:
    """A deep copy of an optimiser state_dict with its tensors on the CPU."""
    def copy(x):
        if isinstance(x, torch.Tensor):
            return x.detach().to("cpu", copy=True)
        if isinstance(x, dict):
            return {k: copy(v) for k, v in x.items()}
        if isinstance(x, list):
            return [copy(v) for v in x]
        return x
    return copy(state)
