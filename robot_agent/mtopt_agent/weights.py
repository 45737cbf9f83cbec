"""Parameter sources: where the robot's learned policy comes from (Acme's VariableSource role).

`RegistryParameterSource` follows the model registry for one model (``q_function``) and one
robot. In ``watch`` mode it holds a ``WatchVersions`` stream with the robot id, so the registry
pushes a RESOLVED event whenever the version this robot should run changes (a new version under
the followed alias, a pin, an unpin, a rollback): no polling. In ``poll`` mode (or when the
registry does not implement the watch) it calls ``Resolve`` every few seconds. Either way the
registry decides pin versus alias, so a per-robot pin is honoured, and a move to an *older*
version (pin, rollback) is followed like a move to a newer one.

For a new target version it downloads the ONNX artifacts (``q_tower.onnx``, ``q_head.onnx``)
with the ``GetArtifact`` stream (resuming at the byte where a broken stream stopped), checks
their size and sha256, checks that the model's task slots agree with the local catalogue,
builds an `OnnxCEMPolicy`, runs it once on a probe observation, and only then offers it through
`latest()`. The agent swaps policies between episodes, never inside one. A version that fails
for a reason a retry cannot fix (bad hash, unloadable model, task mismatch) is skipped until a
different version is resolved; the robot keeps running what it had (or the scripted bootstrap
policy while no version has ever loaded).

Usage::

    source = RegistryParameterSource(ModelRegistryStub(channel), robot_id="sim-0", catalogue=catalogue)
    source.start()                      # a daemon thread
    for each episode:
        loaded = source.latest()        # never blocks; None until some version has loaded
        if loaded is not None and loaded.version != running_version:
            policy, running_version = loaded.policy, loaded.version
    source.close()
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
import random
import threading
from pathlib import Path
from typing import Callable, Protocol

import grpc
import numpy as np

from mtopt.onnx_policy import HEAD_FILE, TOWER_FILE, OnnxCEMPolicy
from mtopt.robot import Observation
from mtopt.serving.client import RetryPolicy
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, model_registry_pb2 as mr_pb

from mtopt_agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

ARTIFACT_NAMES = (TOWER_FILE, HEAD_FILE)
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
                        grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})


class Policy(Protocol):
    """What the agent calls each step: an action for an observation and a task slot."""

    def __call__(self, obs: Observation, task_index: int) -> np.ndarray: ...


PolicyFactory = Callable[[dict[str, bytes], common_pb2.ModelVersion], Policy]
"""Builds a policy from downloaded artifacts ({file name: bytes}) and their ModelVersion."""


class BadVersionError(Exception):
    """A model version this robot cannot run; retrying will not help (until another version)."""


class _DownloadFailed(Exception):
    """Fetching a version failed for a reason a later try may not have (registry unreachable)."""


@dataclasses.dataclass(frozen=True)
class LoadedPolicy:
    """A policy ready to run, with the registry version it came from."""

    version: int
    policy: Policy
    how: str
    """Why this version: "pin", "alias" (Resolve), "watch" (a RESOLVED event) or "directory"."""
    model_version: common_pb2.ModelVersion | None = None


class ParameterSource(abc.ABC):
    """The newest policy this robot should run; see the module docstring for the usage loop."""

    def start(self) -> None:
        """Starts following the source (a no-op for static sources)."""

    @abc.abstractmethod
    def latest(self) -> LoadedPolicy | None:
        """The policy to run from the next episode on; None while there is none. Never blocks."""

    def close(self) -> None:
        """Stops following. Idempotent."""


class StaticParameterSource(ParameterSource):
    """A fixed policy: an ONNX directory on an offline robot, or a test double."""

    def __init__(self, loaded: LoadedPolicy | None):
        self._loaded = loaded

    @classmethod
    def from_directory(cls, directory: str | Path, *, version: int = 0, **policy_kwargs) -> "StaticParameterSource":
        """q_tower.onnx + q_head.onnx from ``directory``; ``version`` is what episodes report."""
        return cls(LoadedPolicy(version, OnnxCEMPolicy.from_directory(directory, **policy_kwargs), "directory"))

    def latest(self) -> LoadedPolicy | None:
        return self._loaded


def onnx_policy_factory(*, iterations: int = 2, samples: int = 64, elites: int = 6, seed: int | None = None) -> PolicyFactory:
    """The default factory: greedy CEM on ONNX Runtime (exploration is the agent's job)."""
    rng = np.random.default_rng(seed)

    def build(artifacts: dict[str, bytes], version: common_pb2.ModelVersion) -> Policy:
        return OnnxCEMPolicy.from_bytes(artifacts, iterations=iterations, samples=samples, elites=elites, epsilon=0.0,
                                        seed=int(rng.integers(1 << 31)))

    return build


def check_tasks(version: common_pb2.ModelVersion, catalogue: TaskCatalogue | None) -> None:
    """BadVersionError if the model gives a local task another one-hot slot."""
    if catalogue is None or not version.tasks:
        return
    model_slots = {t.name: t.index for t in version.tasks}
    wrong = [f"{t.name} (here {t.index}, model {model_slots[t.name]})" for t in catalogue
             if t.name in model_slots and model_slots[t.name] != t.index]
    if wrong:
        raise BadVersionError(
            f"version {version.version} was trained with other task slots: {', '.join(wrong)}; "
            "give the robot the trainer's task catalogue (MTOPT_TASKS)"
        )


class RegistryParameterSource(ParameterSource):
    """Follows model_registry for one robot; see the module docstring."""

    def __init__(
        self,
        stub,
        *,
        robot_id: str,
        model: str = "q_function",
        alias: str = "",
        mode: str = "watch",
        poll_interval_s: float = 5.0,
        rpc_timeout_s: float = 10.0,
        download_timeout_s: float = 60.0,
        policy_factory: PolicyFactory | None = None,
        catalogue: TaskCatalogue | None = None,
        probe: Callable[[Policy], None] | None = None,
        metrics: AgentMetrics | None = None,
        backoff: RetryPolicy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=5.0),
        download_attempts: int = 5,
        min_model_step: int = 0,
    ):
        """
        Args:
          stub: a ``ModelRegistryStub``.
          alias: followed when the robot is not pinned; "" is the registry's default alias.
          mode: "watch" (stream, falls back to poll on UNIMPLEMENTED) or "poll".
          probe: called with each freshly built policy (e.g. one action on a real
            observation); an exception marks the version bad instead of crashing an episode.
        """
        if mode not in ("watch", "poll"):
            raise ValueError(f"mode must be watch or poll, got {mode!r}")
        self.stub, self.robot_id, self.model, self.alias, self.mode = stub, robot_id, model, alias, mode
        self.poll_interval_s, self.rpc_timeout_s, self.download_timeout_s = poll_interval_s, rpc_timeout_s, download_timeout_s
        self.policy_factory = policy_factory or onnx_policy_factory()
        self.catalogue, self.probe = catalogue, probe
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.backoff, self.download_attempts = backoff, download_attempts
        self.min_model_step = min_model_step
        self._rng = random.Random()
        self._cond = threading.Condition()
        self._latest: LoadedPolicy | None = None
        self._bad: dict[int, str] = {}
        self._stop = threading.Event()
        self._call = None
        self._thread: threading.Thread | None = None

    # -- ParameterSource ---------------------------------------------------------------------
    def latest(self) -> LoadedPolicy | None:
        with self._cond:
            return self._latest

    def wait_for(self, version: int, timeout: float | None = None) -> bool:
        """Blocks until ``version`` is loaded (tests, benchmarks)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._latest is not None and self._latest.version == version, timeout)

    @property
    def bad_versions(self) -> dict[int, str]:
        """Versions skipped for good, with the reason."""
        with self._cond:
            return dict(self._bad)

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("RegistryParameterSource.start() called twice")
        self._thread = threading.Thread(target=self._run, name="parameter-source", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- following the registry --------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            if self.mode == "watch":
                try:
                    self._watch()
                    failures = 0  # the stream ended cleanly (e.g. a registry restart): reconnect
                except _DownloadFailed as e:
                    failures += 1
                    log.warning("%s; retrying", e)
                except grpc.RpcError as e:
                    if self._stop.is_set():
                        break
                    if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                        log.warning("model registry has no WatchVersions; polling Resolve every %.1fs", self.poll_interval_s)
                        self.mode = "poll"
                        continue
                    failures += 1
                    self.metrics.weight_errors.labels("watch").inc()
                    if failures & (failures - 1) == 0:
                        log.warning("registry watch failed (%s: %s); reconnecting", e.code().name, e.details())
                self._stop.wait(min(self.poll_interval_s, self.backoff.backoff_s(max(failures, 1), self._rng)))
            else:
                try:
                    self._poll()
                except _DownloadFailed as e:
                    log.warning("%s; next try in %.1fs", e, self.poll_interval_s)
                except grpc.RpcError as e:
                    self.metrics.weight_errors.labels("resolve").inc()
                    log.warning("registry Resolve failed (%s: %s); next try in %.1fs", e.code().name, e.details(), self.poll_interval_s)
                self._stop.wait(self.poll_interval_s)

    def _watch(self) -> None:
        """One WatchVersions stream; returns when it ends, raises RpcError when it breaks."""
        request = mr_pb.WatchVersionsRequest(model=self.model, robot_id=self.robot_id, alias=self.alias, send_initial=True)
        self._call = self.stub.WatchVersions(request)  # long-lived on purpose: no deadline
        try:
            if self._stop.is_set():
                return
            for event in self._call:
                if event.type == mr_pb.VERSION_EVENT_TYPE_RESOLVED and event.robot_id in ("", self.robot_id):
                    self._follow(event.version, "watch")
                if self._stop.is_set():
                    return
        finally:
            call, self._call = self._call, None
            if call is not None:
                call.cancel()  # no-op when the stream already ended

    def _poll(self) -> None:
        """One Resolve; NOT_FOUND means no version exists yet."""
        request = mr_pb.ResolveRequest(model=self.model, robot_id=self.robot_id, alias=self.alias)
        try:
            reply = self.stub.Resolve(request, timeout=self.rpc_timeout_s)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        how = "pin" if reply.source == mr_pb.RESOLVE_SOURCE_PIN else "alias"
        self._follow(reply.version, how)

    def _follow(self, version: common_pb2.ModelVersion, how: str) -> None:
        """Loads ``version`` unless it is already loaded, absent (0) or known bad.

        Transient failures (download) raise _DownloadFailed so the caller retries (a watch
        reconnects and gets the current RESOLVED again; a poll tries next interval).
        """
        v = int(version.version)
        with self._cond:
            if v <= 0 or (self._latest is not None and self._latest.version == v) or v in self._bad:
                return
        if version.step < self.min_model_step:
            log.info("%s version %d is at step %d < MTOPT_AGENT_MIN_MODEL_STEP=%d: not loaded", self.model, v, version.step,
                     self.min_model_step)
            return
        try:
            loaded = self._load(version, how)
        except BadVersionError as e:
            self.metrics.weight_errors.labels("load").inc()
            with self._cond:
                self._bad[v] = str(e)
            log.error("cannot run %s version %d, keeping the current policy: %s", self.model, v, e)
            return
        except grpc.RpcError as e:
            self.metrics.weight_errors.labels("download").inc()
            raise _DownloadFailed(f"fetching {self.model} version {v} failed ({e.code().name}: {e.details()})") from e
        with self._cond:
            self._latest = loaded
            self._cond.notify_all()
        log.info("%s version %d ready (%s); the robot switches at the next episode", self.model, v, how)

    # -- loading -----------------------------------------------------------------------------
    def _load(self, version: common_pb2.ModelVersion, how: str) -> LoadedPolicy:
        names = {a.name for a in version.artifacts}
        if not all(n in names for n in ARTIFACT_NAMES):
            version = self.stub.GetVersion(mr_pb.GetModelVersionRequest(model=self.model, version=version.version),
                                           timeout=self.rpc_timeout_s)
        check_tasks(version, self.catalogue)
        by_name = {a.name: a for a in version.artifacts}
        missing = [n for n in ARTIFACT_NAMES if n not in by_name]
        if missing:
            raise BadVersionError(f"version {version.version} has no {', '.join(missing)}; publish the ONNX export "
                                  "(mtopt.core.export) with every q_function version")
        artifacts = {n: self._download(version.version, by_name[n]) for n in ARTIFACT_NAMES}
        try:
            policy = self.policy_factory(artifacts, version)
            if self.probe is not None:
                self.probe(policy)
        except Exception as e:  # noqa: BLE001 - whatever ONNX Runtime or the probe raise: not runnable
            raise BadVersionError(f"version {version.version} does not run: {type(e).__name__}: {e}") from e
        return LoadedPolicy(int(version.version), policy, how, version)

    def _download(self, version: int, artifact: common_pb2.Artifact) -> bytes:
        """One artifact, resuming after transient errors, checked against its size and sha256."""
        buf = bytearray()
        attempt = 0
        while True:
            request = mr_pb.GetArtifactRequest(model=self.model, version=version, name=artifact.name, offset=len(buf))
            try:
                for chunk in self.stub.GetArtifact(request, timeout=self.download_timeout_s):
                    if chunk.offset != len(buf):
                        raise BadVersionError(f"{artifact.name} of version {version}: chunk at offset {chunk.offset}, expected {len(buf)}")
                    buf += chunk.data
                    if artifact.size_bytes and len(buf) > artifact.size_bytes:
                        raise BadVersionError(f"{artifact.name} of version {version} is longer than its {artifact.size_bytes} bytes")
                break
            except grpc.RpcError as e:
                attempt += 1
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    raise BadVersionError(f"{artifact.name} of version {version} not found: {e.details()}") from None
                if e.code() not in _TRANSIENT or attempt >= self.download_attempts or self._stop.is_set():
                    raise
                self._stop.wait(self.backoff.backoff_s(attempt, self._rng))
        if artifact.size_bytes and len(buf) != artifact.size_bytes:
            raise BadVersionError(f"{artifact.name} of version {version}: got {len(buf)} bytes, expected {artifact.size_bytes}")
        digest = hashlib.sha256(buf).hexdigest()
        if artifact.sha256 and digest != artifact.sha256:
            raise BadVersionError(f"{artifact.name} of version {version}: sha256 {digest} does not match {artifact.sha256}")
        return bytes(buf)

