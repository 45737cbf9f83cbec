"""Benchmark: tabletop simulator steps per second on one CPU core, rendering included.

Drives `mtopt.sim.TabletopSim` with uniform random actions in [-1, 1]^4 (so about half of the
steps are TERMINATE steps, which only re-render), resetting every `--reset-every` steps as the
short MT-Opt episodes do. Every `act()` and every `reset()` returns a freshly rendered 64x64
observation; the time of the resets is included in the timing, but only `act()` calls are
counted as steps (conservative). `frames_per_s` additionally counts the resets' renders.

Also reports render-only time per frame (`TabletopSim.render()` on scenes reached by the same
random driving, gripper holding objects included).

Target: >= 2000 steps/s. The baseline is that target (ratio = value / 2000).

    python bench/sim_speed.py [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

import _onecore  # noqa: E402,F401  (pins to one core before numpy/torch load)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

cv2.setNumThreads(1)

from mtopt.robot import ACTION_DIM  # noqa: E402
from mtopt.sim import TabletopSim  # noqa: E402

TARGET_STEPS_PER_S = 2000.0


_cpu = _onecore.cpu_label


def run_steps(sim: TabletopSim, actions: np.ndarray, reset_every: int) -> tuple[float, int, int]:
    """Returns (seconds, act() calls, reset() calls) for driving `sim` through `actions`."""
    resets = 0
    t0 = time.perf_counter()
    for i in range(actions.shape[0]):
        if i % reset_every == 0:
            obs = sim.reset()
            resets += 1
        obs = sim.act(actions[i])
    dt = time.perf_counter() - t0
    assert obs.image.shape == (sim.config.image_size, sim.config.image_size, 3)
    return dt, actions.shape[0], resets


def collect_scenes(seed: int, count: int, reset_every: int) -> list[TabletopSim]:
    """Independent simulators left in varied states (some holding an object) for render timing."""
    rng = np.random.default_rng(seed)
    sims = []
    for k in range(count):
        sim = TabletopSim(seed=seed + 1 + k)
        for _ in range(int(rng.integers(0, reset_every))):
            a = rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            a[3] = -1.0
            sim.act(a)
        sims.append(sim)
    return sims


def time_render(sims: list[TabletopSim], frames: int) -> float:
    """Seconds per render, cycling over the given scenes."""
    n = len(sims)
    t0 = time.perf_counter()
    for i in range(frames):
        sims[i % n].render()
    return (time.perf_counter() - t0) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--reset-every", type=int, default=6, help="reset the scene every this many steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    steps, repeats, warmup = (3000, 5, 600) if args.quick else (20000, 9, 3000)
    render_frames = 3000 if args.quick else 20000

    print(f"sim_speed: mode={'quick' if args.quick else 'full'} cpu={_cpu()} python={platform.python_version()} "
          f"opencv={cv2.__version__} cv2_threads={cv2.getNumThreads()}", flush=True)
    rng = np.random.default_rng(args.seed)
    sim = TabletopSim(seed=args.seed)

    # warm-up: same workload, untimed
    run_steps(sim, rng.uniform(-1, 1, (warmup, ACTION_DIM)).astype(np.float32), args.reset_every)

    rates, frame_rates = [], []
    terminate_share = []
    for r in range(repeats):
        actions = rng.uniform(-1, 1, (steps, ACTION_DIM)).astype(np.float32)
        terminate_share.append(float(np.mean(actions[:, 3] > 0)))
        dt, acts, resets = run_steps(sim, actions, args.reset_every)
        rates.append(acts / dt)
        frame_rates.append((acts + resets) / dt)
        print(f"  repeat {r + 1}/{repeats}: {acts} steps + {resets} resets in {dt:.3f} s -> "
              f"{acts / dt:,.0f} steps/s ({(acts + resets) / dt:,.0f} frames/s)", flush=True)

    sims = collect_scenes(args.seed + 1000, 64, args.reset_every)
    time_render(sims, min(1000, render_frames))  # warm-up
    render_s = []
    for r in range(repeats):
        render_s.append(time_render(sims, render_frames))
    render_us = statistics.median(render_s) * 1e6
    print(f"  render only: median {render_us:.1f} us/frame over {repeats} x {render_frames} frames "
          f"(min {min(render_s) * 1e6:.1f}, max {max(render_s) * 1e6:.1f})", flush=True)

    value = statistics.median(rates)
    result = {
        "bench": "sim_speed",
        "value": round(value, 1),
        "unit": "steps/s",
        "baseline": TARGET_STEPS_PER_S,
        "ratio": round(value / TARGET_STEPS_PER_S, 3),
        "target": TARGET_STEPS_PER_S,
        "meets_target": bool(value >= TARGET_STEPS_PER_S),
        "frames_per_s": round(statistics.median(frame_rates), 1),
        "render_us_per_frame": round(render_us, 2),
        "step_us": round(1e6 / value, 2),
        "min_steps_per_s": round(min(rates), 1),
        "max_steps_per_s": round(max(rates), 1),
        "repeats": repeats,
        "steps_per_repeat": steps,
        "reset_every": args.reset_every,
        "terminate_share": round(statistics.mean(terminate_share), 3),
        "image_size": sim.config.image_size,
        "mode": "quick" if args.quick else "full",
        "cpu": _cpu(),
    }
    print(f"sim_speed: {value:,.0f} steps/s (target {TARGET_STEPS_PER_S:,.0f}, ratio {value / TARGET_STEPS_PER_S:.2f}), "
          f"render {render_us:.1f} us/frame", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
