"""Benchmark: episode ingest through episode_store into MinIO vs raw MinIO put_object.

Starts a real MinIO server (the test suite's `run_minio`) and a real episode_store as its own
process (`python -m mtopt.episode_store`, backend s3, configured by environment variables as on
Kubernetes). Episodes come from the simulator (`mtopt.collect.Fleet`, scripted policy, 4-step
episodes, 64x64 PNG images) and are serialized with `mtopt.episode_codec`, as a robot does.

Each repeat runs two rounds over the same serialized bytes, in alternating order:

- **store**: `--uploaders` concurrent uploaders (threads, one gRPC channel each, like robots of
  a fleet) send every episode as the robot agent does -- one `EpisodeStore.PutEpisode` message
  up to the agent's `PUT_EPISODE_MAX_BYTES`, else the `UploadEpisode` stream (header + 1 MiB
  chunks, the agent's `upload_chunks`); `--stream` streams every episode -- and wait for the
  acknowledgement. Each round uses fresh episode ids,
  so every upload is a real store (no duplicate short cut).
- **raw** (the baseline): the same number of threads `put_object` the same bytes into the same
  MinIO with one `minio.Minio` client.

The store's upload path does hashing, parsing and image checks, then one S3 PUT per
commit-log segment, shared by the uploads that arrive together (group commit, layout v3 in
docs/storage.md); raw does one PUT per episode. The bench counts the segments in the bucket
afterwards (`log_batches`, `store_s3_puts_per_episode`). CPU seconds of MinIO, the
store process and this process are read from /proc for each round and reported per episode
(`*_cpu_ms_per_episode`), which is where the time goes.

Not pinned to one core (unlike the algorithm benchmarks): MinIO, the store and the uploaders
are separate processes and share the machine's cores, as they would on one node.

    python bench/ingest.py [--quick] [--uploaders 8] [--episodes 400] [--repeats 5]

The last line printed is one JSON object; value = store episodes/s, baseline = raw episodes/s.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import grpc  # noqa: E402

cv2.setNumThreads(1)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "services"))  # run_minio: the test suite's MinIO launcher

from _stack import ServiceProcess, cpu_seconds  # noqa: E402
from store_harness import run_minio  # noqa: E402

from mtopt.collect import Fleet  # noqa: E402
from mtopt.episode_codec import episode_to_proto  # noqa: E402
from mtopt.serving.s3 import make_minio_client  # noqa: E402
from mtopt.tasks import TaskCatalogue  # noqa: E402
from mtopt.v1 import common_pb2, episode_store_pb2 as es_pb, episode_store_pb2_grpc as es_grpc  # noqa: E402
from mtopt_agent.uploader import PUT_EPISODE_MAX_BYTES, upload_chunks  # noqa: E402

TARGET_RATIO = 0.8
BUCKET = "mtopt"
CHUNK_BYTES = 1 << 20


def make_episodes(count: int, seed: int) -> list[common_pb2.Episode]:
    """Scripted simulator episodes, encoded as a robot encodes them (PNG)."""
    catalogue = TaskCatalogue.load()
    fleet = Fleet(catalogue, num_robots=8, seed=seed, sequence_probability=0.3)
    out = fleet.collect(count, lambda r: catalogue.tasks[r.integers(len(catalogue))], None, max_steps=4)
    return [episode_to_proto(e, policy_name="scripted") for e in out.episodes[:count]]


def fresh_payloads(episodes: list[common_pb2.Episode]) -> list[tuple[common_pb2.Episode, bytes]]:
    """The episodes under new ids (same sizes), serialized: one round's input."""
    out = []
    for msg in episodes:
        m = common_pb2.Episode()
        m.CopyFrom(msg)
        m.episode_id = uuid.uuid4().hex
        out.append((m, m.SerializeToString()))
    return out


def minio_pid(port: int) -> int | None:
    """The MinIO server process listening on ``port`` (started by run_minio)."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                if cmd and cmd[0].endswith(b"minio") and f"127.0.0.1:{port}".encode() in cmd:
                    return int(p.name)
    return None


@contextlib.contextmanager
def run_store(minio, log_path: Path):
    """episode_store as its own process (backend s3), ready when its health says SERVING."""
    proc = ServiceProcess("episode_store", "episode_store", {
        "MTOPT_EPISODE_STORE_BACKEND": "s3", "MTOPT_EPISODE_STORE_S3_ENDPOINT": minio.endpoint,
        "MTOPT_EPISODE_STORE_S3_BUCKET": BUCKET, "MTOPT_S3_ACCESS_KEY": minio.access_key, "MTOPT_S3_SECRET_KEY": minio.secret_key,
    }, log_path)
    try:
        proc.wait_ready(60)
        yield proc.proc, proc.port
    finally:
        proc.stop()


class StoreUploaders:
    """One gRPC channel per uploader thread, like the robots of a fleet."""

    def __init__(self, port: int, uploaders: int, stream: bool = False):
        self.single_max = -1 if stream else PUT_EPISODE_MAX_BYTES
        self.channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(uploaders)]
        self.stubs = [es_grpc.EpisodeStoreStub(c) for c in self.channels]

    def upload_all(self, payloads, pool: ThreadPoolExecutor) -> int:
        n = len(self.stubs)

        def worker(k: int) -> int:
            stored = 0
            for msg, data in payloads[k::n]:
                header = es_pb.UploadEpisodeHeader(episode_id=msg.episode_id, robot_id=msg.robot_id, task=msg.task,
                                                   total_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
                if len(data) <= self.single_max:
                    reply = self.stubs[k].PutEpisode(es_pb.PutEpisodeRequest(header=header, data=data), timeout=60)
                else:
                    reply = self.stubs[k].UploadEpisode(upload_chunks(header, data, CHUNK_BYTES), timeout=60)
                stored += not reply.already_existed
            return stored

        return sum(pool.map(worker, range(n)))

    def count(self) -> int:
        total, token = 0, ""
        while True:
            reply = self.stubs[0].ListEpisodes(es_pb.ListEpisodesRequest(page_size=1000, page_token=token), timeout=60)
            total += len(reply.episodes)
            token = reply.next_page_token
            if not token:
                return total

    def close(self) -> None:
        for c in self.channels:
            c.close()


def raw_put_all(client, payloads, pool: ThreadPoolExecutor, uploaders: int) -> int:
    def worker(k: int) -> int:
        for msg, data in payloads[k::uploaders]:
            client.put_object(BUCKET, f"bench-raw/robot={msg.robot_id}/{msg.episode_id}.pb", io.BytesIO(data), len(data))
        return len(payloads[k::uploaders])

    return sum(pool.map(worker, range(uploaders)))


def timed_round(fn, pids: dict[str, int | None]) -> tuple[float, dict[str, float]]:
    before = {k: cpu_seconds(p) if p else 0.0 for k, p in pids.items()}
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return dt, {k: (cpu_seconds(p) if p else 0.0) - before[k] for k, p in pids.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--uploaders", type=int, default=8, help="concurrent uploaders (robots)")
    parser.add_argument("--episodes", type=int, default=0, help="episodes per round (default 150 quick, 400 full)")
    parser.add_argument("--repeats", type=int, default=0, help="timed repeats (default 3 quick, 5 full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stream", action="store_true", help="upload every episode with the UploadEpisode stream (no PutEpisode)")
    args = parser.parse_args()
    episodes_n = args.episodes or (150 if args.quick else 400)
    repeats = args.repeats or (3 if args.quick else 5)

    print(f"ingest: mode={'quick' if args.quick else 'full'} uploaders={args.uploaders} episodes/round={episodes_n} "
          f"repeats={repeats} python={platform.python_version()} grpc={grpc.__version__} cpus={os.cpu_count()}", flush=True)
    t0 = time.perf_counter()
    episodes = make_episodes(episodes_n, args.seed)
    sizes = [m.ByteSize() for m in episodes]
    print(f"  {len(episodes)} simulator episodes encoded in {time.perf_counter() - t0:.1f} s: mean {statistics.mean(sizes) / 1024:.1f} KiB, "
          f"{statistics.mean(len(m.steps) for m in episodes):.1f} steps", flush=True)

    with tempfile.TemporaryDirectory(prefix="mtopt-bench-ingest-") as tmp:
        (Path(tmp) / "minio").mkdir()
        with run_minio(Path(tmp) / "minio") as minio, run_store(minio, Path(tmp) / "store.log") as (store_proc, port):
            pids = {"minio": minio_pid(int(minio.endpoint.rsplit(":", 1)[1])), "store": store_proc.pid, "client": os.getpid()}
            client, http = make_minio_client(minio.endpoint, minio.access_key, minio.secret_key, max_connections=args.uploaders + 2)
            uploaders = StoreUploaders(port, args.uploaders, stream=args.stream)
            rates: dict[str, list[float]] = {"store": [], "raw": []}
            mbps: dict[str, list[float]] = {"store": [], "raw": []}
            cpu: dict[str, list[dict[str, float]]] = {"store": [], "raw": []}
            stored_total = 0
            with ThreadPoolExecutor(max_workers=args.uploaders, thread_name_prefix="uploader") as pool:
                # warm-up: connections, MinIO's first objects, the store's code paths
                warm = fresh_payloads(episodes[: max(2 * args.uploaders, 16)])
                stored_total += uploaders.upload_all(warm, pool)
                raw_put_all(client, warm, pool, args.uploaders)
                for r in range(repeats):
                    payloads = fresh_payloads(episodes)
                    nbytes = sum(len(d) for _, d in payloads)
                    order = ("store", "raw") if r % 2 == 0 else ("raw", "store")
                    for mode in order:
                        if mode == "store":
                            box = []
                            dt, used = timed_round(lambda: box.append(uploaders.upload_all(payloads, pool)), pids)
                            assert box[0] == len(payloads), f"store acknowledged {box[0]} new episodes of {len(payloads)}"
                            stored_total += box[0]
                        else:
                            dt, used = timed_round(lambda: raw_put_all(client, payloads, pool, args.uploaders), pids)
                        rates[mode].append(len(payloads) / dt)
                        mbps[mode].append(nbytes / dt / 1e6)
                        cpu[mode].append({k: v / len(payloads) * 1e3 for k, v in used.items()})
                        print(f"  repeat {r + 1}/{repeats} {mode:5s}: {len(payloads)} episodes in {dt:.2f} s -> {len(payloads) / dt:7.1f} episodes/s, "
                              f"{nbytes / dt / 1e6:6.2f} MB/s; cpu ms/episode " + " ".join(f"{k}={v:.2f}" for k, v in cpu[mode][-1].items()),
                              flush=True)
            listed = uploaders.count()
            uploaders.close()
            batches = sum(1 for _ in client.list_objects(BUCKET, prefix="index/log/", recursive=True))
            http.clear()
            assert listed == stored_total, f"store lists {listed} episodes, {stored_total} were acknowledged"

    value, baseline = statistics.median(rates["store"]), statistics.median(rates["raw"])
    ratio = value / baseline

    def cpu_med(mode: str, who: str) -> float:
        return round(statistics.median(c[who] for c in cpu[mode]), 3)

    result = {
        "bench": "ingest",
        "value": round(value, 1),
        "unit": "episodes/s",
        "baseline": round(baseline, 1),
        "ratio": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": bool(ratio >= TARGET_RATIO),
        "store_mb_per_s": round(statistics.median(mbps["store"]), 2),
        "raw_mb_per_s": round(statistics.median(mbps["raw"]), 2),
        "min_ratio": round(min(s / r for s, r in zip(rates["store"], rates["raw"])), 3),
        "max_ratio": round(max(s / r for s, r in zip(rates["store"], rates["raw"])), 3),
        **{f"{mode}_{who}_cpu_ms_per_episode": cpu_med(mode, who) for mode in ("store", "raw") for who in ("minio", "store", "client")},
        "episodes_listed": listed,
        "mean_episode_bytes": round(statistics.mean(sizes)),
        "episodes_per_round": episodes_n,
        "uploaders": args.uploaders,
        "repeats": repeats,
        "log_batches": batches,
        "store_s3_puts_per_episode": round(batches / max(stored_total, 1), 3),
        "s3_requests_per_episode": {"store": "1 PUT per commit-log segment", "raw": "1 PUT"},
        "upload_rpc": "UploadEpisode (stream)" if args.stream else "PutEpisode (one message; stream above 3 MiB)",
        "mode": "quick" if args.quick else "full",
        "cpus": os.cpu_count(),
    }
    print(f"ingest: store {value:.1f} episodes/s vs raw put_object {baseline:.1f} episodes/s -> ratio {ratio:.2f} "
          f"(target >= {TARGET_RATIO})", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
