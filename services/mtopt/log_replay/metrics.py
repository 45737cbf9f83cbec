"""log_replay's Prometheus metrics, on the registry the server gives it."""

from __future__ import annotations

from typing import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

REJECT_REASONS = ("batch_size", "unknown_task", "success_fraction", "max_batches", "sd_version", "sd_not_ready")
"""Why a SampleBatches or Relabel call was refused (label of ..._rejected_total)."""
SKIP_REASONS = ("not_found", "malformed", "invalid_id", "unknown_task", "image", "action", "state", "too_large", "sd_rejected")
"""Why a stored episode was passed over (label of ..._episodes_skipped_total); the cursor moves on."""
DEPENDENCIES = ("episode_store", "success_detector", "cursor_storage")
OUTCOMES = ("success", "failure")


class ReplayMetrics:
    """All log_replay metrics (names per DESIGN.md section 8)."""

    def __init__(self, registry: CollectorRegistry, tasks: Iterable[str]):
        self.registry = registry
        r = registry
        self.processed = Counter("mtopt_log_replay_episodes_processed_total",
                                 "Episodes labelled and added to the buffers, by collecting task (refills after a restart excluded).",
                                 ["task"], registry=r)
        self.labelled = Counter("mtopt_log_replay_labelled_episodes_total",
                                "Episodes the SD labelled for their own collecting task, by that task.", ["task"], registry=r)
        self.sd_successes = Counter("mtopt_log_replay_sd_successes_total",
                                    "Episodes the SD judged successful at their own collecting task, by that task.", ["task"], registry=r)
        self.gt_episodes = Counter("mtopt_log_replay_ground_truth_episodes_total",
                                   "Episodes that carry a ground-truth label for their collecting task (simulation), by task.",
                                   ["task"], registry=r)
        self.gt_successes = Counter("mtopt_log_replay_ground_truth_successes_total",
                                    "Episodes whose ground truth says they succeeded at their collecting task (simulation), by task.",
                                    ["task"], registry=r)
        self.skipped = Counter("mtopt_log_replay_episodes_skipped_total",
                               "Stored episodes passed over because they cannot be used, by reason.", ["reason"], registry=r)
        self.relabelled = Counter("mtopt_log_replay_relabelled_episodes_total", "Buffered episodes re-classified by relabelling runs.",
                                  registry=r)
        self.buffer_transitions = Gauge("mtopt_log_replay_buffer_transitions", "Transitions in the buffers by task and outcome.",
                                        ["task", "outcome"], registry=r)
        self.buffer_episodes = Gauge("mtopt_log_replay_buffer_episodes", "Episode references in the buffers by task and outcome.",
                                     ["task", "outcome"], registry=r)
        self.buffer_bytes = Gauge("mtopt_log_replay_buffer_bytes", "Memory held by the decoded episodes in the buffers.", registry=r)
        self.buffer_capacity = Gauge("mtopt_log_replay_buffer_capacity_bytes", "Byte budget of the buffers.", registry=r)
        self.batches = Counter("mtopt_log_replay_batches_served_total", "TransitionBatches sent on SampleBatches streams.", registry=r)
        self.transitions_served = Counter("mtopt_log_replay_transitions_served_total", "Transitions sent on SampleBatches streams.",
                                          registry=r)
        self.streams = Gauge("mtopt_log_replay_sample_streams", "Open SampleBatches streams.", registry=r)
        self.rejected = Counter("mtopt_log_replay_rejected_total", "Calls refused for bad input, by reason; nothing changed.",
                                ["reason"], registry=r)
        self.dependency_errors = Counter("mtopt_log_replay_dependency_errors_total",
                                         "Failed calls to a dependency (retried from the same cursor), by dependency.",
                                         ["dependency"], registry=r)
        self.lag = Gauge("mtopt_log_replay_lag_episodes", "Stored episodes received from the watch but not yet processed.", registry=r)
        self.caught_up = Gauge("mtopt_log_replay_caught_up", "1 once the episode_store backlog has been consumed, else 0.", registry=r)
        self.sd_version = Gauge("mtopt_log_replay_sd_version", "SD version the buffers are labelled with.", registry=r)
        self.relabel_done = Gauge("mtopt_log_replay_relabel_episodes_done", "Episodes relabelled by the current run.", registry=r)
        self.relabel_total = Gauge("mtopt_log_replay_relabel_episodes", "Episodes the current relabelling run covers.", registry=r)
        for task in tasks:  # export zeros so dashboards and rate() see every series
            for c in (self.processed, self.labelled, self.sd_successes, self.gt_episodes, self.gt_successes):
                c.labels(task)
            for outcome in OUTCOMES:
                self.buffer_transitions.labels(task, outcome)
                self.buffer_episodes.labels(task, outcome)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for reason in SKIP_REASONS:
            self.skipped.labels(reason)
        for dep in DEPENDENCIES:
            self.dependency_errors.labels(dep)

    def update_buffer(self, counts: Mapping[str, object], nbytes: int, capacity: int) -> None:
        """Sets the buffer gauges from ReplayCache.counts()."""
        for task, c in counts.items():
            self.buffer_transitions.labels(task, "success").set(c.success_transitions)
            self.buffer_transitions.labels(task, "failure").set(c.failure_transitions)
            self.buffer_episodes.labels(task, "success").set(c.success_episodes)
            self.buffer_episodes.labels(task, "failure").set(c.failure_episodes)
        self.buffer_bytes.set(nbytes)
        self.buffer_capacity.set(capacity)

    def value(self, name: str, labels: dict | None = None) -> float:
        """Current value of a sample (tests and benchmarks)."""
        v = self.registry.get_sample_value(name, labels or {})
        return 0.0 if v is None else v
