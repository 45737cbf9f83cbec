"""Shared by the log_replay / Bellman service benchmarks: the services as real processes
(`python -m mtopt.<service>`, configured by environment variables as `mtopt up` and the chart
configure them, local-directory backends, loopback ports), their metrics and memory, and
simulator episodes uploaded to episode_store.

    with Stack(Path(tmp)) as stack:
        stack.start_core()                          # model_registry, episode_store, success_detector
        stack.upload(sim_episode_payloads(300, seed=0))
        stack.train_sd(min_episodes=300)            # mtopt.sim_labeller: examples + SD version READY
        replay = stack.start("log_replay", MTOPT_LOG_REPLAY_BUFFER_BYTES=str(64 << 20))
        replay.metric("mtopt_log_replay_episodes_processed_total", task="lift-any")
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from mtopt.serving.ports import unused_port as free_port

PREFIXES = {
    "model_registry": "MTOPT_MODEL_REGISTRY_", "episode_store": "MTOPT_EPISODE_STORE_",
    "success_detector": "MTOPT_SUCCESS_DETECTOR_", "log_replay": "MTOPT_LOG_REPLAY_", "trainer": "MTOPT_TRAINER_",
    "bellman": "MTOPT_BELLMAN_",
}
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]


def proc_status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (VmRSS, VmHWM, ...); 0 when unavailable."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class ServiceProcess:
    """One service process on free loopback ports; ``metric()`` scrapes its /metrics."""

    def __init__(self, name: str, service: str, env: dict[str, str], log_path: Path, threads: int = 1):
        self.name, self.service, self.log_path = name, service, log_path
        self.port, self.metrics_port = free_port(), free_port()
        p = PREFIXES[service]
        n = str(threads)
        full = dict(os.environ, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENBLAS_NUM_THREADS=n, MTOPT_THREADS=n,
                    PYTHONUNBUFFERED="1")
        full |= {f"{p}PORT": str(self.port), f"{p}HOST": "127.0.0.1", f"{p}METRICS_PORT": str(self.metrics_port),
                 f"{p}GRACE_S": "2"}
        full |= env
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", f"mtopt.{service}"], env=full, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_ready(self, timeout: float = 120.0) -> "ServiceProcess":
        """Until grpc.health.v1 says SERVING (RuntimeError with the log tail otherwise)."""
        health = health_pb2_grpc.HealthStub(self.channel)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready; its log:\n{self.log_tail()}")
            with contextlib.suppress(grpc.RpcError):
                reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return self
            time.sleep(0.1)

    def metrics(self) -> dict[tuple[str, tuple], float]:
        """Every sample of its /metrics: (name, sorted label items) -> value."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10).read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def metric(self, name: str, **labels) -> float:
        """One sample (0.0 when absent); with no labels, the sum over all label values."""
        samples = self.metrics()
        if labels:
            return samples.get((name, tuple(sorted(labels.items()))), 0.0)
        return sum(v for (n, _), v in samples.items() if n == name)

    def rss_kib(self) -> int:
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int:
        return proc_status_kib(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Stack:
    """The services of one benchmark under ``root`` (data and logs); all stopped on exit."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, ServiceProcess] = {}

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc) -> None:
        for p in reversed(list(self.procs.values())):
            with contextlib.suppress(Exception):
                p.stop()

    def addr(self, name: str) -> str:
        return self.procs[name].address

    def start(self, service: str, name: str | None = None, wait: bool = True, threads: int = 1, **env: str) -> ServiceProcess:
        """Starts ``python -m mtopt.<service>`` with the stack's dependency addresses and a local backend."""
        name = name or service
        p = PREFIXES[service]
        base = {f"{p}BACKEND": "local", f"{p}DIRECTORY": str(self.root / name), f"{p}FSYNC": "false"}
        if service == "bellman":
            base = {"MTOPT_BELLMAN_WORKER_ID": name, "MTOPT_BELLMAN_THREADS": str(threads), "MTOPT_BELLMAN_DEVICE": "cpu"}
        deps = {"success_detector": {"REGISTRY_ADDRESS": "model_registry"}, "trainer": {"REGISTRY_ADDRESS": "model_registry"},
                "log_replay": {"STORE_ADDRESS": "episode_store", "SUCCESS_DETECTOR_ADDRESS": "success_detector"},
                "bellman": {"LOG_REPLAY_ADDRESS": "log_replay", "TRAINER_ADDRESS": "trainer",
                            "REGISTRY_ADDRESS": "model_registry"}}.get(service, {})
        base |= {f"{p}{k}": self.addr(v) for k, v in deps.items()}
        if service == "trainer":
            base |= {"MTOPT_TRAINER_THREADS": str(threads), "MTOPT_TRAINER_DEVICE": "cpu"}
        proc = ServiceProcess(name, service, base | env, self.root / f"{name}.log", threads)
        self.procs[name] = proc
        return proc.wait_ready() if wait else proc

    def stop(self, name: str) -> None:
        self.procs.pop(name).stop()

    def start_core(self, sd_channels: int = 16) -> None:
        """model_registry, episode_store (64x64x3 images) and success_detector, ready."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.start("model_registry", MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS="latest")
        self.start("episode_store", MTOPT_EPISODE_STORE_IMAGE_SHAPE="64,64,3")
        self.start("success_detector", MTOPT_SUCCESS_DETECTOR_CHANNELS=str(sd_channels), MTOPT_SUCCESS_DETECTOR_REFRESH_S="0.5")

    def upload(self, payloads: list[tuple[str, str, str, bytes]], uploaders: int = 4, store: str = "episode_store") -> None:
        """UploadEpisode of (episode_id, robot_id, task, bytes), ``uploaders`` channels at once."""
        from mtopt.v1 import episode_store_pb2 as es_pb, episode_store_pb2_grpc as es_grpc
        from mtopt_agent.uploader import upload_chunks

        channels = [grpc.insecure_channel(self.addr(store)) for _ in range(uploaders)]

        def worker(k: int) -> None:
            stub = es_grpc.EpisodeStoreStub(channels[k])
            for eid, robot, task, data in payloads[k::uploaders]:
                header = es_pb.UploadEpisodeHeader(episode_id=eid, robot_id=robot, task=task, total_bytes=len(data),
                                                   sha256=hashlib.sha256(data).hexdigest())
                stub.UploadEpisode(upload_chunks(header, data, 1 << 20), timeout=60)

        try:
            with ThreadPoolExecutor(uploaders) as pool:
                list(pool.map(worker, range(uploaders)))
        finally:
            for c in channels:
                c.close()

    def train_sd(self, min_episodes: int, examples_per_task: int = 24, train_steps: int = 150, timeout: float = 300,
                 store: str = "episode_store") -> None:
        """Runs the simulated labeller (`python -m mtopt.sim_labeller`): it labels final images of
        the stored episodes from their ground truth and trains + promotes an SD version."""
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MTOPT_THREADS="1",
                   MTOPT_SIM_LABELLER_STORE_ADDRESS=self.addr(store),
                   MTOPT_SIM_LABELLER_SUCCESS_DETECTOR_ADDRESS=self.addr("success_detector"),
                   MTOPT_SIM_LABELLER_MIN_EPISODES=str(min_episodes), MTOPT_SIM_LABELLER_EXAMPLES_PER_TASK=str(examples_per_task),
                   MTOPT_SIM_LABELLER_TRAIN_STEPS=str(train_steps))
        log = self.root / "labeller.log"
        with open(log, "wb") as out:
            rc = subprocess.run([sys.executable, "-m", "mtopt.sim_labeller"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        if rc != 0:
            raise RuntimeError(f"sim_labeller exited {rc}; its log:\n{log.read_text()[-3000:]}")


def sim_episode_payloads(count: int, seed: int, max_steps: int = 4) -> list[tuple[str, str, str, bytes]]:
    """Scripted simulator episodes of random tasks with ground truth, serialized as a robot
    does (PNG): (episode_id, robot_id, task, bytes)."""
    from mtopt.collect import Fleet
    from mtopt.episode_codec import episode_to_proto
    from mtopt.tasks import TaskCatalogue

    catalogue = TaskCatalogue.load()
    out = Fleet(catalogue, num_robots=8, seed=seed).collect(count, lambda r: catalogue.tasks[r.integers(len(catalogue))], None,
                                                             max_steps=max_steps)
    payloads = []
    for ep, gt in zip(out.episodes[:count], out.ground_truth):
        truth = {t.name: bool(gt[j]) for j, t in enumerate(catalogue.tasks)}
        msg = episode_to_proto(ep, ground_truth_success=truth, policy_name="scripted")
        payloads.append((msg.episode_id, msg.robot_id, msg.task, msg.SerializeToString()))
    return payloads


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.2):
    """Polls ``predicate()`` until it returns a truthy value (returned); TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll_s)
