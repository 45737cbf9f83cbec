"""Robot agent settings, read from MTOPT_AGENT_* environment variables.

Besides the prefixed variables, the task catalogue comes from MTOPT_TASKS (a YAML file; unset:
the built-in catalogue), exactly as for the services, so a task's one-hot slot means the same
thing on the robot and in the trainer. ``python -m mtopt_agent --help-config`` prints every
variable with its default.

Usage::

    config = load_config()                         # ConfigError names the variable to fix
    config = load_config(robot_id="sim-3")         # overrides win over the environment
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from pathlib import Path
from typing import Mapping

from mtopt.episode_codec import ID_PATTERN, IMAGE_FORMATS
from mtopt.serving.config import check, from_env

PREFIX = "MTOPT_AGENT_"
WEIGHTS_MODES = ("watch", "poll")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything one robot agent needs to start; see each field's docstring."""

    robot_id: str = ""
    """This robot's id (1-128 characters of [A-Za-z0-9._-]); it names the robot in episodes,
    pins and metrics. Empty: the host name (the pod name on Kubernetes)."""
    robot: str = "sim"
    """Which robot to drive: "sim" (the built-in tabletop simulator) or "package.module:factory",
    a callable that takes this AgentConfig and returns a `mtopt.robot.Robot`."""
    store_address: str = "localhost:50051"
    """gRPC target of episode_store, e.g. dns:///episode-store:50051."""
    registry_address: str = ""
    """gRPC target of model_registry; empty: no registry (the scripted bootstrap policy runs,
    or the ONNX model in MTOPT_AGENT_MODEL_DIR)."""
    model: str = "q_function"
    """Registry model the robot runs."""
    model_alias: str = ""
    """Alias the robot follows when it is not pinned, e.g. stable or latest; empty: the
    registry's default alias."""
    weights_mode: str = "watch"
    """How new weights are found: watch (a WatchVersions stream, no polling; falls back to
    poll if the registry lacks it) or poll (Resolve every MTOPT_AGENT_POLL_INTERVAL_S)."""
    poll_interval_s: float = 5.0
    """Seconds between Resolve calls in poll mode (and between reconnects of a broken watch)."""
    min_model_step: int = 0
    """Run only versions trained for at least this many steps; until one appears the robot keeps
    the scripted bootstrap policy (so early data is not collected by an untrained network)."""
    model_dir: Path | None = None
    """Directory with q_tower.onnx and q_head.onnx to run without a registry (offline robots,
    demos); ignored when MTOPT_AGENT_REGISTRY_ADDRESS is set."""
    spool_dir: Path = Path("spool")
    """Local directory that holds finished episodes until the store acknowledges them; put it
    on persistent storage so a restart re-uploads what was pending."""
    spool_max_bytes: int = 1 << 30
    """High-water mark of the spool: while pending (and rejected) episodes take this many bytes
    or more, collection pauses (nothing is dropped) until uploads make room."""
    spool_fsync: bool = True
    """fsync every spooled episode (and the directory) before it counts as written."""
    epsilon: float = 0.2
    """Probability of a uniformly random action per step in episodes run by the learned policy."""
    scripted_fraction: float = 0.1
    """Share of episodes run by the scripted bootstrap policy once a learned policy exists
    (before that, every episode is scripted)."""
    sequence_probability: float = 0.5
    """After an episode that ends holding an object (state feature height), the chance to
    continue without a reset with a task of MTOPT_AGENT_SEQUENCE_SKILLS (pick, then place)."""
    sequence_skills: tuple[str, ...] = ("place", "present")
    """Skills whose tasks may follow a pick without a reset (comma separated)."""
    task_names: tuple[str, ...] = ()
    """Tasks this robot collects (comma separated); empty: every task of the catalogue."""
    tasks: Path | None = None
    """Task catalogue YAML (from MTOPT_TASKS); unset: the built-in catalogue."""
    seed: int | None = None
    """Seed of the simulator, task choice and exploration; unset: random. Episode ids are
    always random UUIDs, so a restarted robot never reuses one."""
    max_steps: int = 4
    """Longest episode in steps; an episode ends earlier when the policy chooses TERMINATE."""
    episode_period_s: float = 0.0
    """Shortest time per episode in seconds: paces a simulated robot like a real one (a real
    robot paces itself; 0: as fast as the CPU allows)."""
    max_episodes: int = 0
    """Stop after this many episodes (then upload what is pending and exit); 0: run until SIGTERM."""
    image_encoding: str = "png"
    """How camera images are encoded in episodes: png (lossless) or jpeg (smaller)."""
    jpeg_quality: int = 95
    """JPEG quality 1-100 when MTOPT_AGENT_IMAGE_ENCODING=jpeg."""
    cem_iterations: int = 2
    """CEM iterations of the learned policy."""
    cem_samples: int = 64
    """CEM samples per iteration."""
    cem_elites: int = 6
    """CEM elites refitted per iteration."""
    metrics_port: int = 9100
    """Port of the Prometheus /metrics HTTP server (0 picks a free port, -1 disables it)."""
    metrics_host: str = "0.0.0.0"
    """Address the metrics server binds."""
    rpc_timeout_s: float = 10.0
    """Deadline of unary registry calls (Resolve, GetVersion)."""
    upload_timeout_s: float = 30.0
    """Deadline of one upload, plus one second per MiB of episode."""
    upload_chunk_bytes: int = 1 << 20
    """Size of the data chunks of an upload stream."""
    upload_initial_backoff_s: float = 0.2
    """Wait after the first failed upload attempt; doubles per failure, with jitter."""
    upload_max_backoff_s: float = 10.0
    """Longest wait between upload attempts (also caps the channel's reconnect backoff)."""
    upload_max_attempts: int = 20
    """Attempts at one episode for errors that are neither transient (UNAVAILABLE,
    DEADLINE_EXCEEDED, ...: retried for as long as it takes) nor a rejection
    (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, ...: moved to rejected/ at once); after that the
    episode is moved to rejected/ with the last error."""
    download_timeout_s: float = 60.0
    """Deadline of one artifact download from the registry."""
    drain_s: float = 10.0
    """On SIGTERM, after the current episode is spooled: how long pending uploads may run
    before the agent exits (what is left stays in the spool for the next start)."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(not self.robot_id or bool(ID_PATTERN.match(self.robot_id)), v("robot_id"),
              f"must be 1-128 characters of [A-Za-z0-9._-] starting with a letter or digit, got {self.robot_id!r}")
        check(self.robot == "sim" or re.fullmatch(r"[\w.]+:[\w.]+", self.robot) is not None, v("robot"),
              f"must be sim or package.module:factory, got {self.robot!r}")
        check(bool(self.store_address), v("store_address"), "must be the gRPC target of episode_store, e.g. episode-store:50051")
        check(bool(self.model), v("model"), "must name the registry model, e.g. q_function")
        check(self.weights_mode in WEIGHTS_MODES, v("weights_mode"), f"must be one of {', '.join(WEIGHTS_MODES)}, got {self.weights_mode!r}")
        check(self.episode_period_s >= 0, v("episode_period_s"), f"must be >= 0, got {self.episode_period_s}")
        check(self.min_model_step >= 0, v("min_model_step"), f"must be >= 0, got {self.min_model_step}")
        check(self.poll_interval_s > 0, v("poll_interval_s"), "must be > 0")
        check(self.spool_max_bytes > 0, v("spool_max_bytes"), f"must be > 0, got {self.spool_max_bytes}")
        check(0.0 <= self.epsilon <= 1.0, v("epsilon"), f"must lie in [0, 1], got {self.epsilon}")
        check(0.0 <= self.scripted_fraction <= 1.0, v("scripted_fraction"), f"must lie in [0, 1], got {self.scripted_fraction}")
        check(0.0 <= self.sequence_probability <= 1.0, v("sequence_probability"), f"must lie in [0, 1], got {self.sequence_probability}")
        check(self.max_steps >= 1, v("max_steps"), f"must be >= 1, got {self.max_steps}")
        check(self.max_episodes >= 0, v("max_episodes"), f"must be >= 0 (0: run until SIGTERM), got {self.max_episodes}")
        check(self.image_encoding in IMAGE_FORMATS, v("image_encoding"), f"must be one of {', '.join(IMAGE_FORMATS)}, got {self.image_encoding!r}")
        check(1 <= self.jpeg_quality <= 100, v("jpeg_quality"), f"must lie in [1, 100], got {self.jpeg_quality}")
        check(self.cem_iterations >= 1, v("cem_iterations"), "must be >= 1")
        check(1 <= self.cem_elites <= self.cem_samples, v("cem_elites"), f"must lie in [1, MTOPT_AGENT_CEM_SAMPLES={self.cem_samples}]")
        check(-1 <= self.metrics_port <= 65535, v("metrics_port"), f"must be a port number, 0 (free port) or -1 (off), got {self.metrics_port}")
        for name in ("rpc_timeout_s", "upload_timeout_s", "upload_initial_backoff_s", "upload_max_backoff_s", "download_timeout_s"):
            check(getattr(self, name) > 0, v(name), f"must be > 0, got {getattr(self, name)}")
        check(self.upload_max_backoff_s >= self.upload_initial_backoff_s, v("upload_max_backoff_s"),
              f"must be >= MTOPT_AGENT_UPLOAD_INITIAL_BACKOFF_S={self.upload_initial_backoff_s}")
        check(self.upload_chunk_bytes >= 1024, v("upload_chunk_bytes"), "must be >= 1024")
        check(self.upload_max_attempts >= 1, v("upload_max_attempts"), "must be >= 1")
        check(self.drain_s >= 0, v("drain_s"), "must be >= 0")
        if self.tasks is not None:
            check(self.tasks.is_file(), "MTOPT_TASKS", f"must name an existing task catalogue YAML file, got {self.tasks}")
        if self.model_dir is not None and not self.registry_address:
            for name in ("q_tower.onnx", "q_head.onnx"):
                check((self.model_dir / name).is_file(), v("model_dir"), f"must hold {name}; {self.model_dir / name} does not exist")

    @property
    def metrics_enabled(self) -> bool:
        return self.metrics_port >= 0


def default_robot_id() -> str:
    """The host name made into a valid robot id."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:128].lstrip("._-")
    return name or "robot"


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> AgentConfig:
    """AgentConfig from the environment (ConfigError names the variable to fix)."""
    env = os.environ if environ is None else environ
    extra = {}
    if env.get("MTOPT_TASKS"):
        extra["tasks"] = Path(env["MTOPT_TASKS"]).expanduser()
    config = from_env(AgentConfig, PREFIX, env, **(extra | overrides))
    if not config.robot_id:
        config = dataclasses.replace(config, robot_id=default_robot_id())
    return config
