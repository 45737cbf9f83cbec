"""Benchmark: time from a model_registry publish until 50 robot agents run the new version.

Starts a real model_registry as its own process (`python -m mtopt.model_registry`, local-directory
backend with fsync, configured by environment variables) and the robot agents' real
weight-following component, `mtopt_agent.weights.RegistryParameterSource` in `watch` mode
following alias `latest`, with the agent runtime's defaults: the ONNX CEM policy factory and a
probe (one CEM action on a real simulator observation) before a version is offered. The agents
run in `--procs` worker processes (this script with `--worker`), `--agents` in all, so they do
not share one interpreter lock; each reports, for every version, when its RESOLVED event
arrived (`notified`) and when `latest()` returned it (`loaded`: downloaded, sha256-checked,
ONNX Runtime sessions built, probe run).

The artifacts are real: `mtopt.core.export.export_onnx_bytes` of a default-size
`QNetwork(catalogue.num_slots, 64, channels=32)`, a fresh random init per publish, published
like the trainer publishes (`q_tower.onnx`, `q_head.onnx`, `model.pt`, labels["network"], tasks).

Latency per (agent, publish) = `loaded` - the moment the publish call **started** (so it
includes the publish upload itself; `*_from_return_s` count from its return). Publishes are
`--publishes` apart, each after every agent has the previous one.

value = p99 over all (agent, publish) pairs with `--agents` agents; baseline = p99 of the same
measurement with a single agent in the same run (ratio = value / baseline: the cost of fan-out
to many agents on this machine). `notify_p99_s` is the registry's watch latency alone (publish
start -> RESOLVED received). Target: p99 <= 1 s. All processes share the machine's cores: 50
agents loading ONNX on 2 cores is far more CPU per core than 50 robots have.

    python bench/propagation.py [--quick] [--agents 50] [--procs 5] [--publishes 8]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import queue  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from _stack import ServiceProcess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET_P99_S = 1.0
MODEL = "q_function"


# -- agent worker process --------------------------------------------------------------------------
def worker(address: str, first: int, count: int) -> None:
    """Runs ``count`` parameter sources; prints one JSON line per loaded version (times: time.time())."""
    from mtopt.robot import canonical_action
    from mtopt.serving.client import make_channel
    from mtopt.sim import TabletopSim
    from mtopt.tasks import TaskCatalogue
    from mtopt.v1 import model_registry_pb2_grpc
    from mtopt_agent.weights import RegistryParameterSource, onnx_policy_factory

    catalogue = TaskCatalogue.load()
    probe_obs, probe_task = TabletopSim(seed=first).observe(), catalogue.tasks[0].index
    out_lock = threading.Lock()

    def emit(**record) -> None:
        with out_lock:
            print(json.dumps(record), flush=True)

    class TimedSource(RegistryParameterSource):
        """Records when each RESOLVED event arrives and when its version is ready."""

        def _follow(self, version, how):
            if version.version > 0 and (self._latest is None or self._latest.version != version.version):
                notified = time.time()
                super()._follow(version, how)
                latest = self.latest()
                if latest is not None and latest.version == version.version:
                    emit(robot=self.robot_id, version=int(version.version), notified=notified, loaded=time.time())
            else:
                super()._follow(version, how)

    channels, sources = [], []
    for i in range(first, first + count):
        channel = make_channel(address, default_timeout_s=10.0)  # one connection per robot, as on a fleet
        channels.append(channel)

        def probe(policy) -> None:
            canonical_action(policy(probe_obs, probe_task))

        sources.append(TimedSource(model_registry_pb2_grpc.ModelRegistryStub(channel), robot_id=f"robot-{i}", alias="latest",
                                   policy_factory=onnx_policy_factory(seed=i), catalogue=catalogue, probe=probe))
    for s in sources:
        s.start()
    emit(ready=count)
    sys.stdin.read()  # until the parent closes our stdin
    for s in sources:
        s.close()
    for c in channels:
        c.close()


# -- parent --------------------------------------------------------------------------------------
@contextlib.contextmanager
def run_registry(directory: Path, log_path: Path):
    """model_registry as its own process, ready when its health says SERVING."""
    proc = ServiceProcess("model_registry", "model_registry", {
        "MTOPT_MODEL_REGISTRY_BACKEND": "local", "MTOPT_MODEL_REGISTRY_DIRECTORY": str(directory),
    }, log_path)
    try:
        proc.wait_ready(60)
        yield proc.address
    finally:
        proc.stop()


class Agents:
    """Worker processes running ``total`` parameter sources; collects their JSON lines."""

    def __init__(self, address: str, total: int, procs: int, first_robot: int):
        self.events: queue.Queue = queue.Queue()
        self.procs = []
        per = [total // procs + (k < total % procs) for k in range(procs)]
        start = first_robot
        for n in per:
            if n == 0:
                continue
            p = subprocess.Popen([sys.executable, __file__, "--worker", address, str(start), str(n)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, args=(p,), daemon=True).start()
            self.procs.append(p)
            start += n
        self.total = total

    def _read(self, p: subprocess.Popen) -> None:
        for line in p.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait_for(self, version: int, timeout: float) -> dict[str, dict]:
        """{robot: event} of the agents that loaded ``version`` within ``timeout``."""
        got: dict[str, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < self.total:
            try:
                e = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if e.get("version") == version:
                got[e["robot"]] = e
        return got

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def make_artifacts(catalogue, seed: int) -> tuple[dict[str, bytes], dict[str, str]]:
    """What the trainer publishes: ONNX export, online weights, and the network kwargs label."""
    import torch

    from mtopt.core.config import MTOptConfig
    from mtopt.core.export import export_onnx_bytes
    from mtopt.core.networks import QNetwork

    torch.manual_seed(seed)
    kwargs = {"num_task_slots": catalogue.num_slots, "image_size": 64, "channels": 32, "multi_head": False,
              "point_readout": MTOptConfig().point_readout}
    q = QNetwork(**kwargs)
    artifacts = export_onnx_bytes(q)
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    artifacts["model.pt"] = buf.getvalue()
    return artifacts, {"network": json.dumps(kwargs, sort_keys=True)}


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


def measure(client, agents: Agents, catalogue, versions, publishes: int, timeout: float, label: str) -> dict[str, list[float]]:
    out = {"from_start": [], "from_return": [], "notify": [], "load": [], "missing": 0}
    for k in range(publishes):
        artifacts, labels = versions[k % len(versions)]
        t_start = time.time()
        v = client.publish(MODEL, step=1000 + k, artifacts=artifacts, tasks=list(catalogue), labels=labels)
        t_return = time.time()
        got = agents.wait_for(v.version, timeout)
        out["missing"] += agents.total - len(got)
        lat = [e["loaded"] - t_start for e in got.values()]
        out["from_start"] += lat
        out["from_return"] += [e["loaded"] - t_return for e in got.values()]
        out["notify"] += [e["notified"] - t_start for e in got.values()]
        out["load"] += [e["loaded"] - e["notified"] for e in got.values()]
        print(f"  {label} publish {k + 1}/{publishes}: version {v.version} (publish call {t_return - t_start:.3f} s), "
              f"{len(got)}/{agents.total} agents loaded it, p50 {percentile(lat, 50):.3f} s, max {max(lat, default=float('nan')):.3f} s",
              flush=True)
        time.sleep(0.2)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--procs", type=int, default=5, help="worker processes the agents are spread over")
    parser.add_argument("--publishes", type=int, default=0, help="timed publishes (default 5 quick, 15 full)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for every agent after a publish")
    args = parser.parse_args()
    publishes = args.publishes or (5 if args.quick else 15)

    from mtopt.model_registry.client import RegistryClient
    from mtopt.tasks import TaskCatalogue

    print(f"propagation: mode={'quick' if args.quick else 'full'} agents={args.agents} procs={args.procs} publishes={publishes} "
          f"python={platform.python_version()} cpus={os.cpu_count()}", flush=True)
    catalogue = TaskCatalogue.load()
    t0 = time.perf_counter()
    versions = [make_artifacts(catalogue, seed) for seed in range(3)]
    sizes = {n: len(b) for n, b in versions[0][0].items()}
    print(f"  3 QNetwork exports in {time.perf_counter() - t0:.1f} s; artifact bytes {sizes}", flush=True)

    with tempfile.TemporaryDirectory(prefix="mtopt-bench-propagation-") as tmp:
        with run_registry(Path(tmp) / "models", Path(tmp) / "registry.log") as address, RegistryClient(address, timeout_s=30) as client:
            first = client.publish(MODEL, step=1, artifacts=versions[0][0], tasks=list(catalogue), labels=versions[0][1])
            results = {}
            for label, n, procs, robot0 in (("single", 1, 1, 1000), ("fleet", args.agents, args.procs, 0)):
                agents = Agents(address, n, min(procs, n), robot0)
                try:
                    warm = agents.wait_for(first.version, 60)  # started, initial version loaded: every agent warm
                    if len(warm) < n:
                        raise RuntimeError(f"only {len(warm)}/{n} agents loaded the initial version")
                    results[label] = measure(client, agents, catalogue, versions[1:] + versions[:1], publishes,
                                             args.timeout, label)
                finally:
                    agents.close()
                first = client.get_version(MODEL, alias="latest")

    fleet, single = results["fleet"], results["single"]
    value, baseline = percentile(fleet["from_start"], 99), percentile(single["from_start"], 99)
    r = lambda x: round(x, 4)  # noqa: E731
    result = {
        "bench": "propagation",
        "value": r(value),
        "unit": "s (p99, publish start -> agent runs the version)",
        "baseline": r(baseline),
        "baseline_is": "p99 of the same measurement with 1 agent",
        "ratio": r(value / baseline),
        "target_p99_s": TARGET_P99_S,
        "meets_target": bool(value <= TARGET_P99_S and fleet["missing"] == 0),
        "p50_s": r(percentile(fleet["from_start"], 50)),
        "p99_s": r(value),
        "max_s": r(max(fleet["from_start"])),
        "p50_from_return_s": r(percentile(fleet["from_return"], 50)),
        "p99_from_return_s": r(percentile(fleet["from_return"], 99)),
        "notify_p50_s": r(percentile(fleet["notify"], 50)),
        "notify_p99_s": r(percentile(fleet["notify"], 99)),
        "load_p50_s": r(percentile(fleet["load"], 50)),
        "load_p99_s": r(percentile(fleet["load"], 99)),
        "single_p50_s": r(percentile(single["from_start"], 50)),
        "missing": fleet["missing"],
        "samples": len(fleet["from_start"]),
        "agents": args.agents,
        "procs": args.procs,
        "publishes": publishes,
        "artifact_bytes": sizes,
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
    }
    print(f"propagation: {args.agents} agents p50 {result['p50_s']:.3f} s, p99 {value:.3f} s (target <= {TARGET_P99_S} s); "
          f"1 agent p99 {baseline:.3f} s; watch notify p99 {result['notify_p99_s']:.3f} s", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
