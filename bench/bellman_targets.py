"""Benchmark: clipped double-Q Bellman targets per second, batched vs naive.

Network: two independently random-initialised `QNetwork(32)` (Qt1, Qt2; eval mode) with the
default `MTOptConfig` (CEM 2 x 64 samples, 6 elites, gamma 0.9). Inputs are realistic: next
images and state features are simulator observations reached by scripted episodes of the
built-in task catalogue, tasks are the episodes' tasks, and 20% of the transitions are terminal
(reward = ground-truth success of the task at the end, as the success detector would label it);
the other 80% are non-terminal (reward 0) and need a CEM search over next actions.

    batched  mtopt.core.bellman.bellman_targets on batches of 128 (tower once per next state,
             CEM batched over states)                                   -> `value`
    naive    mtopt.core.bellman.bellman_targets_naive (one transition at a time, the whole
             network for every CEM sample), on a smaller sample with the same terminal share,
             always on one CPU core                                        -> `baseline`

value and baseline are targets/s (terminal transitions count, in both), ratio = value / baseline.
Target: ratio >= 10. Both run in the same process, interleaved in every repeat; reported numbers
are medians over repeats. Before timing, the two implementations are checked to agree on single
transitions given the same random draws (`max_abs_diff_single`).

    python bench/bellman_targets.py [--quick]
    python bench/bellman_targets.py --device cuda     # batched on the GPU, batch 1024

With `--device cuda` the batched version runs on the GPU (batch 1024 unless --batch is given,
cudnn.benchmark on, a warm-up pass over every batch, synchronised timing) and the naive baseline
stays on the CPU with one thread; the process is then not pinned to one core (the GPU run's host
side keeps the machine; `cpu` in the JSON lists the allowed CPUs). If CUDA is not available it
warns and falls back to the CPU (the JSON says `"device": "cpu"`).

The last line printed is one JSON object.
"""

from __future__ import annotations

import os
import sys

# --malloc-tuned: re-run this script with glibc's malloc told to keep large blocks in the heap
# (no fresh mmap + page faults for every big tensor). A diagnostic, not the headline number.
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824"}
if "--malloc-tuned" in sys.argv[1:] and os.environ.get("_MTOPT_BENCH_MALLOC_TUNED") != "1":
    os.environ.update(_MALLOC_ENV, _MTOPT_BENCH_MALLOC_TUNED="1")
    os.execv(sys.executable, [sys.executable] + sys.argv)

# --device cuda: the GPU run keeps every allowed CPU (its host thread, and the CUDA driver's threads
# while it synchronises, must not share one pinned core); the one-thread settings still apply, so
# the naive baseline runs on one thread (one core at a time).
_ARGV = sys.argv[1:]
_CUDA = "--device=cuda" in _ARGV or any(a == "--device" and b == "cuda" for a, b in zip(_ARGV, _ARGV[1:]))
_ALLOWED = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

import _onecore  # noqa: E402,F401  (pins to one core before numpy/torch load)

if _CUDA and _ALLOWED:
    os.sched_setaffinity(0, _ALLOWED)

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

_onecore.pin_torch()

from mtopt.core.bellman import bellman_targets, bellman_targets_naive  # noqa: E402
from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS, MTOptConfig  # noqa: E402
from mtopt.core.networks import QNetwork  # noqa: E402
from mtopt.robot import is_terminate  # noqa: E402
from mtopt.sim import ScriptedPolicy, TabletopSim  # noqa: E402
from mtopt.tasks import TaskCatalogue  # noqa: E402

TARGET_RATIO = 10.0
NUM_TASK_SLOTS = 32
TERMINAL_SHARE = 0.2


_cpu = _onecore.cpu_label


def collect_transitions(count: int, seed: int, max_steps: int = 6) -> dict[str, torch.Tensor]:
    """`count` transitions from scripted simulator episodes, exactly 20% of them terminal, shuffled.

    Returns CPU tensors: next_images (B,H,W,3) uint8, next_states (B,S), tasks (B,), rewards (B,),
    dones (B,).
    """
    catalogue = TaskCatalogue.load()
    rng = np.random.default_rng(seed)
    sim = TabletopSim(seed=seed)
    script = ScriptedPolicy(sim, rng)
    n_term = int(round(TERMINAL_SHARE * count))
    n_live = count - n_term
    term, live = [], []
    while len(term) < n_term or len(live) < n_live:
        task = catalogue.tasks[int(rng.integers(len(catalogue)))]
        script.reset(task)
        obs = sim.reset()
        for t in range(max_steps):
            action = script(obs)
            obs = sim.act(action)
            done = is_terminate(action) or t == max_steps - 1
            if done:
                term.append((obs.image, obs.state, task.index, float(sim.success(task)), 1.0))
                break
            live.append((obs.image, obs.state, task.index, 0.0, 0.0))
    rows = term[:n_term] + live[:n_live]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    return {
        "next_images": torch.from_numpy(np.stack([r[0] for r in rows])),
        "next_states": torch.from_numpy(np.stack([r[1] for r in rows]).astype(np.float32)),
        "tasks": torch.tensor([r[2] for r in rows], dtype=torch.int64),
        "rewards": torch.tensor([r[3] for r in rows], dtype=torch.float32),
        "dones": torch.tensor([r[4] for r in rows], dtype=torch.float32),
    }


def _slice(data: dict[str, torch.Tensor], start: int, stop: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[start:stop].to(device) for k, v in data.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_times() -> tuple[float, float]:
    t = os.times()
    return t.user, t.system


def time_batched(q1, q2, batches: list[dict], config, generator, device) -> tuple[float, int]:
    """(seconds, targets) for one pass of `bellman_targets` over every batch."""
    _sync(device)
    t0 = time.perf_counter()
    n = 0
    for b in batches:
        out = bellman_targets(q1, q2, b["next_images"], b["next_states"], b["tasks"], b["rewards"], b["dones"],
                              config, generator)
        n += out.shape[0]
    _sync(device)
    return time.perf_counter() - t0, n


def time_naive(q1, q2, data: dict, config, generator) -> tuple[float, int]:
    t0 = time.perf_counter()
    out = bellman_targets_naive(q1, q2, data["next_images"], data["next_states"], data["tasks"], data["rewards"],
                                data["dones"], config, generator)
    return time.perf_counter() - t0, out.shape[0]


def check_agreement(q1, q2, data: dict, config, count: int) -> float:
    """Max |batched - naive| on single non-terminal transitions with identically seeded generators (CPU)."""
    worst = 0.0
    for i in (data["dones"] < 0.5).nonzero(as_tuple=True)[0][:count].tolist():
        one = _slice(data, i, i + 1, torch.device("cpu"))
        args = (one["next_images"], one["next_states"], one["tasks"], one["rewards"], one["dones"], config)
        a = bellman_targets(q1, q2, *args, torch.Generator().manual_seed(100 + i))
        b = bellman_targets_naive(q1, q2, *args, torch.Generator().manual_seed(100 + i))
        worst = max(worst, float((a - b).abs().max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device of the batched version")
    parser.add_argument("--batch", type=int, default=None, help="batched batch size (default 128 cpu, 1024 cuda)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM, help="the Q-network's tower stem")
    parser.add_argument("--point-readout", action=argparse.BooleanOptionalAction, default=MTOptConfig().point_readout,
                        help="the Q-head's point readout (default: the config's)")
    parser.add_argument("--malloc-tuned", action="store_true",
                        help="diagnostic: rerun with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ = 1 GiB")
    args = parser.parse_args()

    requested = args.device
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("WARNING: --device cuda requested but CUDA is not available; running the batched version on the CPU",
              file=sys.stderr, flush=True)
        device = torch.device("cpu")
    batch = args.batch or (1024 if device.type == "cuda" else 128)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # per repeat: `n_batches` batched calls, and the naive version on `n_naive` transitions
    if args.quick:
        n_batches, n_naive, repeats = (2, 20, 5)
    else:
        n_batches, n_naive, repeats = (4, 30, 7)
    if device.type == "cuda":
        n_batches *= 4

    config = MTOptConfig()
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"bellman_targets: mode={'quick' if args.quick else 'full'} device={device} ({dev_name}) cpu={_cpu()} "
          f"python={platform.python_version()} torch={torch.__version__} "
          f"threads={torch.get_num_threads()}/{torch.get_num_interop_threads()}", flush=True)

    torch.manual_seed(args.seed)
    q1 = QNetwork(NUM_TASK_SLOTS, image_size=config.image_size, channels=config.channels, stem=args.tower_stem,
                   point_readout=args.point_readout).eval()
    q2 = QNetwork(NUM_TASK_SLOTS, image_size=config.image_size, channels=config.channels, stem=args.tower_stem,
                   point_readout=args.point_readout).eval()

    t0 = time.perf_counter()
    data = collect_transitions(batch * n_batches, args.seed)
    naive_data = collect_transitions(n_naive, args.seed + 1)
    print(f"  collected {batch * n_batches} + {n_naive} simulator transitions in {time.perf_counter() - t0:.1f} s "
          f"({float(data['dones'].mean()):.0%} terminal, {int(data['rewards'].sum())} rewarded)", flush=True)

    max_diff = check_agreement(q1, q2, naive_data, config, count=6)
    print(f"  batched vs naive on single non-terminal transitions (same random draws): max |diff| = {max_diff:.2e}", flush=True)

    # the batched version's networks: the same weights, on the batched device
    q1d, q2d = (q1, q2) if device.type == "cpu" else (copy.deepcopy(q1).to(device), copy.deepcopy(q2).to(device))
    batches = [_slice(data, i * batch, (i + 1) * batch, device) for i in range(n_batches)]
    gen_b = torch.Generator(device=device).manual_seed(args.seed)
    gen_n = torch.Generator().manual_seed(args.seed)

    # warm-up (cuda: every batch once, since cudnn.benchmark tunes each new input shape and the
    # tower's batch is the batch's live-row count, which differs from batch to batch)
    time_batched(q1d, q2d, batches if device.type == "cuda" else batches[:2], config, gen_b, device)
    time_naive(q1, q2, _slice(naive_data, 0, max(2, n_naive // 5), torch.device("cpu")), config, gen_n)

    batched_rates, naive_rates = [], []
    cpu_b = [0.0, 0.0, 0.0]  # user, sys, wall seconds of the batched runs (this process)
    cpu_n = [0.0, 0.0, 0.0]
    for r in range(repeats):
        u0, s0 = _cpu_times()
        dt_b, n_b = time_batched(q1d, q2d, batches, config, gen_b, device)
        u1, s1 = _cpu_times()
        dt_n, n_n = time_naive(q1, q2, naive_data, config, gen_n)
        u2, s2 = _cpu_times()
        for acc, du, ds, dt in ((cpu_b, u1 - u0, s1 - s0, dt_b), (cpu_n, u2 - u1, s2 - s1, dt_n)):
            acc[0] += du
            acc[1] += ds
            acc[2] += dt
        batched_rates.append(n_b / dt_b)
        naive_rates.append(n_n / dt_n)
        print(f"  repeat {r + 1}/{repeats}: batched {n_b} targets in {dt_b:.3f} s -> {n_b / dt_b:,.0f} targets/s; "
              f"naive {n_n} in {dt_n:.3f} s -> {n_n / dt_n:,.1f} targets/s", flush=True)

    value, baseline = statistics.median(batched_rates), statistics.median(naive_rates)
    ratio = value / baseline
    result = {
        "bench": "bellman_targets",
        "tower_stem": args.tower_stem,
        "point_readout": args.point_readout,
        "value": round(value, 1),
        "unit": "targets/s",
        "baseline": round(baseline, 2),
        "ratio": round(ratio, 2),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio >= TARGET_RATIO),
        "device": str(device.type),
        "requested_device": requested,
        "device_name": dev_name,
        "baseline_device": "cpu",
        "batch": batch,
        "batches_per_repeat": n_batches,
        "naive_transitions": n_naive,
        "terminal_share": round(float(data["dones"].mean()), 3),
        "batch_ms": round(1e3 * batch / value, 3),
        "naive_ms_per_target": round(1e3 / baseline, 3),
        "min_value": round(min(batched_rates), 1),
        "max_value": round(max(batched_rates), 1),
        "max_abs_diff_single": float(f"{max_diff:.3g}"),
        # CPU time of this process / wall time (< 1: the core was shared with other work), and
        # the kernel's share of it (page faults of large tensor allocations show up there)
        "batched_cpu_per_wall": round((cpu_b[0] + cpu_b[1]) / cpu_b[2], 3),
        "batched_sys_share": round(cpu_b[1] / max(cpu_b[0] + cpu_b[1], 1e-9), 3),
        "naive_cpu_per_wall": round((cpu_n[0] + cpu_n[1]) / cpu_n[2], 3),
        "naive_sys_share": round(cpu_n[1] / max(cpu_n[0] + cpu_n[1], 1e-9), 3),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"},
        "repeats": repeats,
        "mode": "quick" if args.quick else "full",
        "cpu": _cpu(),
    }
    print(f"bellman_targets: batched {value:,.0f} targets/s on {device.type} (batch {batch}), naive {baseline:,.1f} "
          f"targets/s -> ratio {ratio:.1f} (target >= {TARGET_RATIO:g})", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
