"""Benchmark: log_replay's memory against its configured buffer budget.

Starts the services as real processes (`python -m mtopt.<service>`, env-var configuration,
local backends; see bench/_stack.py): model_registry, a success_detector whose first version the
simulated labeller (`python -m mtopt.sim_labeller`) trains from the ground truth of scripted
simulator episodes in a separate episode_store, then the episode_store log_replay follows and
log_replay itself with `MTOPT_LOG_REPLAY_BUFFER_BYTES` = `--budget-mib`.

Once log_replay is SERVING (cursor loaded, store and SD answered, SD version known) and its
buffer is empty, the bench reads its RSS (`/proc/<pid>/status` VmRSS), then uploads
`--fill` x budget worth of scripted simulator episodes (decoded size, `Episode.nbytes`), more
than fit, so the oldest are evicted, waits until log_replay has processed all of them and reads
VmHWM (the peak RSS of the whole run).

value = VmHWM - RSS before filling (MiB), baseline = the budget (MiB), ratio = value / budget;
target ratio <= 1.2 (budget + 20%). Also reports the buffer's own accounting
(`mtopt_log_replay_buffer_bytes`) and RSS at the end.

A part of the growth does not depend on the budget (a few MiB here: the PNG decoder's code and
tables, touched at the first decode, the malloc arenas of the io_workers threads, capped at 2 by
default, the batch being decoded and labelled); the budget itself counts each episode's Python
objects with its arrays, and malloc fragmentation adds a few percent, so the ratio falls as the
budget grows (see docs/results.md).

    python bench/replay_memory.py [--quick] [--budget-mib 64] [--fill 2.0]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, sim_episode_payloads, wait_until  # noqa: E402

TARGET_RATIO = 1.2
MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute): fill 1.3x instead of 2x")
    parser.add_argument("--budget-mib", type=int, default=0, help="MTOPT_LOG_REPLAY_BUFFER_BYTES in MiB (default 64)")
    parser.add_argument("--fill", type=float, default=0.0,
                        help="decoded episode bytes fed, as a multiple of the budget (default 2, quick 1.3)")
    parser.add_argument("--sd-episodes", type=int, default=0,
                        help="episodes the labeller trains the SD from (default 400, quick 200)")
    args = parser.parse_args()
    budget_mib = args.budget_mib or 64
    args.fill = args.fill or (1.3 if args.quick else 2.0)
    budget = budget_mib * MIB
    sd_episodes = args.sd_episodes or (200 if args.quick else 400)
    print(f"replay_memory: mode={'quick' if args.quick else 'full'} budget={budget_mib} MiB fill={args.fill}x "
          f"python={platform.python_version()} cpus={os.cpu_count()}", flush=True)

    # episodes: ~42 KB decoded each (2.5 steps of 64x64x3 on average); generate, then trim to the fill size
    t0 = time.perf_counter()
    from mtopt.episode_codec import episode_from_proto
    from mtopt.v1 import common_pb2

    per_episode = 48 * 1024
    payloads = sim_episode_payloads(int(args.fill * budget / per_episode * 1.15) + 50, seed=7)
    decoded, fill = 0, []
    for p in payloads:
        if decoded >= args.fill * budget:
            break
        decoded += episode_from_proto(common_pb2.Episode.FromString(p[3])).nbytes
        fill.append(p)
    print(f"  {len(fill)} episodes, {decoded / MIB:.1f} MiB decoded ({decoded / budget:.2f}x the budget), "
          f"{sum(len(p[3]) for p in fill) / MIB:.1f} MiB encoded, made in {time.perf_counter() - t0:.1f} s", flush=True)

    with tempfile.TemporaryDirectory(prefix="mtopt-bench-replay-memory-") as tmp, Stack(Path(tmp)) as stack:
        stack.start_core()
        stack.start("episode_store", name="sd_store", MTOPT_EPISODE_STORE_IMAGE_SHAPE="64,64,3")
        t0 = time.perf_counter()
        stack.upload(sim_episode_payloads(sd_episodes, seed=1), store="sd_store")
        stack.train_sd(min_episodes=sd_episodes, store="sd_store")
        print(f"  SD version trained by the labeller in {time.perf_counter() - t0:.1f} s", flush=True)

        replay = stack.start("log_replay", MTOPT_LOG_REPLAY_BUFFER_BYTES=str(budget), MTOPT_LOG_REPLAY_IO_WORKERS="4")
        time.sleep(1.0)  # settle after SERVING
        rss_before = replay.rss_kib() * 1024
        hwm_before = replay.hwm_kib() * 1024
        print(f"  log_replay SERVING: RSS {rss_before / MIB:.1f} MiB (peak so far {hwm_before / MIB:.1f} MiB)", flush=True)

        samples: list[tuple[float, int, float]] = []  # (t, rss, buffer_bytes) while filling
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                try:
                    samples.append((time.perf_counter(), replay.rss_kib() * 1024, replay.metric("mtopt_log_replay_buffer_bytes")))
                except OSError:
                    pass
                done.wait(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.perf_counter()
        stack.upload(fill)
        t_upload = time.perf_counter() - t0
        processed = lambda: replay.metric("mtopt_log_replay_episodes_processed_total") + replay.metric(  # noqa: E731
            "mtopt_log_replay_episodes_skipped_total")
        wait_until(lambda: processed() >= len(fill), 600, "log_replay to process every episode", poll_s=0.5)
        t_fill = time.perf_counter() - t0
        done.set()
        watcher.join()
        hwm = replay.hwm_kib() * 1024
        rss_after = replay.rss_kib() * 1024
        buffer_bytes = replay.metric("mtopt_log_replay_buffer_bytes")
        buffered = sum(replay.metric("mtopt_log_replay_buffer_episodes", task=t, outcome=o) for t in ("lift-any",)
                       for o in ("success", "failure"))
        skipped = replay.metric("mtopt_log_replay_episodes_skipped_total")
        print(f"  uploaded in {t_upload:.1f} s, all processed after {t_fill:.1f} s ({skipped:.0f} skipped); "
              f"buffer {buffer_bytes / MIB:.1f} MiB; RSS {rss_after / MIB:.1f} MiB, peak {hwm / MIB:.1f} MiB", flush=True)

    growth = hwm - rss_before
    ratio = growth / budget
    r = lambda x: round(x, 3)  # noqa: E731
    result = {
        "bench": "replay_memory",
        "value": r(growth / MIB),
        "unit": "MiB (log_replay peak RSS - RSS before filling)",
        "baseline": budget_mib,
        "baseline_is": "MTOPT_LOG_REPLAY_BUFFER_BYTES in MiB",
        "ratio": r(ratio),
        "target_ratio_max": TARGET_RATIO,
        "meets_target": bool(ratio <= TARGET_RATIO),
        "rss_before_mib": r(rss_before / MIB),
        "peak_rss_mib": r(hwm / MIB),
        "rss_after_mib": r(rss_after / MIB),
        "rss_after_growth_mib": r((rss_after - rss_before) / MIB),
        "buffer_bytes_mib": r(buffer_bytes / MIB),
        "max_buffer_bytes_mib": r(max((b for _, _, b in samples), default=0.0) / MIB),
        "episodes_fed": len(fill),
        "fed_decoded_mib": r(decoded / MIB),
        "episodes_skipped": int(skipped),
        "lift_any_buffered_episodes": int(buffered),
        "fill_s": r(t_fill),
        "episodes_per_s": r(len(fill) / t_fill),
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
    }
    print(f"replay_memory: peak RSS - RSS before = {growth / MIB:.1f} MiB for a {budget_mib} MiB budget "
          f"(ratio {ratio:.2f}, target <= {TARGET_RATIO})", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
