"""Benchmark: re-balanced transitions/s served by log_replay's SampleBatches stream.

Starts the services as real processes (`python -m mtopt.<service>`, env-var configuration,
local backends; see bench/_stack.py): model_registry, episode_store, success_detector, whose
first version the simulated labeller (`python -m mtopt.sim_labeller`) trains from the ground
truth of the stored scripted simulator episodes, and log_replay (impersonation `skill`), which
reads, decodes and labels those episodes with that SD version.

Each repeat runs, in alternating order:

- **service**: one client (a plain gRPC channel accepting 64 MiB messages, like a Bellman
  worker's) reads `--batches` TransitionBatch messages of `--batch` transitions from
  `SampleBatches` (all tasks, default success fraction); the client receives and parses the
  protobuf messages but does not convert them to numpy.
- **in-process** (the baseline): `mtopt.core.replay.ReplayBuffer.sample(batch, rng,
  rebalance=True)` over the same episodes with the same labels (the same SD version's Classify
  verdicts for the same impersonated tasks, threshold 0.5), in this process, no encoding.

Also timed in this process on the same buffer: sampling + `log_replay.servicer.batch_to_proto`
+ `SerializeToString` (`encode_*`), which splits the service's overhead into encoding and the
rest (gRPC transport, client parse, the service's event loop and thread-pool hop).

value = service samples/s, baseline = in-process samples/s, ratio = value / baseline (median of
`--repeats`). log_replay, the client and this process share the machine's cores.

log_replay runs with its default malloc thresholds (`MTOPT_LOG_REPLAY_MALLOC_*`, see
`mtopt.serving.malloc`): a 256-transition batch is ~6 MB of images, and with glibc's own
thresholds each of its multi-MB buffers (the gathered arrays, tobytes, the protobuf fields, the
serialized message) is a fresh mmap whose pages the kernel faults in and zeroes. `--glibc-malloc`
starts log_replay with `MTOPT_LOG_REPLAY_MALLOC_MMAP_THRESHOLD_BYTES=0` (glibc's defaults) to show
that cost.

    python bench/replay_sample.py [--quick] [--batch 256] [--episodes 600] [--repeats 5] [--glibc-malloc]

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

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stack import Stack, sim_episode_payloads, wait_until  # noqa: E402


def labelled_buffer(payloads, sd_stub, catalogue):
    """A ReplayBuffer of the payloads' episodes with the serving SD version's verdicts, as
    log_replay labels them (impersonation skill, tasks the version scores, p >= 0.5)."""
    from mtopt.core.replay import ReplayBuffer, impersonate
    from mtopt.episode_codec import episode_from_proto
    from mtopt.v1 import common_pb2, success_detector_pb2 as sd_pb

    version = sd_stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=30)
    known = {t.name for t in version.tasks}
    buffer = ReplayBuffer(catalogue, capacity_bytes=4 << 30)
    msgs = [common_pb2.Episode.FromString(p[3]) for p in payloads]
    for k in range(0, len(msgs), 32):
        part = msgs[k:k + 32]
        tasks = [[t.name for t in impersonate(catalogue[m.task], catalogue, "skill") if t.name in known] for m in part]
        union = sorted({t for ts in tasks for t in ts})
        reply = sd_stub.Classify(sd_pb.ClassifyRequest(images=[m.final_image for m in part], tasks=union,
                                                       sd_version=version.version), timeout=30)
        col = {t: j for j, t in enumerate(reply.tasks)}
        for m, ts, score in zip(part, tasks, reply.scores):
            buffer.add(episode_from_proto(m, catalogue=catalogue), {t: score.probabilities[col[t]] >= 0.5 for t in ts})
    return buffer, version.version


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--batch", type=int, default=256, help="transitions per batch (128 or 256)")
    parser.add_argument("--episodes", type=int, default=0, help="stored episodes (default 600, quick 300)")
    parser.add_argument("--batches", type=int, default=0, help="batches per timed round (default 60, quick 20)")
    parser.add_argument("--repeats", type=int, default=0, help="timed rounds of each kind (default 5, quick 3)")
    parser.add_argument("--glibc-malloc", action="store_true",
                        help="diagnostic: run log_replay with glibc's default malloc thresholds")
    args = parser.parse_args()
    n_episodes = args.episodes or (300 if args.quick else 600)
    n_batches = args.batches or (20 if args.quick else 60)
    repeats = args.repeats or (3 if args.quick else 5)
    print(f"replay_sample: mode={'quick' if args.quick else 'full'} batch={args.batch} episodes={n_episodes} "
          f"batches/round={n_batches} repeats={repeats} python={platform.python_version()} cpus={os.cpu_count()}", flush=True)

    import grpc

    from mtopt.log_replay.servicer import batch_to_proto
    from mtopt.tasks import TaskCatalogue
    from mtopt.v1 import common_pb2, log_replay_pb2 as lr_pb, log_replay_pb2_grpc as lr_grpc
    from mtopt.v1 import success_detector_pb2_grpc as sd_grpc

    catalogue = TaskCatalogue.load()
    payloads = sim_episode_payloads(n_episodes, seed=3)
    with tempfile.TemporaryDirectory(prefix="mtopt-bench-replay-sample-") as tmp, Stack(Path(tmp)) as stack:
        t0 = time.perf_counter()
        stack.start_core()
        stack.upload(payloads)
        stack.train_sd(min_episodes=n_episodes)
        malloc_env = {"MTOPT_LOG_REPLAY_MALLOC_MMAP_THRESHOLD_BYTES": "0"} if args.glibc_malloc else {}
        replay = stack.start("log_replay", MTOPT_LOG_REPLAY_BUFFER_BYTES=str(1 << 30), MTOPT_LOG_REPLAY_IO_WORKERS="4", **malloc_env)
        wait_until(lambda: replay.metric("mtopt_log_replay_episodes_processed_total") >= n_episodes, 300,
                   "log_replay to buffer every episode")
        print(f"  stack up, SD trained, {n_episodes} episodes buffered in {time.perf_counter() - t0:.1f} s", flush=True)

        buffer, sd_version = labelled_buffer(payloads, sd_grpc.SuccessDetectorStub(stack.procs["success_detector"].channel),
                                             catalogue)
        transitions = sum(ep.num_steps for ep in buffer.episodes.values())
        print(f"  in-process buffer: {len(buffer)} episodes, {transitions} transitions, SD version {sd_version}", flush=True)
        task_protos = [common_pb2.Task(name=t.name, skill=t.skill, description=t.description, index=t.index) for t in catalogue]

        channel = grpc.insecure_channel(replay.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stub = lr_grpc.LogReplayStub(channel)
        rng = np.random.default_rng(0)
        message_bytes = []

        def service_round() -> float:
            request = lr_pb.SampleRequest(batch_size=args.batch, max_batches=n_batches, worker_id="bench")
            got = 0
            for msg in stub.SampleBatches(request, timeout=300):
                got += len(msg.episode_ids)
                if len(message_bytes) < 3:
                    message_bytes.append(msg.ByteSize())
            assert got == args.batch * n_batches, got
            return got

        def inprocess_round() -> float:
            for _ in range(n_batches):
                buffer.sample(args.batch, rng, rebalance=True, success_fraction=0.5)
            return args.batch * n_batches

        def encode_round() -> float:
            for k in range(n_batches):
                batch_to_proto(buffer.sample(args.batch, rng, rebalance=True, success_fraction=0.5), task_protos, sd_version,
                               k).SerializeToString()
            return args.batch * n_batches

        rounds = {"service": service_round, "inprocess": inprocess_round, "encode": encode_round}
        for fn in rounds.values():  # warm-up
            fn()
        rates: dict[str, list[float]] = {k: [] for k in rounds}
        service_cpu: list[float] = []
        for rep in range(repeats):
            order = list(rounds) if rep % 2 == 0 else list(reversed(rounds))
            for name in order:
                c0 = replay.cpu_seconds()
                t0 = time.perf_counter()
                n = rounds[name]()
                dt = time.perf_counter() - t0
                rates[name].append(n / dt)
                if name == "service":
                    service_cpu.append((replay.cpu_seconds() - c0) / n * 1e6)
            print(f"  repeat {rep + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()), flush=True)
        channel.close()

    med = {k: statistics.median(v) for k, v in rates.items()}
    r = lambda x: round(x, 3)  # noqa: E731
    result = {
        "bench": "replay_sample",
        "value": r(med["service"]),
        "unit": "re-balanced transitions/s (SampleBatches stream to one client)",
        "baseline": r(med["inprocess"]),
        "baseline_is": "ReplayBuffer.sample in-process on the same episodes and labels",
        "ratio": r(med["service"] / med["inprocess"]),
        "encode_per_s": r(med["encode"]),
        "encode_ratio": r(med["encode"] / med["inprocess"]),
        "service_runs": [round(x) for x in rates["service"]],
        "inprocess_runs": [round(x) for x in rates["inprocess"]],
        "encode_runs": [round(x) for x in rates["encode"]],
        "log_replay_cpu_us_per_transition": r(statistics.median(service_cpu)),
        "message_mib": r(statistics.mean(message_bytes) / (1 << 20)),
        "batch": args.batch,
        "batches_per_round": n_batches,
        "episodes": n_episodes,
        "transitions": transitions,
        "repeats": repeats,
        "log_replay_malloc_env": malloc_env,
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
    }
    print(f"replay_sample: service {med['service']:.0f} transitions/s vs in-process {med['inprocess']:.0f}/s "
          f"(ratio {result['ratio']:.3f}); in-process sample+encode {med['encode']:.0f}/s", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
