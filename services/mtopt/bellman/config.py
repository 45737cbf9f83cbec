"""bellman settings, read from MTOPT_BELLMAN_* environment variables.

``python -m mtopt.bellman --help-config`` prints every variable.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Mapping

from mtopt.core.config import MTOptConfig
from mtopt.serving.config import check, from_env

PREFIX = "MTOPT_BELLMAN_"
DEVICES = ("cpu", "cuda", "auto")
_ALGO = MTOptConfig()


@dataclasses.dataclass(frozen=True)
class BellmanConfig:
    """Everything a Bellman worker needs to start; see each field's docstring."""

    port: int = 50054
    """gRPC port of the status service (0 picks a free port)."""
    host: str = "[::]"
    """Address to bind, e.g. [::] for all interfaces or 127.0.0.1."""
    metrics_port: int = 9090
    """Port of the Prometheus /metrics HTTP server (0 picks a free port)."""
    log_replay_address: str = "localhost:50053"
    """gRPC target of log_replay, e.g. dns:///mtopt-log-replay:50053."""
    trainer_address: str = "localhost:50056"
    """gRPC target of the trainer, e.g. dns:///mtopt-trainer:50056."""
    registry_address: str = "localhost:50055"
    """gRPC target of model_registry, e.g. dns:///mtopt-model-registry:50055."""
    model: str = "q_function"
    """Registry model whose target.pt artifacts are the target networks."""
    worker_id: str = ""
    """This worker's name in batch ids, logs and metrics; empty: the host name (the pod name on Kubernetes)."""
    batch_size: int = 128
    """Transitions per SampleBatches batch (and rows per pushed TargetBatch)."""
    tasks: tuple[str, ...] = ()
    """Restrict sampling to these task names (comma separated); empty: every task with data."""
    gamma: float = _ALGO.gamma
    """Discount factor."""
    cem_iterations: int = _ALGO.cem_iterations
    """CEM iterations of the argmax over next actions."""
    cem_samples: int = _ALGO.cem_samples
    """CEM samples per iteration."""
    cem_elites: int = _ALGO.cem_elites
    """CEM elites refitted per iteration."""
    target_lag_steps: int = _ALGO.target_lag_steps
    """Qt2 is the newest version whose step <= Qt1's step - this (else the oldest version)."""
    registry_poll_s: float = 2.0
    """How often (between batches) to look for a new latest version."""
    call_timeout_s: float = 30.0
    """Deadline of each unary call (PushTargets, registry lookups)."""
    max_backoff_s: float = 5.0
    """Longest wait between reconnection attempts."""
    device: str = "auto"
    """Torch device: cpu, cuda, or auto (cuda when available)."""
    threads: int = 0
    """torch.set_num_threads for the process; 0 leaves torch's default."""
    seed: int = 0
    """Mixed into every batch's CEM seed (each batch's seed also depends on worker_id and its sequence number)."""
    grace_s: float = 5.0
    """On SIGTERM: how long the batch in progress may take to be pushed."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(0 <= self.port <= 65535, v("port"), f"must be a port number in [0, 65535], got {self.port}")
        check(0 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number in [0, 65535], got {self.metrics_port}")
        check(bool(self.trainer_address), v("trainer_address"), "must be the gRPC target of the trainer, e.g. localhost:50056")
        check(bool(self.registry_address), v("registry_address"), "must be the gRPC target of model_registry, e.g. localhost:50055")
        check(bool(self.model), v("model"), "must name the registry model, e.g. q_function")
        check(len(self.worker_id) <= 100 and "/" not in self.worker_id, v("worker_id"), "must be at most 100 characters without '/'")
        check(self.batch_size >= 1, v("batch_size"), "must be >= 1")
        check(0 < self.gamma <= 1, v("gamma"), "must lie in (0, 1]")
        check(self.cem_iterations >= 1, v("cem_iterations"), "must be >= 1")
        check(1 <= self.cem_elites <= self.cem_samples, v("cem_elites"), f"must lie in [1, {v('cem_samples')}={self.cem_samples}]")
        check(self.target_lag_steps >= 0, v("target_lag_steps"), "must be >= 0")
        check(self.registry_poll_s > 0, v("registry_poll_s"), "must be > 0")
        check(self.call_timeout_s > 0, v("call_timeout_s"), "must be > 0")
        check(self.max_backoff_s > 0, v("max_backoff_s"), "must be > 0")
        check(self.device in DEVICES, v("device"), f"must be one of {', '.join(DEVICES)}, got {self.device!r}")
        check(self.threads >= 0, v("threads"), "must be >= 0")
        check(self.grace_s >= 0, v("grace_s"), "must be >= 0")

    @property
    def worker_name(self) -> str:
        """worker_id, or the host name when it is empty."""
        return self.worker_id or socket.gethostname().replace("/", "-")[:100]

    def algo(self) -> MTOptConfig:
        """The target hyperparameters as the core's MTOptConfig."""
        return dataclasses.replace(_ALGO, gamma=self.gamma, cem_iterations=self.cem_iterations, cem_samples=self.cem_samples,
                                   cem_elites=self.cem_elites, target_lag_steps=max(self.target_lag_steps, 1))


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> BellmanConfig:
    """BellmanConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    return from_env(BellmanConfig, PREFIX, env, **overrides)
