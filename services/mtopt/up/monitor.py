"""What a local run is doing, read from every process's Prometheus endpoint: the live terminal
view of `mtopt up` and its closing JSON summary.

The monitor only scrapes /metrics (the same series the Grafana dashboards use), so what it
shows is what an operator of a deployed fleet sees.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
import urllib.request
from typing import Iterable

from prometheus_client.parser import text_string_to_metric_families

from mtopt.up.topology import ProcessSpec

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, timeout_s: float = 1.0) -> Series:
    """Every sample of one /metrics endpoint ({} if it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(series: Series, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``."""
    return sum(v for (n, labels), v in series.items()
               if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def by_label(series: Series, name: str, label: str, **match: str) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for (n, labels), v in series.items():
        d = dict(labels)
        if n == name and label in d and all(d.get(k) == want for k, want in match.items()):
            out[d[label]] += v
    return dict(out)


@dataclasses.dataclass
class Snapshot:
    """One scrape of every process: samples per process role."""

    time: float
    by_process: dict[str, Series]

    def role(self, specs: Iterable[ProcessSpec], role: str) -> Series:
        merged: Series = {}
        for spec in specs:
            if spec.role == role:
                for key, v in self.by_process.get(spec.name, {}).items():
                    merged[key] = merged.get(key, 0.0) + v
        return merged


COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
"""Samples that only grow while a process lives (counters and histogram parts)."""


def _is_counter(key: tuple[str, tuple]) -> bool:
    return key[0].endswith(COUNTER_SUFFIXES)


def _finite(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def _rate(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


class Monitor:
    """Scrapes all processes; keeps a short history for rates and the final-window success."""

    def __init__(self, specs: list[ProcessSpec]):
        self.specs = specs
        self.history: collections.deque[Snapshot] = collections.deque(maxlen=10_000)
        self.started = time.time()
        self._raw: dict[str, Series] = {}
        """Each process's last answered scrape, as scraped."""
        self._offsets: dict[str, Series] = collections.defaultdict(dict)
        """Per process, what its counters had counted before its restarts."""

    def poll(self) -> Snapshot:
        snap = Snapshot(time.time(), {s.name: self._continued(s.name, scrape(s.metrics_port)) for s in self.specs})
        # a process that does not answer (stopped, restarting) keeps its last values
        if self.history:
            for name, series in snap.by_process.items():
                if not series:
                    snap.by_process[name] = self.history[-1].by_process.get(name, {})
        self.history.append(snap)
        return snap

    def _continued(self, name: str, raw: Series) -> Series:
        """``raw`` with counters carried across restarts of the process, as Prometheus' increase()
        does: a counter that went down (or vanished) means the process restarted from zero, so
        everything it had counted until then is added to every later scrape."""
        if not raw:
            return raw
        last = self._raw.get(name, {})
        offsets = self._offsets[name]
        if any(raw.get(key, 0.0) < v for key, v in last.items() if key[0].endswith("_total")):
            for key, v in last.items():
                if _is_counter(key):
                    offsets[key] = offsets.get(key, 0.0) + v
        self._raw[name] = raw
        if not offsets:
            return raw
        out = dict(raw)
        for key, v in offsets.items():
            out[key] = out.get(key, 0.0) + v
        return out

    def _ago(self, seconds: float) -> Snapshot:
        target = self.history[-1].time - seconds
        for snap in self.history:
            if snap.time >= target:
                return snap
        return self.history[0]

    def state(self, window_s: float = 30.0, success_window_s: float | None = None, since: Snapshot | None = None) -> dict:
        """Everything the view and the summary show, from the latest scrape; the "recent" success
        rates cover the last ``success_window_s`` seconds, or everything after ``since``."""
        now = self.history[-1]
        then = self._ago(window_s)
        dt = max(now.time - then.time, 1e-9)
        base = since if since is not None else self._ago(success_window_s or window_s)
        agents_now, agents_then = now.role(self.specs, "robot"), base.role(self.specs, "robot")
        store, store_then = now.role(self.specs, "episode_store"), then.role(self.specs, "episode_store")
        replay = now.role(self.specs, "log_replay")
        trainer = now.role(self.specs, "trainer")
        registry = now.role(self.specs, "model_registry")
        sd = now.role(self.specs, "success_detector")
        labeller = now.role(self.specs, "labeller")

        tasks: dict[str, dict] = {}
        episodes = lambda s, **m: by_label(s, "mtopt_robot_agent_episodes_total", "task", **m)  # noqa: E731
        successes = lambda s, **m: by_label(s, "mtopt_robot_agent_ground_truth_successes_total", "task", **m)  # noqa: E731
        sd_succ = by_label(replay, "mtopt_log_replay_sd_successes_total", "task")
        sd_all = by_label(replay, "mtopt_log_replay_labelled_episodes_total", "task")
        for task in sorted(set(episodes(agents_now))):
            row = {"episodes": int(episodes(agents_now).get(task, 0))}
            for policy in ("scripted", "cem"):
                n = episodes(agents_now, policy=policy).get(task, 0)
                k = successes(agents_now, policy=policy).get(task, 0)
                row[f"{policy}_episodes"] = int(n)
                row[f"{policy}_success"] = _rate(k, n)
                n_w = n - episodes(agents_then, policy=policy).get(task, 0)
                k_w = k - successes(agents_then, policy=policy).get(task, 0)
                row[f"{policy}_recent_episodes"] = int(n_w)
                row[f"{policy}_recent_success"] = _rate(k_w, n_w)
            row["sd_success"] = _rate(sd_succ.get(task, 0.0), sd_all.get(task, 0.0))
            tasks[task] = row

        bellman = {}
        for spec in self.specs:
            if spec.role == "bellman":
                s_now, s_then = now.by_process.get(spec.name, {}), then.by_process.get(spec.name, {})
                bellman[spec.name] = {
                    "targets": int(total(s_now, "mtopt_bellman_targets_total")),
                    "targets_per_s": (total(s_now, "mtopt_bellman_targets_total") - total(s_then, "mtopt_bellman_targets_total")) / dt,
                    "target_model_version": int(total(s_now, "mtopt_bellman_target_model_version")),
                }
        robots = {}
        for spec in self.specs:
            if spec.role == "robot":
                s = now.by_process.get(spec.name, {})
                robots[spec.name] = {
                    "model_version": int(total(s, "mtopt_robot_agent_model_version")),
                    "episodes": int(total(s, "mtopt_robot_agent_episodes_total")),
                    "spool_episodes": int(total(s, "mtopt_robot_agent_spool_episodes")),
                }
        stored = total(store, "mtopt_episode_store_episodes_stored_total")
        loss = total(trainer, "mtopt_trainer_loss")
        return {
            "elapsed_s": now.time - self.started,
            "episodes_stored": int(stored),
            "episodes_per_s": (stored - total(store_then, "mtopt_episode_store_episodes_stored_total")) / dt,
            "sd_version": int(total(sd, "mtopt_success_detector_serving_version")),
            "sd_versions_trained": int(total(sd, "mtopt_success_detector_train_runs_total", result="ready")),
            "sd_refresh_rounds": int(total(labeller, "mtopt_sim_labeller_refresh_rounds_total", result="trained")),
            "sd_refresh_labels": int(total(labeller, "mtopt_sim_labeller_refresh_labels_added_total")),
            "sd_precision": _finite(total(labeller, "mtopt_sim_labeller_refresh_sd_precision")
                                    if ("mtopt_sim_labeller_refresh_sd_precision", ()) in labeller else None),
            "buffer_transitions": {
                f"{t}/{o}": int(v) for (n, labels), v in sorted(replay.items()) if n == "mtopt_log_replay_buffer_transitions"
                for t, o in [(dict(labels).get("task", "?"), dict(labels).get("outcome", "?"))]
            },
            "buffer_bytes": int(total(replay, "mtopt_log_replay_buffer_bytes")),
            "bellman": bellman,
            "targets_per_s": sum(b["targets_per_s"] for b in bellman.values()),
            "train_steps": int(total(trainer, "mtopt_trainer_steps_total")),
            "loss": None if math.isnan(loss) else loss,
            "train_buffer_rows": int(total(trainer, "mtopt_trainer_buffer_rows")),
            "published_version": int(total(trainer, "mtopt_trainer_published_version")),
            "versions_published": int(total(registry, "mtopt_model_registry_versions_published_total", model="q_function")),
            "newest_version": int(total(registry, "mtopt_model_registry_latest_version", model="q_function")),
            "robots": robots,
            "tasks": tasks,
        }


def _pct(x: float | None) -> str:
    return "   -" if x is None else f"{100 * x:3.0f}%"


def render(state: dict, health: dict[str, str | None]) -> str:
    """The live view as text (one screen)."""
    lines = [
        f"mtopt up  {state['elapsed_s']:6.0f}s   episodes {state['episodes_stored']} ({state['episodes_per_s']:.1f}/s)   "
        f"SD v{state['sd_version']} ({state['sd_refresh_rounds']} refreshes)   train step {state['train_steps']}  loss {state['loss'] if state['loss'] is None else round(state['loss'], 4)}"
        f"   model v{state['newest_version']} ({state['versions_published']} published)",
        "services: " + "  ".join(f"{n}={(h or 'DOWN')[:11]}" for n, h in health.items()),
        f"bellman: {state['targets_per_s']:.0f} targets/s  " + "  ".join(
            f"{n}: {b['targets_per_s']:.0f}/s (Qt1 v{b['target_model_version']})" for n, b in state["bellman"].items()),
        f"buffers: {state['buffer_bytes'] / 2**20:.1f} MiB in log_replay, {state['train_buffer_rows']} rows in the train buffer",
        "robots:  " + "  ".join(f"{n}: v{r['model_version']} ({r['episodes']} ep, spool {r['spool_episodes']})"
                                for n, r in state["robots"].items()),
        "",
        f"{'task':<18}{'episodes':>9}{'scripted':>10}{'learned':>9}{'recent':>8}{'SD says':>9}",
    ]
    for task, row in state["tasks"].items():
        lines.append(f"{task:<18}{row['episodes']:>9}{_pct(row['scripted_success']):>10}{_pct(row['cem_success']):>9}"
                     f"{_pct(row['cem_recent_success']):>8}{_pct(row['sd_success']):>9}")
    lines.append("(ground-truth success of the robots' own tasks: scripted policy / learned CEM policy, all and recent;"
                 " SD says = success rate by the success detector)")
    return "\n".join(lines)
