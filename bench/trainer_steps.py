"""Benchmark: the trainer's SGD steps per second, on a device vs on one CPU core.

What one step is: exactly the work of `mtopt.trainer.core.Trainer.train_once` between two
PushTargets, without gRPC, metrics, publishing or checkpoints:

    rows = TrainBuffer.wait_and_sample(batch, min_rows=512, rng)      # numpy gather of the batch
    tb   = TargetBatch(*(torch.from_numpy(rows[k]).to(device) ...))    # host -> device copy
    loss = Learner.step(tb)        # forward, BCE loss, backward, grad-norm clip, Adam; float(loss)
    TargetNetworks.update(q)       # Polyak Qt1 <- lerp(Qt1, Q, tau); Qt2 <- Qt1 every 200 steps

Network and settings: `QNetwork(catalogue.num_slots, 64, 32)` of the built-in task catalogue
(seeded init, as the trainer does), default `MTOptConfig` (Adam lr 1e-3, grad clip 10, tau
0.01), the trainer's default buffer (8192 rows, min 512). Data is realistic: the rows are
(image, state, action, task, target) of scripted simulator episodes of the catalogue's tasks;
targets are the discounted ground-truth outcome (gamma^(steps to the end) x success), which
has the distribution, not the exact values, of Bellman targets (the values do not change the
cost of a step). `--rows` unique transitions are collected and repeated to fill the buffer.
Rows are never retired (max_row_uses set out of reach) so the buffer stays full without a
feeder; the retirement bookkeeping this skips is a few index operations per step.

    value     steps/s at `--batch` (default 128, the trainer's) on `--device`
              (cpu: `--threads` cores, default 1; cuda: the GPU)
    baseline  steps/s of the same step at the same batch on ONE CPU core (1 torch thread,
              pinned with bench/_onecore.py), measured in a child process started by this one
              before the device run, so the pinning never applies to the GPU run (its host
              thread, autograd's device thread and the CUDA driver's threads keep the machine)
    ratio     value / baseline

With `--device cuda`: cudnn.benchmark on, warm-up steps per batch size before timing, every
timed block is bracketed by torch.cuda.synchronize (the step itself also waits for the GPU:
`float(loss)`), and a large batch (`--large-batch`, default 1024 on cuda) is timed too, interleaved with
`--batch` in every repeat (`large_batch_*` fields; `large_batch_samples_ratio` = its samples/s
over the one-core baseline's samples/s at `--batch`). If CUDA is not available it warns and
falls back to the CPU (`"device": "cpu", "requested_device": "cuda"`).

Also reported: samples/s, ms per step, min/max over repeats, `breakdown_ms` (a separate pass
with a synchronise between the four parts above: where a step's time goes), CPU time per wall
second of this process during timing (`cpu_per_wall`), the first and last loss (finite: the
steps train), and on cuda the peak GPU memory. Numbers are medians over repeats.

    python bench/trainer_steps.py [--quick] [--device cpu|cuda] [--batch 128] [--large-batch 1024]
                                  [--threads 1] [--rows 1024] [--repeats N] [--steps N]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (< 1 minute on a CPU)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the measured steps")
    p.add_argument("--batch", type=int, default=128, help="rows per step (the trainer's default: 128)")
    p.add_argument("--large-batch", type=int, default=None,
                   help="also time this batch (default: 1024 on cuda, none on cpu; 0: none)")
    p.add_argument("--threads", type=int, default=1, help="cpu only: torch threads / cores of the measured steps")
    p.add_argument("--rows", type=int, default=0, help="unique simulator transitions (default 1024, quick 512)")
    p.add_argument("--buffer-rows", type=int, default=8192, help="train buffer capacity (the trainer's default)")
    p.add_argument("--repeats", type=int, default=0, help="timed repeats (default 7, quick 5)")
    p.add_argument("--steps", type=int, default=0, help="steps per repeat (default cpu 20/quick 10, cuda 100/quick 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline-child", action="store_true", help=argparse.SUPPRESS)
    return p


ARGS = _parser().parse_args()


def _pin_cpus(n: int) -> None:
    """This thread (and the threads it starts) on the first ``n`` allowed CPUs."""
    if hasattr(os, "sched_setaffinity"):
        try:
            allowed = sorted(os.sched_getaffinity(0))
            os.sched_setaffinity(0, set(allowed[:max(1, n)]))
        except OSError:
            pass


# Thread pools read their settings when numpy/torch load, so this comes first.
if ARGS.baseline_child or (ARGS.device == "cpu" and ARGS.threads == 1):
    import _onecore  # noqa: E402,F401  (one core, one thread)
elif ARGS.device == "cpu":
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[_var] = str(ARGS.threads)
    _pin_cpus(ARGS.threads)
# --device cuda: not pinned, default thread settings (see the docstring)

import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mtopt.core.bellman import TargetNetworks  # noqa: E402
from mtopt.core.config import MTOptConfig  # noqa: E402
from mtopt.core.learner import Learner, TargetBatch  # noqa: E402
from mtopt.core.networks import QNetwork  # noqa: E402
from mtopt.robot import ACTION_DIM, STATE_DIM, is_terminate  # noqa: E402
from mtopt.sim import ScriptedPolicy, TabletopSim  # noqa: E402
from mtopt.tasks import TaskCatalogue  # noqa: E402
from mtopt.trainer.buffer import FIELDS, TrainBuffer  # noqa: E402

MIN_BUFFER_ROWS = 512  # TrainerConfig.min_buffer_rows
NEVER_RETIRE = 1 << 30


def _cpu_label() -> str:
    if hasattr(os, "sched_getaffinity"):
        return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    return "unpinned"


def collect_rows(count: int, seed: int, gamma: float, max_steps: int = 6) -> dict[str, np.ndarray]:
    """``count`` (image, state, action, task, target) rows of scripted simulator episodes."""
    catalogue = TaskCatalogue.load()
    rng = np.random.default_rng(seed)
    sim = TabletopSim(seed=seed)
    script = ScriptedPolicy(sim, rng)
    rows: list[tuple] = []
    while len(rows) < count:
        task = catalogue.tasks[int(rng.integers(len(catalogue)))]
        script.reset(task)
        obs = sim.reset()
        episode = []
        for t in range(max_steps):
            action = script(obs)
            episode.append((obs.image, obs.state, np.asarray(action, dtype=np.float32), task.index))
            obs = sim.act(action)
            if is_terminate(action) or t == max_steps - 1:
                break
        success = float(sim.success(task))
        n = len(episode)
        rows += [(*r, success * gamma ** (n - 1 - i)) for i, r in enumerate(episode)]
    rows = rows[:count]
    return {
        "images": np.stack([r[0] for r in rows]),
        "states": np.stack([r[1] for r in rows]).astype(np.float32),
        "actions": np.stack([r[2] for r in rows]),
        "tasks": np.array([r[3] for r in rows], dtype=np.int64),
        "targets": np.array([r[4] for r in rows], dtype=np.float32),
    }


class TrainerStep:
    """The trainer's networks, optimiser and buffer, and its step (see the docstring)."""

    def __init__(self, rows: dict[str, np.ndarray], capacity: int, device: torch.device, seed: int):
        self.config, self.device = MTOptConfig(), device
        catalogue = TaskCatalogue.load()
        torch.manual_seed(seed)
        self.q = QNetwork(catalogue.num_slots, self.config.image_size, self.config.channels,
                          self.config.multi_head, point_readout=self.config.point_readout).to(device)
        self.learner = Learner(self.q, self.config)
        self.targets = TargetNetworks(self.q, self.config)
        image_shape = rows["images"].shape[1:]
        self.buffer = TrainBuffer(capacity, image_shape, STATE_DIM, ACTION_DIM, max_row_uses=NEVER_RETIRE)
        n, i = rows["targets"].shape[0], 0
        while len(self.buffer) < capacity:  # fill with pushes of up to 512 rows, as workers would
            k = min(512, n, capacity - len(self.buffer))
            idx = np.arange(i, i + k) % n
            self.buffer.offer(f"fill/{i}", {f: rows[f][idx] for f in FIELDS})
            i += k
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.loss_ema = float("nan")
        self.losses: list[float] = []

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        rows, _ = self.buffer.wait_and_sample(batch, MIN_BUFFER_ROWS, self.rng, 0.2)
        assert rows is not None, "buffer starved"
        return rows

    def to_device(self, rows: dict[str, np.ndarray]) -> TargetBatch:
        return TargetBatch(*(torch.from_numpy(rows[k]).to(self.device) for k in FIELDS))

    def step(self, batch: int) -> float:
        tb = self.to_device(self.sample(batch))
        with self.lock:
            loss = self.learner.step(tb)
            self.targets.update(self.q)
        self.loss_ema = loss if np.isnan(self.loss_ema) else 0.98 * self.loss_ema + 0.02 * loss
        self.losses.append(loss)
        return loss

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def timed(self, batch: int, steps: int) -> tuple[float, float]:
        """(seconds, CPU seconds of this process) for ``steps`` steps."""
        self.sync()
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.step(batch)
        self.sync()
        return time.perf_counter() - t0, time.process_time() - c0

    def breakdown(self, batch: int, steps: int) -> dict[str, float]:
        """Mean ms of each part of a step, with a synchronise after each part."""
        parts = {"sample": 0.0, "to_device": 0.0, "learner_step": 0.0, "target_update": 0.0}
        for _ in range(steps):
            self.sync()
            t0 = time.perf_counter()
            rows = self.sample(batch)
            t1 = time.perf_counter()
            tb = self.to_device(rows)
            self.sync()
            t2 = time.perf_counter()
            self.learner.step(tb)
            t3 = time.perf_counter()
            self.targets.update(self.q)
            self.sync()
            t4 = time.perf_counter()
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k] += dt
        return {k: round(1e3 * v / steps, 3) for k, v in parts.items()}


def run_baseline_child(args: argparse.Namespace, rows: int, repeats: int, steps: int) -> dict:
    """The one-core baseline, in a child process pinned by bench/_onecore.py."""
    cmd = [sys.executable, os.path.abspath(__file__), "--baseline-child", "--device", "cpu", "--batch", str(args.batch),
           "--rows", str(rows), "--buffer-rows", str(args.buffer_rows), "--repeats", str(repeats),
           "--steps", str(steps), "--seed", str(args.seed)]
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    lines = out.rstrip().splitlines()
    for line in lines[:-1]:
        print(f"  [baseline] {line}", flush=True)
    return json.loads(lines[-1])


def measure(harness: TrainerStep, batches: list[int], repeats: int, steps: int, warmup: int) -> dict[int, dict]:
    """Steps/s per batch size, the batch sizes interleaved in every repeat."""
    for b in batches:
        harness.timed(b, warmup)
    res = {b: {"rates": [], "cpu": 0.0, "wall": 0.0} for b in batches}
    for r in range(repeats):
        for b in batches:
            dt, cpu = harness.timed(b, steps)
            res[b]["rates"].append(steps / dt)
            res[b]["cpu"] += cpu
            res[b]["wall"] += dt
            print(f"  repeat {r + 1}/{repeats}: batch {b}: {steps} steps in {dt:.3f} s -> {steps / dt:,.1f} steps/s "
                  f"({b * steps / dt:,.0f} samples/s)", flush=True)
    for b in batches:
        rates = res[b]["rates"]
        res[b].update(median=statistics.median(rates), min=min(rates), max=max(rates),
                      cpu_per_wall=res[b]["cpu"] / res[b]["wall"])
    return res


def main() -> None:
    args = ARGS
    quick = args.quick
    n_rows = args.rows or (512 if quick else 1024)
    repeats = args.repeats or (5 if quick else 7)
    cpu_steps = 10 if quick else 20

    if args.baseline_child:
        _onecore.pin_torch()
        rows = collect_rows(n_rows, args.seed, MTOptConfig().gamma)
        harness = TrainerStep(rows, args.buffer_rows, torch.device("cpu"), args.seed)
        res = measure(harness, [args.batch], repeats, args.steps or cpu_steps, warmup=3)[args.batch]
        print(json.dumps({"steps_per_s": res["median"], "min": res["min"], "max": res["max"], "cpu": _cpu_label(),
                          "cpu_per_wall": res["cpu_per_wall"], "threads": torch.get_num_threads(),
                          "loss_first": harness.losses[0], "loss_last": harness.losses[-1]}), flush=True)
        return

    requested = args.device
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("WARNING: --device cuda requested but CUDA is not available; running on the CPU", file=sys.stderr, flush=True)
        device = torch.device("cpu")
        _pin_cpus(args.threads)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = args.steps or ((30 if quick else 100) if device.type == "cuda" else cpu_steps)
    large = args.large_batch if args.large_batch is not None else (1024 if device.type == "cuda" else 0)
    batches = [args.batch] + ([large] if large > 0 and large != args.batch else [])
    if max(batches) > args.buffer_rows:
        raise SystemExit(f"--buffer-rows {args.buffer_rows} must hold a batch of {max(batches)}")
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"trainer_steps: mode={'quick' if quick else 'full'} device={device} ({dev_name}) batches={batches} "
          f"cpu={_cpu_label()} python={platform.python_version()} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}", flush=True)

    t0 = time.perf_counter()
    base = run_baseline_child(args, n_rows, repeats, cpu_steps)
    print(f"  baseline (one CPU core, batch {args.batch}): {base['steps_per_s']:,.1f} steps/s "
          f"({time.perf_counter() - t0:.1f} s with start-up)", flush=True)

    t0 = time.perf_counter()
    rows = collect_rows(n_rows, args.seed, MTOptConfig().gamma)
    harness = TrainerStep(rows, args.buffer_rows, device, args.seed)
    print(f"  {n_rows} simulator rows ({float((rows['targets'] > 0).mean()):.0%} with target > 0), buffer of "
          f"{len(harness.buffer)} rows, in {time.perf_counter() - t0:.1f} s", flush=True)
    warmup = 20 if device.type == "cuda" else 3
    res = measure(harness, batches, repeats, steps, warmup)
    parts = {b: harness.breakdown(b, max(5, steps // 4)) for b in batches}
    for b, p in parts.items():
        print(f"  breakdown at batch {b} (ms, synchronised between parts): {p}", flush=True)

    main_res = res[args.batch]
    value, baseline = main_res["median"], base["steps_per_s"]
    r3 = lambda x: round(x, 3)  # noqa: E731
    result = {
        "bench": "trainer_steps",
        "value": round(value, 2),
        "unit": "steps/s",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 2),
        "device": device.type,
        "requested_device": requested,
        "device_name": dev_name,
        "baseline_device": "cpu (1 core, 1 thread)",
        "batch": args.batch,
        "samples_per_s": round(value * args.batch, 1),
        "baseline_samples_per_s": round(baseline * args.batch, 1),
        "step_ms": r3(1e3 / value),
        "baseline_step_ms": r3(1e3 / baseline),
        "min_value": round(main_res["min"], 2),
        "max_value": round(main_res["max"], 2),
        "baseline_min": round(base["min"], 2),
        "baseline_max": round(base["max"], 2),
        "breakdown_ms": parts[args.batch],
        "cpu_per_wall": r3(main_res["cpu_per_wall"]),
        "baseline_cpu_per_wall": r3(base["cpu_per_wall"]),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_label(),
        "baseline_cpu": base["cpu"],
        "loss_first": r3(harness.losses[0]),
        "loss_last": r3(harness.losses[-1]),
        "baseline_loss_last": r3(base["loss_last"]),
    }
    if len(batches) > 1:
        lb = res[batches[1]]
        result.update({
            "large_batch": batches[1],
            "large_batch_steps_per_s": round(lb["median"], 2),
            "large_batch_samples_per_s": round(lb["median"] * batches[1], 1),
            "large_batch_samples_ratio": round(lb["median"] * batches[1] / (baseline * args.batch), 2),
            "large_batch_step_ms": r3(1e3 / lb["median"]),
            "large_batch_breakdown_ms": parts[batches[1]],
        })
    if device.type == "cuda":
        result.update({
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "gpu_max_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
        })
    result.update({
        "network": f"QNetwork({harness.q.num_task_slots}, 64, 32), default MTOptConfig (Adam, clip, Polyak)",
        "buffer_rows": len(harness.buffer),
        "unique_rows": n_rows,
        "repeats": repeats,
        "steps_per_repeat": steps,
        "mode": "quick" if quick else "full",
        "python": platform.python_version(),
        "torch": torch.__version__,
    })
    print(f"trainer_steps: {value:,.1f} steps/s on {device.type} (batch {args.batch}, {value * args.batch:,.0f} samples/s), "
          f"one CPU core {baseline:,.1f} steps/s -> ratio {value / baseline:.2f}", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
