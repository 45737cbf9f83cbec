"""Helpers for the service tests: a real MinIO server process, an event-loop thread for grpc.aio
servers, episode factories and an episode_store harness on a free port (local dir or MinIO).
The fixtures that use them are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import secrets
import shutil
import subprocess
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np

from mtopt.episode import Episode
from mtopt.episode_codec import episode_to_proto
from mtopt.episode_store import EpisodeStoreConfig, start_episode_store
from mtopt.serving.ports import unused_port as free_port
from mtopt.v1 import episode_store_pb2 as es_pb
from mtopt.v1 import episode_store_pb2_grpc as es_grpc

REPO = Path(__file__).resolve().parents[2]


# -- MinIO -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class MinioInfo:
    endpoint: str
    access_key: str
    secret_key: str
    data_dir: Path

    def new_bucket_name(self) -> str:
        return f"test-{uuid.uuid4().hex[:12]}"


def minio_binary() -> Path | None:
    bin_dir = Path(os.environ.get("MTOPT_TOOLS_BIN", REPO / ".tools" / "bin"))
    candidate = bin_dir / "minio"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("minio")
    return Path(found) if found else None


class MinioNotInstalled(RuntimeError):
    pass


@contextlib.contextmanager
def run_minio(data_dir: Path):
    """Starts MinIO on free loopback ports with ``data_dir``, waits until ready, yields MinioInfo."""
    binary = minio_binary()
    if binary is None:
        raise MinioNotInstalled(
            "MinIO server binary not found in .tools/bin (or $MTOPT_TOOLS_BIN, or PATH): "
            "run `bash scripts/install_tools.sh` (needs Go) before the service tests"
        )
    access, secret = "mtopt-test", secrets.token_hex(16)
    env = dict(os.environ, MINIO_ROOT_USER=access, MINIO_ROOT_PASSWORD=secret, MINIO_BROWSER="off",
               MINIO_UPDATE="off", MINIO_CI_CD="1")
    for _ in range(3):  # a free port can be taken between probing and binding: try again
        port, console = free_port(), free_port()
        log_path = data_dir.parent / f"minio-{port}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [str(binary), "server", str(data_dir), "--address", f"127.0.0.1:{port}",
             "--console-address", f"127.0.0.1:{console}", "--quiet"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/minio/health/ready", timeout=1) as r:
                    ready = r.status == 200
            except OSError:
                pass
            if ready:
                break
            time.sleep(0.1)
        if ready:
            break
        proc.kill()
        proc.wait()
        log.close()
    else:
        raise RuntimeError(f"MinIO did not become ready; its log {log_path}:\n{log_path.read_text()[-2000:]}")
    try:
        yield MinioInfo(f"127.0.0.1:{port}", access, secret, data_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- asyncio loop in a thread ------------------------------------------------------------------
class LoopThread:
    """Runs an asyncio loop in a daemon thread so sync test code can drive grpc.aio servers."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-aio-loop", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


# -- episodes ----------------------------------------------------------------------------------
def make_episode(
    episode_id: str | None = None, robot_id: str = "robot-0", task: str = "lift-red", steps: int = 3,
    size: tuple[int, int] = (16, 16), seed: int = 0, end_time: float | None = None,
) -> Episode:
    rng = np.random.default_rng(seed)
    end = time.time() if end_time is None else end_time
    return Episode(
        episode_id=episode_id or uuid.uuid4().hex,
        robot_id=robot_id,
        task=task,
        images=rng.integers(0, 256, (steps + 1, *size, 3), dtype=np.uint8),
        states=rng.random((steps + 1, 2), dtype=np.float32),
        actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
        policy_version=3,
        start_time=end - 1.0,
        end_time=end,
        metadata={"seed": str(seed)},
    )


def chunks(data: bytes, header: dict | None = None, chunk_size: int = 4096, sha256: str | None = None, total: int | None = None):
    """UploadEpisodeChunk messages for serialized episode bytes (header fields overridable)."""
    from mtopt.v1 import common_pb2

    msg = common_pb2.Episode.FromString(data) if header is None else None
    h = dict(
        episode_id=msg.episode_id if msg else "", robot_id=msg.robot_id if msg else "", task=msg.task if msg else "",
        total_bytes=len(data) if total is None else total, sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )
    h.update(header or {})
    out = [es_pb.UploadEpisodeChunk(header=es_pb.UploadEpisodeHeader(**h))]
    out += [es_pb.UploadEpisodeChunk(data=data[i : i + chunk_size]) for i in range(0, len(data), chunk_size)]
    return out


def encode(episode: Episode, **kwargs) -> bytes:
    return episode_to_proto(episode, **kwargs).SerializeToString()


# -- episode_store harness ---------------------------------------------------------------------
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


class StoreHarness:
    """An episode_store in the test loop thread plus a sync client; restartable on the same port."""

    def __init__(self, loop: LoopThread, config: EpisodeStoreConfig, kind: str, backend_factory=None):
        self.loop, self.config, self.kind = loop, config, kind
        self._backend_factory = backend_factory
        self.store = None
        self.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.store.port}", options=CHANNEL_OPTIONS)
        self.stub = es_grpc.EpisodeStoreStub(self.channel)

    def start(self) -> None:
        backend = self._backend_factory() if self._backend_factory else None
        self.store = self.loop.run(start_episode_store(self.config, backend=backend, readiness_interval_s=0.2))
        if self.config.port == 0:  # keep the port across restarts
            self.config = dataclasses.replace(self.config, port=self.store.port)
        self.loop.run(self.store.service.wait_until_ready(30))

    def stop(self, grace_s: float | None = None) -> None:
        if self.store is not None:
            self.loop.run(self.store.stop(grace_s))

    def restart(self, grace_s: float | None = None) -> None:
        self.stop(grace_s)
        self.start()

    @property
    def metrics(self):
        return self.store.metrics

    def metric(self, name: str, **labels) -> float:
        return self.store.metrics.value(name, labels)

    def upload(self, data: bytes, timeout: float = 30, **kwargs) -> es_pb.UploadEpisodeResponse:
        return self.stub.UploadEpisode(iter(chunks(data, **kwargs)), timeout=timeout)

    def list_all(self, **filters) -> list[es_pb.EpisodeSummary]:
        out, token = [], ""
        while True:
            reply = self.stub.ListEpisodes(es_pb.ListEpisodesRequest(page_token=token, **filters), timeout=30)
            out.extend(reply.episodes)
            token = reply.next_page_token
            if not token:
                return out

    def close(self) -> None:
        self.channel.close()
        self.stop(grace_s=0.5)


def store_config(tmp_path: Path, kind: str, minio: MinioInfo | None, **overrides) -> EpisodeStoreConfig:
    base = dict(port=0, host="127.0.0.1", metrics_port=0, grace_s=2.0, watch_poll_s=0.1, io_workers=8,
                max_episode_bytes=1 << 20, image_shape=(16, 16, 3))
    if kind == "local":
        base.update(backend="local", directory=tmp_path / "episodes", fsync=False)
    else:
        assert minio is not None
        base.update(backend="s3", s3_endpoint=minio.endpoint, s3_bucket=minio.new_bucket_name(),
                    s3_access_key=minio.access_key, s3_secret_key=minio.secret_key, watch_settle_s=0.2)
    base.update(overrides)
    return EpisodeStoreConfig(**base)
