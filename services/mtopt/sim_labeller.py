"""The simulated labeller: labels final images from the simulator's ground truth and trains the
first success-detector version, the job a human labelling team does for a real fleet.

It follows episode_store from the beginning, keeps the final image and the ground truth
(`Episode.ground_truth_success`, which only simulated robots report) of every stored episode,
and once `min_episodes` have arrived it picks `examples_per_task` examples per task (half
positive, negatives preferring near misses: `mtopt.core.success_detector.select_examples`), adds
them with `SuccessDetector.AddExamples` (idempotent ids "<episode_id>/<task>") and asks for a new
version with `TrainVersion(promote_when_ready=True)`. It exits 0 once that version is READY,
unless ``refresh_every_s`` > 0: then it keeps following the store and, every refresh_every_s
seconds, labels final images of the episodes stored since its last round, half of them images
the serving SD calls a success, and trains a new promoted SD version (continuous labelling, see
`mtopt.sim_labeller_refresh`); it runs until SIGTERM. Nothing in the learning pipeline reads the
ground truth: the SD is the only reward.

    MTOPT_SIM_LABELLER_STORE_ADDRESS=localhost:50051 \\
    MTOPT_SIM_LABELLER_SUCCESS_DETECTOR_ADDRESS=localhost:50052 python -m mtopt.sim_labeller
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge

from mtopt.serving.cli import config_main
from mtopt.serving.client import RetryPolicy, make_channel, retry_idempotent
from mtopt.serving.config import check, from_env
from mtopt.serving.metrics import MetricsServer
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import common_pb2, episode_store_pb2 as es_pb, episode_store_pb2_grpc as es_grpc
from mtopt.v1 import success_detector_pb2 as sd_pb, success_detector_pb2_grpc as sd_grpc

PREFIX = "MTOPT_SIM_LABELLER_"
log = logging.getLogger("mtopt.sim_labeller")


@dataclasses.dataclass(frozen=True)
class LabellerConfig:
    """Settings of the simulated labeller (MTOPT_SIM_LABELLER_*)."""

    store_address: str = "localhost:50051"
    """gRPC target of episode_store."""
    success_detector_address: str = "localhost:50052"
    """gRPC target of success_detector."""
    examples_per_task: int = 200
    """Labelled final images per task (half positive where the data allows)."""
    min_episodes: int = 600
    """Stored episodes with ground truth to wait for before labelling."""
    train_steps: int = 0
    """SD training steps; 0: the success_detector's default."""
    add_batch: int = 64
    """Examples per AddExamples call."""
    metrics_port: int = 0
    """Prometheus port (0: none)."""
    seed: int = 0
    rpc_timeout_s: float = 30.0
    train_timeout_s: float = 1800.0
    """How long to wait for the SD version to become READY."""
    refresh_every_s: float = 0.0
    """Seconds between continuous-labelling rounds once the first version is READY (0: exit 0 then)."""
    refresh_labels_per_task: int = 10
    """Labels per task in a round: up to half on images the serving SD calls a success, the rest random."""
    refresh_train_steps: int = 300
    """Training steps of a round's SD version (warm-started from the serving one; 0: the success_detector's default)."""
    refresh_warm_start: bool = True
    """Warm-start a round's SD version from the serving version (else train from scratch)."""
    refresh_focus_share: float = 0.5
    """Share of every training batch of a round's SD version drawn from the labels of the refresh
    rounds (source "sim_on_policy"), the rest from the first version's examples. 0: all drawn
    equally, where a round's ~130 labels among thousands are each seen about once
    (docs/results.md 1n)."""
    refresh_train_timeout_s: float = 600.0
    """How long a round waits for its version to become READY (still training: checked again next round)."""
    refresh_max_episodes: int = 4096
    """Most episodes kept between two rounds (the newest)."""
    classify_batch: int = 256
    """Images per Classify call in a round."""
    sd_threshold: float = 0.5
    """P(success) at or above which the SD calls an image a success (as log_replay's sd_threshold)."""

    def __post_init__(self):
        v = lambda name: PREFIX + name.upper()  # noqa: E731
        check(self.examples_per_task >= 2, v("examples_per_task"), "must be >= 2")
        check(self.min_episodes >= 1, v("min_episodes"), "must be >= 1")
        check(self.train_steps >= 0, v("train_steps"), "must be >= 0")
        check(1 <= self.add_batch <= 1000, v("add_batch"), "must lie in [1, 1000]")
        check(self.refresh_every_s >= 0, v("refresh_every_s"), "must be >= 0 (0: no continuous labelling)")
        check(self.refresh_labels_per_task >= 1, v("refresh_labels_per_task"), "must be >= 1")
        check(self.refresh_train_steps >= 0, v("refresh_train_steps"), "must be >= 0")
        check(0.0 <= self.refresh_focus_share < 1.0, v("refresh_focus_share"), f"must lie in [0, 1), got {self.refresh_focus_share}")
        check(self.refresh_train_timeout_s > 0, v("refresh_train_timeout_s"), "must be > 0")
        check(self.refresh_max_episodes >= 1, v("refresh_max_episodes"), "must be >= 1")
        check(1 <= self.classify_batch <= 1024, v("classify_batch"), "must lie in [1, 1024]")
        check(0.0 <= self.sd_threshold <= 1.0, v("sd_threshold"), f"must lie in [0, 1], got {self.sd_threshold}")


def load_config(environ=None, **overrides) -> LabellerConfig:
    return from_env(LabellerConfig, PREFIX, os.environ if environ is None else environ, **overrides)


@dataclasses.dataclass
class _Pool:
    """Final images and ground truth of the episodes seen so far."""

    episode_ids: list[str] = dataclasses.field(default_factory=list)
    images: list[common_pb2.Image] = dataclasses.field(default_factory=list)
    outcomes: list[list[bool]] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return len(self.episode_ids)


class SimLabeller:
    """Collects ground truth from the store, then labels examples and trains one SD version.

    Usage::

        labeller = SimLabeller(config, TaskCatalogue.load(os.environ.get("MTOPT_TASKS") or None))
        version = labeller.run(stop_event)     # blocks; the READY SD version, or None if stopped
    """

    def __init__(self, config: LabellerConfig, catalogue: TaskCatalogue, registry: CollectorRegistry | None = None):
        self.config, self.catalogue = config, catalogue
        self.metrics_registry = registry if registry is not None else CollectorRegistry()
        self.seen = Counter("mtopt_sim_labeller_episodes_seen_total", "Stored episodes read.", registry=self.metrics_registry)
        self.added = Counter("mtopt_sim_labeller_examples_added_total", "Examples added to the SD.", registry=self.metrics_registry)
        self.version = Gauge("mtopt_sim_labeller_sd_version", "SD version trained by the labeller (0: none yet).",
                             registry=self.metrics_registry)
        self.retry = RetryPolicy(max_attempts=8, initial_backoff_s=0.2, max_backoff_s=5.0)
        self._store = make_channel(config.store_address, default_timeout_s=config.rpc_timeout_s)
        self._sd = make_channel(config.success_detector_address, default_timeout_s=config.rpc_timeout_s)
        self.store = es_grpc.EpisodeStoreStub(self._store)
        self.sd = sd_grpc.SuccessDetectorStub(self._sd)
        self.trainable: list[str] = [t.name for t in catalogue.tasks]
        self.cursor = ""
        """Position in the store's commit log after the last episode read (follow() resumes there)."""

    def close(self) -> None:
        self._store.close()
        self._sd.close()

    def run(self, stop: threading.Event) -> int | None:
        pool = self.collect(stop)
        if pool is None:
            return None
        self.add_examples(pool)
        return self.train(stop)

    def collect(self, stop: threading.Event) -> _Pool | None:
        """Follows the store (backfill, then live) until min_episodes with ground truth arrived."""
        pool = _Pool()

        def keep(episode_id: str, image: common_pb2.Image, outcomes: list[bool]) -> bool:
            pool.episode_ids.append(episode_id)
            pool.images.append(image)
            pool.outcomes.append(outcomes)
            return len(pool) >= self.config.min_episodes

        return pool if self.follow(stop, keep) else None

    def follow(self, stop: threading.Event, handle: Callable[[str, common_pb2.Image, list[bool]], bool]) -> bool:
        """Reads every stored episode after ``self.cursor`` (the backlog, then live) and calls
        ``handle(episode_id, final_image, ground truth per catalogue task)`` for each one with
        ground truth, until it returns True (then True) or ``stop`` is set (then False)."""
        names = [t.name for t in self.catalogue.tasks]
        while not stop.is_set():
            call = self.store.WatchEpisodes(es_pb.WatchEpisodesRequest(cursor=self.cursor, backfill=True), timeout=None)
            stopper = threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True)
            stopper.start()
            try:
                for event in call:
                    if event.type != es_pb.EPISODE_EVENT_TYPE_STORED:
                        continue
                    reply = retry_idempotent(
                        lambda: self.store.GetEpisode(es_pb.GetEpisodeRequest(episode_id=event.episode.episode_id)), self.retry)
                    self.cursor = event.cursor
                    ep = reply.episode
                    self.seen.inc()
                    if not ep.ground_truth_success:
                        continue  # a real robot: nothing to label from
                    if handle(ep.episode_id, ep.final_image, [bool(ep.ground_truth_success.get(n, False)) for n in names]):
                        call.cancel()
                        return True
            except grpc.RpcError as e:
                if stop.is_set():
                    return False
                if e.code() != grpc.StatusCode.CANCELLED:
                    log.warning("watch of episode_store broke (%s), resuming: %s", e.code().name, e.details())
                    stop.wait(1.0)
        return False

    def add_examples(self, pool: _Pool) -> int:
        from mtopt.core.success_detector import select_examples  # numpy-only helper

        rng = np.random.default_rng(self.config.seed)
        outcomes = np.asarray(pool.outcomes, dtype=bool)
        chosen = select_examples(np.arange(len(pool)), outcomes, self.catalogue, self.config.examples_per_task, rng)
        by_index = {t.index: t.name for t in self.catalogue.tasks}
        examples = [
            sd_pb.LabelledExample(
                example_id=f"{pool.episode_ids[i]}/{by_index[int(t)]}", image=pool.images[i], task=by_index[int(t)],
                success=bool(label), source="sim_ground_truth", episode_id=pool.episode_ids[i],
            )
            for i, t, label in zip(chosen.images.tolist(), chosen.tasks.tolist(), chosen.labels.tolist())
        ]
        for k in range(0, len(examples), self.config.add_batch):
            batch = examples[k : k + self.config.add_batch]
            reply = retry_idempotent(lambda: self.sd.AddExamples(sd_pb.AddExamplesRequest(examples=batch)), self.retry)
            self.added.inc(reply.added)
        log.info("labelled %d examples from %d episodes (%d positive)", len(examples), len(pool), int(chosen.labels.sum()))
        # the SD can learn a task only from both kinds of example; the others wait for more data
        self.trainable = sorted(by_index[int(t)] for t in set(chosen.tasks.tolist())
                                if chosen.labels[chosen.tasks == t].any() and not chosen.labels[chosen.tasks == t].all())
        skipped = sorted(set(by_index.values()) - set(self.trainable))
        if skipped:
            log.info("no positive or no negative example yet for %s: the SD version will not score them", ", ".join(skipped))
        return len(examples)

    def train(self, stop: threading.Event) -> int | None:
        request = sd_pb.TrainVersionRequest(request_id=f"sim-labeller/{self.config.seed}/{hashlib.sha256(','.join(self.trainable).encode()).hexdigest()[:16]}",
                                            tasks=self.trainable, train_steps=self.config.train_steps, promote_when_ready=True)
        version = retry_idempotent(lambda: self.sd.TrainVersion(request), self.retry).version
        log.info("training success detector version %d", version.version)
        deadline = time.monotonic() + self.config.train_timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            got = retry_idempotent(lambda: self.sd.GetVersion(sd_pb.GetSdVersionRequest(version=version.version)), self.retry)
            if got.state == sd_pb.SD_VERSION_STATE_READY:
                self.version.set(got.version)
                log.info("success detector version %d READY: %s", got.version,
                         ", ".join(f"{k}={v:.2f}" for k, v in sorted(got.metrics.items()) if "/" not in k.partition("/")[2]))
                return int(got.version)
            if got.state == sd_pb.SD_VERSION_STATE_FAILED:
                raise RuntimeError(f"success detector version {got.version} failed: {got.error}")
            stop.wait(1.0)
        if not stop.is_set():
            raise TimeoutError(f"success detector version {version.version} not READY after {self.config.train_timeout_s} s")
        return None


def serve(config: LabellerConfig) -> None:
    from mtopt.sim_labeller_refresh import RefreshLoop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    labeller = SimLabeller(config, TaskCatalogue.load(os.environ.get("MTOPT_TASKS") or None))
    refresh = RefreshLoop(labeller) if config.refresh_every_s > 0 else None
    metrics = MetricsServer(labeller.metrics_registry, config.metrics_port) if config.metrics_port else None
    if metrics is not None:
        metrics.start()
    try:
        version = labeller.run(stop)
        if refresh is not None and version is not None:
            refresh.run(stop)  # until SIGTERM
    finally:
        labeller.close()
        if metrics is not None:
            metrics.stop()


def main(argv: list[str] | None = None) -> int:
    return config_main("sim_labeller", LabellerConfig, PREFIX, load_config, lambda: serve, argv)


if __name__ == "__main__":
    sys.exit(main())
