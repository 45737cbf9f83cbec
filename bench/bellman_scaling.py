"""Benchmark: end-to-end Bellman targets/s with 1 and then 2 Bellman worker processes.

Starts the pipeline as real processes (`python -m mtopt.<service>`, env-var configuration,
local backends; see bench/_stack.py): model_registry, episode_store holding `--episodes`
scripted simulator episodes, a success_detector whose first version the simulated labeller
(`python -m mtopt.sim_labeller`) trains from their ground truth, log_replay (labels and buffers
them with that SD version), the trainer (default `QNetwork`, channels 32; it publishes its
initial weights, which the workers load as Qt1/Qt2) and the Bellman workers
(`python -m mtopt.bellman`, `MTOPT_BELLMAN_THREADS=1`, batch 128, default CEM 2 x 64 / 6
elites). Every process runs with 1 torch/OpenMP thread.

What is measured: rows accepted by the trainer per second (`mtopt_trainer_rows_accepted_total`
from its /metrics, sampled at the start and end of each timed window, after every worker has
pushed its first batch). The trainer is kept from being the bottleneck, and from taking CPU
from the workers, by configuration: its buffer holds `--buffer-rows` rows and it trains only
once `min_buffer_rows` = capacity - max_batch_rows rows are buffered, more than a run pushes,
so it does no SGD step during the bench and every push is accepted at once (the JSON checks:
`trainer_steps` = 0, `backpressure_rejections` = 0). Each phase gets a freshly started trainer
(empty buffer; it resumes from its step-0 checkpoint, the registry keeps the same weights).
It therefore measures the Bellman side:
log_replay SampleBatches -> targets (CEM over Qt1, clipped double Q) -> PushTargets -> stored.
The workers' own count (`mtopt_bellman_targets_total`) is reported alongside.

Each repeat times `--window` seconds with 1 worker, then with 2 fresh workers (the same
log_replay data). value = median targets/s with 2 workers, baseline = median with 1 worker,
ratio = value / baseline (ideal 2 with 2 free cores). This machine's core count is in the JSON
(`cpus`); log_replay, the trainer and the workers all share those cores.

    python bench/bellman_scaling.py [--quick] [--episodes 400] [--window 20] [--repeats 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, sim_episode_payloads, wait_until  # noqa: E402

MAX_BATCH_ROWS = 512


def start_trainer(stack: Stack, buffer_rows: int):
    """The trainer with an empty buffer that will not train during a phase (see the docstring)."""
    return stack.start("trainer", MTOPT_TRAINER_BUFFER_CAPACITY_ROWS=str(buffer_rows),
                       MTOPT_TRAINER_MAX_BATCH_ROWS=str(MAX_BATCH_ROWS),
                       MTOPT_TRAINER_MIN_BUFFER_ROWS=str(buffer_rows - MAX_BATCH_ROWS), MTOPT_TRAINER_MAX_ROW_USES="1000",
                       MTOPT_TRAINER_CHECKPOINT_EVERY_STEPS="100000")


def run_phase(stack: Stack, workers: int, window: float, tag: str, buffer_rows: int) -> dict:
    """A fresh trainer and ``workers`` Bellman processes; waits until each worker has pushed a
    batch, then times ``window`` s."""
    if "trainer" in stack.procs:
        stack.stop("trainer")  # an empty buffer for every phase (the registry keeps its weights)
    trainer = start_trainer(stack, buffer_rows)
    names = [f"bellman-{tag}-{i}" for i in range(workers)]
    procs = [stack.start("bellman", name=n, wait=False, threads=1, MTOPT_BELLMAN_BATCH_SIZE="128",
                         MTOPT_BELLMAN_REGISTRY_POLL_S="5") for n in names]
    try:
        for p in procs:
            p.wait_ready()
        wait_until(lambda: all(p.metric("mtopt_bellman_batches_pushed_total") >= 1 for p in procs), 120,
                   f"{workers} Bellman worker(s) to push a first batch")
        rows0 = trainer.metric("mtopt_trainer_rows_accepted_total")
        targets0 = sum(p.metric("mtopt_bellman_targets_total") for p in procs)
        cpu0 = [p.cpu_seconds() for p in procs]
        trainer_cpu0 = trainer.cpu_seconds()
        replay_cpu0 = stack.procs["log_replay"].cpu_seconds()
        t0 = time.perf_counter()
        time.sleep(window)
        dt = time.perf_counter() - t0
        rows = trainer.metric("mtopt_trainer_rows_accepted_total") - rows0
        targets = sum(p.metric("mtopt_bellman_targets_total") for p in procs) - targets0
        cpu = sum(p.cpu_seconds() for p in procs) - sum(cpu0)
        rejected = sum(p.metric("mtopt_bellman_batches_rejected_total") for p in procs)
        errors = sum(p.metric("mtopt_bellman_errors_total") for p in procs)
        trainer_cpu = trainer.cpu_seconds() - trainer_cpu0
        replay_cpu = stack.procs["log_replay"].cpu_seconds() - replay_cpu0
        steps = trainer.metric("mtopt_trainer_steps_total")
        backpressure = trainer.metric("mtopt_trainer_batches_rejected_total", reason="backpressure")
    finally:
        for n in names:
            stack.stop(n)
    return {"rows_per_s": rows / dt, "targets_per_s": targets / dt, "worker_cpu_per_wall": cpu / dt,
            "rows_per_worker_cpu_s": rows / cpu if cpu > 0 else 0.0, "rejected": rejected + backpressure, "errors": errors,
            "trainer_steps": steps, "trainer_cpu_per_wall": trainer_cpu / dt,
            "log_replay_cpu_per_wall": replay_cpu / dt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (about a minute)")
    parser.add_argument("--episodes", type=int, default=0, help="stored episodes (default 400, quick 200)")
    parser.add_argument("--window", type=float, default=0.0, help="timed seconds per phase (default 20, quick 8)")
    parser.add_argument("--repeats", type=int, default=0, help="1-worker/2-worker pairs (default 2, quick 1)")
    parser.add_argument("--buffer-rows", type=int, default=50000,
                        help="trainer buffer capacity in rows (12 KiB each once written; must exceed a phase's pushes)")
    args = parser.parse_args()
    n_episodes = args.episodes or (200 if args.quick else 400)
    window = args.window or (8.0 if args.quick else 20.0)
    repeats = args.repeats or (1 if args.quick else 2)
    print(f"bellman_scaling: mode={'quick' if args.quick else 'full'} episodes={n_episodes} window={window}s repeats={repeats} "
          f"python={platform.python_version()} cpus={os.cpu_count()}", flush=True)

    payloads = sim_episode_payloads(n_episodes, seed=5)
    with tempfile.TemporaryDirectory(prefix="mtopt-bench-bellman-scaling-") as tmp, Stack(Path(tmp)) as stack:
        t0 = time.perf_counter()
        stack.start_core()
        stack.upload(payloads)
        stack.train_sd(min_episodes=n_episodes)
        replay = stack.start("log_replay", MTOPT_LOG_REPLAY_BUFFER_BYTES=str(1 << 30))
        start_trainer(stack, args.buffer_rows)  # publishes the initial weights the workers load
        wait_until(lambda: replay.metric("mtopt_log_replay_episodes_processed_total") >= n_episodes, 300,
                   "log_replay to buffer every episode")
        print(f"  pipeline up ({n_episodes} episodes buffered, trainer published its initial weights) in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)

        phases: dict[int, list[dict]] = {1: [], 2: []}
        for rep in range(repeats):
            for workers in (1, 2):
                res = run_phase(stack, workers, window, f"{rep}-{workers}", args.buffer_rows)
                phases[workers].append(res)
                print(f"  repeat {rep + 1}/{repeats}, {workers} worker(s): {res['rows_per_s']:.1f} rows/s accepted by the trainer "
                      f"(log_replay CPU/wall {res['log_replay_cpu_per_wall']:.2f}) "
                      f"({res['targets_per_s']:.1f} targets/s computed), workers' CPU/wall {res['worker_cpu_per_wall']:.2f}",
                      flush=True)

    med = {w: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for w, runs in phases.items()}
    value, baseline = med[2]["rows_per_s"], med[1]["rows_per_s"]
    r = lambda x: round(x, 3)  # noqa: E731
    result = {
        "bench": "bellman_scaling",
        "value": r(value),
        "unit": "targets/s accepted by the trainer (2 Bellman workers, 1 torch thread each)",
        "baseline": r(baseline),
        "baseline_is": "the same with 1 Bellman worker",
        "ratio": r(value / baseline),
        "cpus": os.cpu_count(),
        "device": "cpu",
        "targets_computed_per_s_2": r(med[2]["targets_per_s"]),
        "targets_computed_per_s_1": r(med[1]["targets_per_s"]),
        "worker_cpu_per_wall_2": r(med[2]["worker_cpu_per_wall"]),
        "worker_cpu_per_wall_1": r(med[1]["worker_cpu_per_wall"]),
        "rows_per_worker_cpu_s_2": r(med[2]["rows_per_worker_cpu_s"]),
        "rows_per_worker_cpu_s_1": r(med[1]["rows_per_worker_cpu_s"]),
        "runs_2": [r(x["rows_per_s"]) for x in phases[2]],
        "runs_1": [r(x["rows_per_s"]) for x in phases[1]],
        "trainer_steps": int(sum(x["trainer_steps"] for rs in phases.values() for x in rs)),
        "backpressure_rejections": int(sum(x["rejected"] for rs in phases.values() for x in rs)),
        "worker_errors": int(sum(x["errors"] for rs in phases.values() for x in rs)),
        "trainer_cpu_per_wall_2": r(med[2]["trainer_cpu_per_wall"]),
        "log_replay_cpu_per_wall_2": r(med[2]["log_replay_cpu_per_wall"]),
        "log_replay_cpu_per_wall_1": r(med[1]["log_replay_cpu_per_wall"]),
        "episodes": n_episodes,
        "window_s": window,
        "repeats": repeats,
        "network": "QNetwork channels=32, image 64, batch 128, CEM 2x64/6",
        "mode": "quick" if args.quick else "full",
    }
    print(f"bellman_scaling: 2 workers {value:.1f} targets/s vs 1 worker {baseline:.1f} targets/s (ratio {result['ratio']:.2f}) "
          f"on {os.cpu_count()} cores", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
