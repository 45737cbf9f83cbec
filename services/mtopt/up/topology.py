"""What `mtopt up` runs: one process per service, N Bellman workers, N simulated robots and the
simulated labeller (long-running with continuous labelling, else it exits after the first SD
version), each configured with the same environment variables the Helm chart sets.

`build_topology(config, ports)` returns the processes in start order; nothing here starts them
(see `supervisor.py`). Addresses are loopback ports instead of Kubernetes Service names.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from mtopt.serving.ports import unused_port

CORE_SERVICES = ("model_registry", "episode_store", "success_detector", "trainer", "log_replay")
"""The singleton services, in start order (each one's dependencies come before it)."""

DEFAULT_PORTS = {
    "episode_store": 50051, "success_detector": 50052, "log_replay": 50053, "bellman": 50054,
    "model_registry": 50055, "trainer": 50056,
}


@dataclasses.dataclass(frozen=True)
class UpConfig:
    """Everything `mtopt up` needs; the CLI fills it from flags."""

    data_dir: Path = Path("mtopt-data")
    """Root of every local directory: episodes/, models/, success_detector/, log_replay/,
    trainer/, spool/<robot>/ and logs/."""
    robots: int = 4
    bellman_workers: int = 2
    duration_s: float = 0.0
    """Stop after this many seconds (0: run until Ctrl-C)."""
    train_steps: int = 0
    """Also stop once the trainer has done this many steps (0: no such limit)."""
    eval_s: float = 0.0
    """After learning stops, run the robots on the final version this long and report the success
    rates of that window (0: the rates of the run's last minutes)."""
    eval_epsilon: float = 0.0
    """Random-action probability per step while evaluating: the robots restart for the evaluation
    with it and without scripted episodes, so the window measures the final policy itself
    (``epsilon`` is exploration for collecting data)."""
    s3_endpoint: str = ""
    """host:port of MinIO/S3; empty: the embedded local-directory backends."""
    s3_bucket: str = "mtopt"
    s3_secure: bool = False
    tasks: tuple[str, ...] = ()
    """Tasks the robots practise (MTOPT_AGENT_TASK_NAMES); empty: every task."""
    fixed_ports: bool = False
    """Use the chart's default gRPC ports (50051-50056) instead of free ones."""
    seed: int = 0
    min_model_step: int = 100
    """Robots run the scripted policy until a Q-function version trained this many steps appears."""
    publish_every_steps: int = 50
    sd_examples_per_task: int = 200
    sd_min_episodes: int = 600
    """Stored episodes the labeller waits for before it labels examples and trains the SD."""
    sd_train_steps: int = 600
    sd_refresh_every_s: float = 60.0
    """Continuous labelling: every this many seconds the labeller labels on-policy final images and
    trains a new SD version (0: it trains the first version only, then exits)."""
    sd_refresh_labels: int = 10
    """Labels per task in each continuous-labelling round."""
    sd_refresh_share: float = 0.5
    """Share of every training batch of a round's SD version drawn from the rounds' on-policy labels."""
    epsilon: float = 0.2
    episode_period_s: float = 0.5
    """Shortest time per simulated episode (a real robot's pace; 0: flat out)."""
    scripted_fraction: float = 0.1
    threads_per_process: int = 1
    """torch/OpenMP threads of each process (a local run packs many processes on few cores)."""
    grace_s: float = 10.0

    @property
    def s3(self) -> bool:
        return bool(self.s3_endpoint)


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """One process to run: name, argv, environment additions, and how to tell it is up."""

    name: str
    role: str
    """Service name (episode_store, ..., bellman), "robot" or "labeller"."""
    argv: tuple[str, ...]
    env: dict[str, str]
    grpc_port: int | None
    metrics_port: int
    health_service: str = ""
    """grpc.health.v1 service name checked before the next process starts ("" = the server)."""
    exits: bool = False
    """True for a process that finishes its job and exits 0 (the labeller without continuous labelling)."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def allocate_ports(config: UpConfig) -> dict[str, int]:
    """gRPC and metrics ports of every process, keyed "<name>" and "<name>/metrics"."""
    names = list(CORE_SERVICES) + [f"bellman-{i}" for i in range(config.bellman_workers)]
    names += [f"sim-{i}" for i in range(config.robots)] + ["labeller"]
    ports: dict[str, int] = {}
    for name in names:
        if name in CORE_SERVICES:
            ports[name] = DEFAULT_PORTS[name] if config.fixed_ports else unused_port()
        elif name.startswith("bellman-"):
            i = int(name.split("-")[1])
            ports[name] = DEFAULT_PORTS["bellman"] + 10 * i if config.fixed_ports else unused_port()
        ports[f"{name}/metrics"] = unused_port()
    return ports


def _storage_env(prefix: str, config: UpConfig, directory: Path) -> dict[str, str]:
    if config.s3:
        return {f"{prefix}BACKEND": "s3", f"{prefix}S3_ENDPOINT": config.s3_endpoint,
                f"{prefix}S3_BUCKET": config.s3_bucket, f"{prefix}S3_SECURE": str(config.s3_secure).lower()}
    return {f"{prefix}BACKEND": "local", f"{prefix}DIRECTORY": str(directory)}


def _common_env(config: UpConfig) -> dict[str, str]:
    n = str(config.threads_per_process)
    env = {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "MTOPT_THREADS": n, "PYTHONUNBUFFERED": "1"}
    if os.environ.get("MTOPT_TASKS"):
        env["MTOPT_TASKS"] = os.environ["MTOPT_TASKS"]
    return env


def build_topology(config: UpConfig, ports: dict[str, int]) -> list[ProcessSpec]:
    """The processes of a local run in start order, with the chart's environment variables."""
    d = config.data_dir.resolve()
    py = sys.executable
    addr = {name: f"127.0.0.1:{ports[name]}" for name in CORE_SERVICES}
    common = _common_env(config)
    specs: list[ProcessSpec] = []

    def service(name: str, prefix: str, env: dict[str, str], grpc_name: str) -> ProcessSpec:
        base = {f"{prefix}PORT": str(ports[name]), f"{prefix}HOST": "127.0.0.1",
                f"{prefix}METRICS_PORT": str(ports[f"{name}/metrics"]), f"{prefix}GRACE_S": str(config.grace_s)}
        return ProcessSpec(name, name.split("-")[0] if name.startswith("bellman") else name,
                           (py, "-m", f"mtopt.{name.split('-')[0]}"), common | base | env, ports[name],
                           ports[f"{name}/metrics"], health_service=grpc_name)

    specs.append(service("model_registry", "MTOPT_MODEL_REGISTRY_", _storage_env("MTOPT_MODEL_REGISTRY_", config, d / "models") | {
        # robots and Bellman workers follow the newest weights in a local run
        "MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS": "latest",
    }, "mtopt.v1.ModelRegistry"))
    specs.append(service("episode_store", "MTOPT_EPISODE_STORE_", _storage_env("MTOPT_EPISODE_STORE_", config, d / "episodes") | {
        "MTOPT_EPISODE_STORE_IMAGE_SHAPE": "64,64,3",
    }, "mtopt.v1.EpisodeStore"))
    specs.append(service("success_detector", "MTOPT_SUCCESS_DETECTOR_",
                         _storage_env("MTOPT_SUCCESS_DETECTOR_", config, d / "success_detector") | {
                             "MTOPT_SUCCESS_DETECTOR_REGISTRY_ADDRESS": addr["model_registry"],
                         }, "mtopt.v1.SuccessDetector"))
    specs.append(service("trainer", "MTOPT_TRAINER_", _storage_env("MTOPT_TRAINER_", config, d / "trainer") | {
        "MTOPT_TRAINER_REGISTRY_ADDRESS": addr["model_registry"],
        "MTOPT_TRAINER_PUBLISH_EVERY_STEPS": str(config.publish_every_steps),
        "MTOPT_TRAINER_THREADS": str(config.threads_per_process),
    }, "mtopt.v1.Trainer"))
    specs.append(service("log_replay", "MTOPT_LOG_REPLAY_", _storage_env("MTOPT_LOG_REPLAY_", config, d / "log_replay") | {
        "MTOPT_LOG_REPLAY_STORE_ADDRESS": addr["episode_store"],
        "MTOPT_LOG_REPLAY_SUCCESS_DETECTOR_ADDRESS": addr["success_detector"],
    }, "mtopt.v1.LogReplay"))
    for i in range(config.bellman_workers):
        name = f"bellman-{i}"
        specs.append(service(name, "MTOPT_BELLMAN_", {
            "MTOPT_BELLMAN_WORKER_ID": name,
            "MTOPT_BELLMAN_LOG_REPLAY_ADDRESS": addr["log_replay"],
            "MTOPT_BELLMAN_TRAINER_ADDRESS": addr["trainer"],
            "MTOPT_BELLMAN_REGISTRY_ADDRESS": addr["model_registry"],
            "MTOPT_BELLMAN_THREADS": str(config.threads_per_process),
        }, "mtopt.v1.Bellman"))
    for i in range(config.robots):
        name = f"sim-{i}"
        env = common | {
            "MTOPT_AGENT_ROBOT_ID": name, "MTOPT_AGENT_ROBOT": "sim",
            "MTOPT_AGENT_STORE_ADDRESS": addr["episode_store"], "MTOPT_AGENT_REGISTRY_ADDRESS": addr["model_registry"],
            "MTOPT_AGENT_MODEL_ALIAS": "latest", "MTOPT_AGENT_SPOOL_DIR": str(d / "spool" / name),
            "MTOPT_AGENT_METRICS_PORT": str(ports[f"{name}/metrics"]), "MTOPT_AGENT_METRICS_HOST": "127.0.0.1",
            "MTOPT_AGENT_SEED": str(config.seed * 1000 + i), "MTOPT_AGENT_MIN_MODEL_STEP": str(config.min_model_step),
            "MTOPT_AGENT_EPSILON": str(config.epsilon),
            "MTOPT_AGENT_EPISODE_PERIOD_S": str(config.episode_period_s), "MTOPT_AGENT_SCRIPTED_FRACTION": str(config.scripted_fraction),
        }
        if config.tasks:
            env["MTOPT_AGENT_TASK_NAMES"] = ",".join(config.tasks)
        specs.append(ProcessSpec(name, "robot", (py, "-m", "mtopt_agent"), env, None, ports[f"{name}/metrics"]))
    specs.append(ProcessSpec("labeller", "labeller", (py, "-m", "mtopt.sim_labeller"), common | {
        "MTOPT_SIM_LABELLER_STORE_ADDRESS": addr["episode_store"],
        "MTOPT_SIM_LABELLER_SUCCESS_DETECTOR_ADDRESS": addr["success_detector"],
        "MTOPT_SIM_LABELLER_EXAMPLES_PER_TASK": str(config.sd_examples_per_task),
        "MTOPT_SIM_LABELLER_MIN_EPISODES": str(config.sd_min_episodes),
        "MTOPT_SIM_LABELLER_TRAIN_STEPS": str(config.sd_train_steps),
        "MTOPT_SIM_LABELLER_METRICS_PORT": str(ports["labeller/metrics"]),
        "MTOPT_SIM_LABELLER_SEED": str(config.seed),
        "MTOPT_SIM_LABELLER_REFRESH_EVERY_S": str(config.sd_refresh_every_s),
        "MTOPT_SIM_LABELLER_REFRESH_LABELS_PER_TASK": str(config.sd_refresh_labels),
        "MTOPT_SIM_LABELLER_REFRESH_FOCUS_SHARE": str(config.sd_refresh_share),
    }, None, ports["labeller/metrics"], exits=config.sd_refresh_every_s <= 0))
    return specs


def evaluation_spec(spec: ProcessSpec, config: UpConfig) -> ProcessSpec:
    """A robot's process for the evaluation window: the learned policy on every episode, with
    ``eval_epsilon`` exploration."""
    return dataclasses.replace(spec, env=spec.env | {
        "MTOPT_AGENT_EPSILON": str(config.eval_epsilon), "MTOPT_AGENT_SCRIPTED_FRACTION": "0",
    })


CHART_COMPONENTS = {"robot": "sim-robot", "labeller": "sim-labeller"}
"""Roles whose chart component name (helm/mtopt) is not the role with '-' for '_'."""


def prometheus_targets(specs: list[ProcessSpec]) -> list[dict]:
    """Every process's metrics endpoint in Prometheus file_sd format. job is what the chart's
    ServiceMonitor gives the same process (its Service name for release "mtopt":
    mtopt-episode-store, ..., mtopt-sim-robot); instance is host:port as in a cluster."""
    return [{"targets": [f"127.0.0.1:{s.metrics_port}"],
             "labels": {"job": "mtopt-" + CHART_COMPONENTS.get(s.role, s.role.replace("_", "-")),
                        "component": s.role, "process": s.name}}
            for s in specs]
