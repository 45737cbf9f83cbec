"""A Bellman worker's computation, free of gRPC plumbing: the two target networks from the
registry, decoding TransitionBatches, and clipped double-Q targets with CEM.

- Qt1 = ``target.pt`` (the trainer's Polyak average) of the newest ``q_function`` version.
- Qt2 = ``target.pt`` of the newest version whose step <= Qt1.step - target_lag_steps, or the
  oldest version when none is that old: the lagged copy of clipped double Q.

Usage (blocking; the worker runs it in a thread)::

    nets = TargetNetworkSource(RegistryClient(address), "q_function", lag_steps=200, device="cpu")
    nets.refresh()                                      # loads new versions when there are any
    batch, meta = decode_transition_batch(msg, nets.image_size)
    targets = compute_targets(nets.current, batch, algo, seed=batch_seed("worker-a", 17))
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import zlib

import numpy as np
import torch

from mtopt.core.config import MTOptConfig
from mtopt.core.learner import TargetComputer
from mtopt.core.networks import QNetwork, network_kwargs
from mtopt.core.replay import Batch
from mtopt.episode_codec import EpisodeDecodeError, tensor_from_proto
from mtopt.model_registry.client import RegistryClient
from mtopt.robot import ACTION_DIM, STATE_DIM
from mtopt.v1 import common_pb2, log_replay_pb2

log = logging.getLogger(__name__)
TARGET_ARTIFACT = "target.pt"


class BadBatchError(ValueError):
    """A TransitionBatch whose tensors do not match the target networks (skipped, counted)."""


@dataclasses.dataclass(frozen=True)
class LoadedTargets:
    """The pair of target networks in use, with their registry versions (TargetComputer reads q_t1/q_t2)."""

    q_t1: QNetwork
    q_t2: QNetwork
    version: int
    lagged_version: int
    step: int
    lagged_step: int
    num_task_slots: int


def batch_seed(worker_id: str, sequence: int, seed: int = 0) -> int:
    """The CEM seed of one batch: reproducible from (worker, sequence, seed), distinct across workers."""
    return zlib.crc32(f"{seed}/{worker_id}/{sequence}".encode())


def pick_lagged(versions: list[common_pb2.ModelVersion], newest: common_pb2.ModelVersion, lag_steps: int) -> common_pb2.ModelVersion:
    """Qt2's version: the newest with step <= newest.step - lag_steps, else the oldest."""
    candidates = [v for v in versions if v.version <= newest.version and v.step <= newest.step - lag_steps]
    if candidates:
        return max(candidates, key=lambda v: (v.step, v.version))
    return min(versions, key=lambda v: v.version) if versions else newest


class TargetNetworkSource:
    """Keeps Qt1/Qt2 current from the registry (blocking calls; one thread at a time)."""

    def __init__(self, registry: RegistryClient, model: str, lag_steps: int, device: torch.device | str = "cpu", cache: int = 4):
        self.registry, self.model, self.lag_steps, self.device = registry, model, lag_steps, torch.device(device)
        self.current: LoadedTargets | None = None
        self._cache: "collections.OrderedDict[int, QNetwork]" = collections.OrderedDict()
        self._cache_size = cache

    def refresh(self) -> bool:
        """Loads the newest version (and its lagged partner) if Qt1 is not it yet; True if it
        changed. Raises grpc.RpcError (NOT_FOUND while the registry has no version yet)."""
        newest = self.registry.get_version(self.model, 0, "latest")
        if self.current is not None and self.current.version == newest.version:
            return False
        lagged = pick_lagged(self.registry.list_versions(self.model), newest, self.lag_steps)
        q_t1, q_t2 = self._network(newest), self._network(lagged)
        self.current = LoadedTargets(q_t1, q_t2, newest.version, lagged.version, newest.step, lagged.step, q_t1.num_task_slots)
        log.info("target networks: Qt1 = version %d (step %d), Qt2 = version %d (step %d)",
                 newest.version, newest.step, lagged.version, lagged.step)
        return True

    def _network(self, version: common_pb2.ModelVersion) -> QNetwork:
        if version.version in self._cache:
            self._cache.move_to_end(version.version)
            return self._cache[version.version]
        try:
            kwargs = network_kwargs(version.labels["network"])
        except (KeyError, ValueError):
            raise BadBatchError(f"{self.model} version {version.version} has no valid labels['network']; it was not published by the trainer") from None
        artifact = next((a for a in version.artifacts if a.name == TARGET_ARTIFACT), None)
        if artifact is None:
            raise BadBatchError(f"{self.model} version {version.version} has no {TARGET_ARTIFACT}")
        data = self.registry.download(self.model, version.version, artifact)
        net = QNetwork(**kwargs)
        net.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
        net = net.to(self.device).eval().requires_grad_(False)
        self._cache[version.version] = net
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return net


def decode_transition_batch(msg: log_replay_pb2.TransitionBatch, image_size: int, num_task_slots: int) -> Batch:
    """A TransitionBatch as a numpy `Batch`, after checking every dtype and shape."""
    if len(msg.rewards.shape) != 1 or msg.rewards.shape[0] < 1:
        raise BadBatchError(f"rewards must be float32 [B] with B >= 1, got shape {list(msg.rewards.shape)}")
    b = int(msg.rewards.shape[0])
    img = (b, image_size, image_size, 3)
    spec = {"images": ("images", np.uint8, img), "states": ("state_features", np.float32, (b, STATE_DIM)),
            "actions": ("actions", np.float32, (b, ACTION_DIM)), "next_images": ("next_images", np.uint8, img),
            "next_states": ("next_state_features", np.float32, (b, STATE_DIM)), "tasks": ("task_indices", np.int64, (b,)),
            "rewards": ("rewards", np.float32, (b,)), "dones": ("dones", np.float32, (b,))}
    try:
        # copies: the wire buffers are read-only and torch wants writable arrays
        a = {k: tensor_from_proto(getattr(msg, f), name=f, dtype=dt, shape=s).copy() for k, (f, dt, s) in spec.items()}
        successes = (tensor_from_proto(msg.successes, name="successes", dtype=np.bool_, shape=(b,))
                     if msg.HasField("successes") else np.zeros(b, dtype=bool))
    except EpisodeDecodeError as e:
        raise BadBatchError(str(e)) from None
    if a["tasks"].min() < 0 or a["tasks"].max() >= num_task_slots:
        raise BadBatchError(f"task_indices must lie in [0, {num_task_slots}) (the Q-network's task slots)")
    if not all(np.all(np.isfinite(a[k])) for k in ("states", "actions", "next_states", "rewards", "dones")):
        raise BadBatchError("the batch holds NaN or infinite values")
    return Batch(successes=successes, episode_ids=list(msg.episode_ids), **a)


def compute_targets(nets: LoadedTargets, batch: Batch, algo: MTOptConfig, seed: int, device: torch.device | str = "cpu"):
    """`mtopt.core.learner.TargetBatch` of clipped double-Q targets (CEM on Qt1, min(Qt1, Qt2))."""
    return TargetComputer(nets, algo, seed=seed, device=str(device))(batch)
