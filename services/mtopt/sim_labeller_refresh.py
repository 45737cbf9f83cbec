"""Continuous labelling: the simulated labeller's refresh mode (``refresh_every_s`` > 0).

A success detector trained once, on scripted episodes, has false positives the learning policy
finds and exploits (docs/results.md 1c: an open gripper over an empty plate called "object on
plate"). A labelling team therefore keeps labelling what the robots do now. Every
``refresh_every_s`` seconds, over the episodes stored since the previous round, this loop:

1. asks success_detector (Classify on the serving version, batched) for its verdict on each
   final image for each task the version knows;
2. picks per catalogue task up to ``refresh_labels_per_task / 2`` images the SD calls a success
   (where the policy finds the false positives) plus random others up to
   ``refresh_labels_per_task``, and labels them from the simulator's ground truth;
3. adds them with AddExamples (ids "<episode_id>/<task>": a restarted labeller re-adds nothing);
4. trains a new version on every example so far, warm-started from the serving one, with the
   refresh labels (source ``ON_POLICY_SOURCE``) filling ``refresh_focus_share`` of every batch,
   TrainVersion(promote_when_ready=True), and waits (bounded) for READY. log_replay sees the new
   serving version and relabels its buffers.

A round with no new episodes does nothing. A failed or slow training never ends the loop: it is
logged, and the next round trains again (after a still-training version has finished).

Usage::

    labeller = SimLabeller(config, catalogue)
    refresh = RefreshLoop(labeller)        # registers its metrics on labeller.metrics_registry
    labeller.run(stop)                     # the first version
    refresh.run(stop)                      # follows the store, a round every refresh_every_s, until stop
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import threading
import time

import grpc
import numpy as np
from prometheus_client import Counter, Gauge

from mtopt.serving.client import retry_idempotent
from mtopt.v1 import common_pb2, success_detector_pb2 as sd_pb

log = logging.getLogger("mtopt.sim_labeller")

ROUND_RESULTS = ("trained", "no_new_episodes", "no_new_labels", "still_training", "train_failed", "train_timeout", "error")
"""Values of the ``result`` label of mtopt_sim_labeller_refresh_rounds_total."""
OUTCOMES = ("positive", "negative")
ON_POLICY_SOURCE = "sim_on_policy"
"""LabelledExample.source of the refresh rounds' labels (the first version's are "sim_ground_truth")."""


@dataclasses.dataclass
class RoundReport:
    """What one round did."""

    result: str
    """One of ROUND_RESULTS."""
    episodes: int = 0
    """Episodes stored since the previous round (the ones considered)."""
    sd_version: int = 0
    """Serving SD version whose verdicts chose the labels."""
    labels: list[tuple[str, str, bool]] = dataclasses.field(default_factory=list)
    """(example_id, task, success) of every label sent."""
    added: int = 0
    """Labels newly stored by success_detector (the rest were already there)."""
    flagged: int = 0
    """Labelled images the SD called a success for the label's task ..."""
    flagged_true: int = 0
    """... and how many of them really were."""
    trained_version: int = 0
    """SD version this round started training (0: none)."""
    ready_version: int = 0
    """SD version that became READY during this round (0: none)."""

    @property
    def precision(self) -> float | None:
        """Share of the SD's on-policy successes that were real successes (None: it called none)."""
        return self.flagged_true / self.flagged if self.flagged else None


def pick_labels(called: np.ndarray, labels: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Indices of images to label for one task, and how many of them (the first ones) the SD
    called a success: up to labels // 2 of those (``called``: bool per image), then random
    others up to ``labels`` in all."""
    flagged = np.flatnonzero(called)
    n_flag = min(len(flagged), labels // 2)
    chosen = rng.choice(flagged, n_flag, replace=False) if n_flag else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(len(called)), chosen)
    n_rest = min(len(rest), labels - n_flag)
    others = rng.choice(rest, n_rest, replace=False) if n_rest else np.zeros(0, np.int64)
    return np.concatenate([chosen, others]).astype(np.int64), n_flag


class RefreshLoop:
    """Continuous labelling rounds on top of a `mtopt.sim_labeller.SimLabeller`."""

    def __init__(self, labeller):
        self.labeller, self.config, self.catalogue = labeller, labeller.config, labeller.catalogue
        registry = labeller.metrics_registry
        self.rounds = Counter("mtopt_sim_labeller_refresh_rounds_total", "Continuous-labelling rounds, by result.", ["result"],
                              registry=registry)
        self.labels_added = Counter("mtopt_sim_labeller_refresh_labels_added_total",
                                    "On-policy labels newly stored by continuous labelling, by outcome.", ["outcome"], registry=registry)
        self.precision = Gauge("mtopt_sim_labeller_refresh_sd_precision",
                               "Share of the labelled images the serving SD called a success that were real successes, "
                               "in the last round that had any (NaN: none yet).", registry=registry)
        self.pending_episodes = Gauge("mtopt_sim_labeller_refresh_pending_episodes",
                                      "Episodes stored since the last round, waiting for the next one.", registry=registry)
        for result in ROUND_RESULTS:
            self.rounds.labels(result)
        for outcome in OUTCOMES:
            self.labels_added.labels(outcome)
        self.precision.set(float("nan"))
        self.rng = np.random.default_rng(self.config.seed + 1)
        self._lock = threading.Lock()
        self._pending: collections.deque = collections.deque(maxlen=self.config.refresh_max_episodes)
        self._training = 0  # version started by a round and not READY/FAILED yet
        self._untrained = False  # labels stored that no READY version has seen yet
        self._attempt = 0
        self._counts: dict[str, tuple[int, int]] = {}  # examples per task (positives, negatives) after the last AddExamples
        self._last_state = sd_pb.SD_VERSION_STATE_UNSPECIFIED
        self._follower: threading.Thread | None = None

    # -- following the store ---------------------------------------------------------------------
    def start_following(self, stop: threading.Event) -> None:
        """Collects the episodes stored after the labeller's cursor, in a thread, until ``stop``."""
        def keep(episode_id: str, image: common_pb2.Image, outcomes: list[bool]) -> bool:
            with self._lock:
                self._pending.append((episode_id, image, outcomes))
                self.pending_episodes.set(len(self._pending))
            return False

        def follow() -> None:
            while not stop.is_set():
                try:
                    self.labeller.follow(stop, keep)
                except Exception:  # noqa: BLE001 - keep following; the rounds depend on it
                    log.exception("following episode_store failed; resuming in 1 s")
                    stop.wait(1.0)

        self._follower = threading.Thread(target=follow, name="labeller-follow", daemon=True)
        self._follower.start()

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def run(self, stop: threading.Event) -> None:
        """Rounds every refresh_every_s seconds until ``stop``; a round's failure is logged, never raised."""
        self.start_following(stop)
        log.info("continuous labelling: a round every %.0f s, %d labels per task", self.config.refresh_every_s,
                 self.config.refresh_labels_per_task)
        while not stop.wait(self.config.refresh_every_s):
            try:
                report = self.run_round(stop)
            except Exception as e:  # noqa: BLE001 - a round's failure never ends the loop
                if stop.is_set():
                    break
                details = f"{e.code().name}: {e.details()}" if isinstance(e, grpc.RpcError) else f"{type(e).__name__}: {e}"
                log.warning("labelling round failed (retried next round): %s", details)
                self.rounds.labels("error").inc()
                continue
            self._log(report)
        if self._follower is not None:
            self._follower.join(timeout=5)

    # -- one round -------------------------------------------------------------------------------
    def run_round(self, stop: threading.Event | None = None) -> RoundReport:
        """Labels the episodes stored since the last round and trains a new SD version."""
        stop = stop or threading.Event()
        with self._lock:
            episodes = list(self._pending)
            self._pending.clear()
            self.pending_episodes.set(0)
        try:
            if self._training and not self._settled(self._training):
                # the previous round's version is still training: label now, train when it is done
                report = self._label(episodes, stop) if episodes else RoundReport("")
                report.result = "still_training"
                return self._count(report)
            if not episodes and not self._untrained:
                return self._count(RoundReport("no_new_episodes"))
            report = self._label(episodes, stop) if episodes else RoundReport("")
        except Exception:
            with self._lock:  # labelled again next round (AddExamples is idempotent)
                self._pending.extendleft(reversed(episodes))
                self.pending_episodes.set(len(self._pending))
            raise
        if stop.is_set():
            report.result = "stopped"  # not counted
            return report
        if not self._untrained:
            report.result = "no_new_labels"  # every label was stored already (e.g. after a restart)
            return self._count(report)
        report.result = self._train(report, stop)
        return self._count(report)

    def _count(self, report: RoundReport) -> RoundReport:
        self.rounds.labels(report.result).inc()
        if report.precision is not None:
            self.precision.set(report.precision)
        return report

    def _label(self, episodes: list, stop: threading.Event) -> RoundReport:
        ids = [e[0] for e in episodes]
        images = [e[1] for e in episodes]
        truth = np.asarray([e[2] for e in episodes], dtype=bool).reshape(len(episodes), len(self.catalogue.tasks))
        called, sd_version = self._classify(images)
        report = RoundReport("", episodes=len(episodes), sd_version=sd_version)
        examples = []
        for j, task in enumerate(self.catalogue.tasks):
            chosen, n_flag = pick_labels(called[:, j], self.config.refresh_labels_per_task, self.rng)
            report.flagged += n_flag
            report.flagged_true += int(truth[chosen[:n_flag], j].sum())
            for i in chosen.tolist():
                success = bool(truth[i, j])
                report.labels.append((f"{ids[i]}/{task.name}", task.name, success))
                examples.append(sd_pb.LabelledExample(example_id=f"{ids[i]}/{task.name}", image=images[i], task=task.name,
                                                      success=success, source=ON_POLICY_SOURCE, episode_id=ids[i]))
        # positives and negatives in separate calls: each reply's `added` then counts one outcome exactly
        for outcome, success in zip(OUTCOMES, (True, False)):
            group = [e for e in examples if e.success == success]
            for k in range(0, len(group), self.config.add_batch):
                if stop.is_set():
                    return report
                batch = group[k: k + self.config.add_batch]
                reply = retry_idempotent(lambda: self.labeller.sd.AddExamples(sd_pb.AddExamplesRequest(examples=batch)),
                                         self.labeller.retry)
                report.added += reply.added
                self.labels_added.labels(outcome).inc(reply.added)
                self._counts = {c.task: (c.positives, c.negatives) for c in reply.counts}
                self._untrained = self._untrained or reply.added > 0
        return report
    def _classify(self, images: list) -> tuple[np.ndarray, int]:
        """(called a success: bool (images, catalogue tasks), serving SD version) for the images;
        tasks the serving version does not know are never called a success."""
        called = np.zeros((len(images), len(self.catalogue.tasks)), bool)
        column = {t.name: j for j, t in enumerate(self.catalogue.tasks)}
        version = 0
        for k in range(0, len(images), self.config.classify_batch):
            request = sd_pb.ClassifyRequest(images=images[k: k + self.config.classify_batch], sd_version=version)
            reply = retry_idempotent(lambda: self.labeller.sd.Classify(request), self.labeller.retry)
            version = reply.sd_version  # every batch on the same version
            cols = [column.get(t) for t in reply.tasks]
            for i, scores in enumerate(reply.scores):
                for c, p in zip(cols, scores.probabilities):
                    if c is not None:
                        called[k + i, c] = p >= self.config.sd_threshold
        return called, int(version)

    def _train(self, report: RoundReport, stop: threading.Event) -> str:
        """Starts a new promoted version on every example so far, waits (bounded) for READY."""
        tasks = sorted((t for t, (p, n) in self._counts.items() if p and n), key=lambda t: self.catalogue[t].index)
        if not tasks:
            raise RuntimeError("no task has both a positive and a negative example yet")
        base = 0
        if self.config.refresh_warm_start:
            serving = retry_idempotent(lambda: self.labeller.sd.GetVersion(sd_pb.GetSdVersionRequest(version=0)), self.labeller.retry)
            base = int(serving.version)
        self._attempt += 1
        key = hashlib.sha256("\n".join([str(base), str(self._attempt), *sorted(i for i, _, _ in report.labels)]).encode())
        request = sd_pb.TrainVersionRequest(
            request_id=f"sim-labeller/{self.config.seed}/refresh/{key.hexdigest()[:24]}", tasks=tasks, base_version=base,
            train_steps=self.config.refresh_train_steps, promote_when_ready=True,
            focus_source=ON_POLICY_SOURCE if self.config.refresh_focus_share else "",
            focus_share=self.config.refresh_focus_share)
        version = retry_idempotent(lambda: self.labeller.sd.TrainVersion(request), self.labeller.retry).version
        self._training, self._untrained = int(version.version), False
        report.trained_version = self._training
        log.info("training success detector version %d (warm start from %d) on %d tasks", self._training, base, len(tasks))
        deadline = time.monotonic() + self.config.refresh_train_timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            if self._settled(self._training):
                if self._last_state == sd_pb.SD_VERSION_STATE_READY:
                    report.ready_version = report.trained_version
                    return "trained"
                return "train_failed"
            stop.wait(1.0)
        return "train_timeout"

    def _settled(self, version: int) -> bool:
        """True once ``version`` is READY or FAILED (then no version is in training; a FAILED one's
        labels are trained again by the next round)."""
        got = retry_idempotent(lambda: self.labeller.sd.GetVersion(sd_pb.GetSdVersionRequest(version=version)), self.labeller.retry)
        self._last_state = got.state
        if got.state == sd_pb.SD_VERSION_STATE_READY:
            self._training = 0
            self.labeller.version.set(got.version)
            return True
        if got.state == sd_pb.SD_VERSION_STATE_FAILED:
            log.warning("success detector version %d failed: %s (its labels are trained again next round)", version, got.error)
            self._training, self._untrained = 0, True
            return True
        return False

    def _log(self, report: RoundReport) -> None:
        if report.result == "no_new_episodes":
            log.debug("labelling round: no new episodes")
            return
        positives = sum(s for _, _, s in report.labels)
        precision = "n/a" if report.precision is None else f"{report.precision:.2f} of {report.flagged}"
        log.info("labelling round (%s): %d episodes, %d labels (%d positive, %d new) by SD v%d; precision of its successes %s%s",
                 report.result, report.episodes, len(report.labels), positives, report.added, report.sd_version, precision,
                 f"; version {report.ready_version} READY" if report.ready_version else "")
