"""`mtopt experiment`: the whole MT-Opt loop in one process, on the built-in simulator.

    scripted bootstrap -> success detector trained on labelled final images (ground truth labels)
    -> rewards from the SD only -> impersonation -> re-balancing -> Bellman targets -> training
    -> collection with the current policy (epsilon exploration, pick-then-place sequencing)
    -> periodic evaluation with ground-truth success per task

It calls the same core functions the services use. Ablations: impersonation orig/all/skill,
re-balancing on/off, multi-task vs single-task (same total budget), one-hot vs multi-head.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mtopt.collect import BatchPolicy, Collected, Fleet
from mtopt.core.bellman import TargetNetworks
from mtopt.core.config import MTOptConfig
from mtopt.core.learner import Learner, TargetComputer
from mtopt.core.networks import LEGACY_NETWORK, QNetwork
from mtopt.core.policy import CEMPolicy
from mtopt.core.replay import ReplayBuffer, impersonate
from mtopt.core.success_detector import (
    LabelledExamples,
    SuccessDetector,
    select_examples,
    share_weights,
)
from mtopt.experiment_config import ExperimentConfig
from mtopt.experiment_report import plot_curve, results_table
from mtopt.robot import ACTION_DIM
from mtopt.tasks import TaskCatalogue


def _label(episodes, catalogue: TaskCatalogue, sd: SuccessDetector, mode: str, threshold: float) -> list[dict[str, bool]]:
    """Impersonates each episode and asks the SD for a verdict per target task (the only reward)."""
    if not episodes:
        return []
    finals = np.stack([e.final_image for e in episodes])
    probs = sd.predict(finals, catalogue.indices)  # (N, num_tasks)
    col = {t.index: j for j, t in enumerate(catalogue.tasks)}
    out = []
    for i, ep in enumerate(episodes):
        targets = impersonate(catalogue[ep.task], catalogue, mode)
        out.append({t.name: bool(probs[i, col[t.index]] > threshold) for t in targets})
    return out


def evaluate_policy(fleet: Fleet, catalogue: TaskCatalogue, policy, cfg: ExperimentConfig) -> dict[str, float]:
    """Ground-truth success rate per task of `policy` (batched: images, states, tasks -> actions) on
    `cfg.eval_episodes_per_task` fresh-scene episodes per task."""
    tasks = [t for t in catalogue for _ in range(cfg.eval_episodes_per_task)]
    out = fleet.collect(0, None, policy, cfg.max_episode_steps, fresh_scenes=True, tasks=tasks)
    rates = {}
    for t in catalogue:
        mask = np.array([e.task == t.name for e in out.episodes])
        rates[t.name] = float(out.task_success[mask].mean()) if mask.any() else float("nan")
    return rates


def bootstrap_and_sd(cfg: ExperimentConfig, catalogue: TaskCatalogue, log: Callable[[str], None]) -> tuple[Collected, SuccessDetector, dict]:
    """Scripted bootstrap data and a success detector trained on part of it (ground-truth labels)."""
    rng = np.random.default_rng(cfg.seed)
    fleet = Fleet(catalogue, cfg.num_robots, cfg.seed + 1, cfg.sequence_probability)
    t0 = time.time()
    boot = fleet.collect(cfg.bootstrap_episodes, lambda r: catalogue.tasks[r.integers(len(catalogue))], None, cfg.max_episode_steps)
    log(f"bootstrap: {len(boot.episodes)} scripted episodes in {time.time() - t0:.1f}s")
    scripted_rates = {t.name: float(boot.task_success[[e.task == t.name for e in boot.episodes]].mean()) for t in catalogue}

    # SD data: examples labelled from ground truth, drawn from a separate labelling fleet so the
    # held-out evaluation set below never overlaps them.
    label_fleet = Fleet(catalogue, cfg.num_robots, cfg.seed + 2, cfg.sequence_probability)
    n_label = max(cfg.sd_examples_per_task * len(catalogue) // 2, 200)
    n_random = int(round(n_label * cfg.sd_random_fraction))
    choose = lambda r: catalogue.tasks[r.integers(len(catalogue))]
    pools = [label_fleet.collect(n_label - n_random, choose, None, cfg.max_episode_steps)]
    if n_random:
        pools.append(label_fleet.collect(n_random, choose, random_batch_policy(rng), cfg.max_episode_steps))
    finals = np.stack([e.final_image for p in pools for e in p.episodes])
    outcomes = np.concatenate([p.ground_truth for p in pools])
    examples = select_examples(finals, outcomes, catalogue, cfg.sd_examples_per_task, rng)
    torch.manual_seed(cfg.seed)  # the SD's initial weights must not depend on what ran before
    sd = SuccessDetector(catalogue.num_slots, cfg.algo.image_size, cfg.algo.channels, device=cfg.device,
                         stem=cfg.algo.tower_stem)
    t0 = time.time()
    batches_per_epoch = max(1, -(-len(examples) // 64))
    epochs = max(cfg.sd_epochs, -(-cfg.sd_min_steps // batches_per_epoch))
    sd.fit(examples, epochs=epochs, batch_size=64, seed=cfg.seed)
    log(f"success detector: {len(examples)} labelled examples, trained in {time.time() - t0:.1f}s")

    held = Fleet(catalogue, cfg.num_robots, cfg.seed + 3, cfg.sequence_probability)
    test = held.collect(1500, lambda r: catalogue.tasks[r.integers(len(catalogue))], None, cfg.max_episode_steps)
    probs = sd.predict(np.stack([e.final_image for e in test.episodes]), catalogue.indices)
    sd_report = detector_report(probs > cfg.algo.sd_threshold, test.ground_truth, catalogue)
    return boot, sd, {"scripted_rates": scripted_rates, "sd": sd_report, "sd_examples": int(len(examples)), "examples": examples}


def detector_report(pred: np.ndarray, truth: np.ndarray, catalogue: TaskCatalogue) -> dict[str, dict]:
    """The SD's verdicts `pred` against ground truth `truth` (both (N, len(catalogue)) bool), per task.

    Besides accuracy, TPR, TNR and precision (of the `called` successes): `near_miss_fpr`, the share of near misses called a success. A
    near miss succeeded at another task of the same skill and not at this one (the wrong shape or
    colour held, placed or presented): the false positives a policy learns to exploit, and rare
    among all negatives, so TNR hides them (None when there are none)."""
    report = {}
    for j, t in enumerate(catalogue.tasks):
        y, p = truth[:, j], pred[:, j]
        same_skill = [k for k, o in enumerate(catalogue.tasks) if o.skill == t.skill and k != j]
        near = ~y & truth[:, same_skill].any(axis=1) if same_skill else np.zeros_like(y)
        report[t.name] = {
            "accuracy": float((p == y).mean()), "tpr": float((p & y).sum() / max(1, y.sum())),
            "tnr": float((~p & ~y).sum() / max(1, (~y).sum())), "precision": float((p & y).sum() / max(1, p.sum())),
            "called": int(p.sum()),
            "near_miss_fpr": float(p[near].mean()) if near.any() else None,
            "near_misses": int(near.sum()), "positives": int(y.sum()), "n": int(len(y)),
        }
    return report


def random_batch_policy(rng: np.random.Generator, terminate_probability: float = 0.2) -> BatchPolicy:
    """Uniform random actions for a batch of robots (diverse final states for SD labelling)."""

    def policy(images: np.ndarray, states: np.ndarray, tasks: np.ndarray) -> np.ndarray:
        a = rng.uniform(-1, 1, (len(tasks), ACTION_DIM)).astype(np.float32)
        a[:, 3] = np.where(rng.random(len(tasks)) < terminate_probability, 1.0, -1.0)
        return a

    return policy


def refresh_sd(
    sd: SuccessDetector,
    examples: LabelledExamples,
    pending: list[Collected],
    catalogue: TaskCatalogue,
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    initial: int = 0,
) -> tuple[LabelledExamples, dict]:
    """Labels some on-policy final images per task, fine-tunes the SD on all examples so far.

    Half of each task's labels go to images the SD currently calls a success for that task (where
    the policy finds the SD's false positives), the rest to images drawn at random. The first
    `initial` examples are the bootstrap set; every later one was labelled by a refresh, and those
    fill `cfg.sd_refresh_share` of each fine-tune batch. Returns the grown example set and what the
    labels showed about the SD before the fine-tune; its `per_task` entry is `detector_report` on all
    of `pending` (the quality of the reward the policy learned from since the last refresh).
    """
    finals = np.stack([e.final_image for c in pending for e in c.episodes])
    truth = np.concatenate([c.ground_truth for c in pending])
    pred = sd.predict(finals, catalogue.indices) > cfg.algo.sd_threshold
    imgs, tasks, labels = [], [], []
    flagged_total = flagged_true = 0
    for j, task in enumerate(catalogue.tasks):
        flagged = np.flatnonzero(pred[:, j])
        n_flag = min(len(flagged), cfg.sd_refresh_labels // 2)
        chosen = rng.choice(flagged, n_flag, replace=False) if n_flag else np.array([], int)
        rest = np.setdiff1d(np.arange(len(finals)), chosen)
        n_rest = min(len(rest), cfg.sd_refresh_labels - n_flag)
        chosen = np.concatenate([chosen, rng.choice(rest, n_rest, replace=False) if n_rest else np.array([], int)])
        flagged_total += n_flag
        flagged_true += int(truth[chosen[:n_flag], j].sum())
        imgs.append(finals[chosen])
        tasks.append(np.full(len(chosen), task.index, dtype=np.int64))
        labels.append(truth[chosen, j])
    grown = LabelledExamples(
        np.concatenate([examples.images, *imgs]), np.concatenate([examples.tasks, *tasks]),
        np.concatenate([examples.labels, *labels]),
    )
    batches_per_epoch = max(1, -(-len(grown) // 64))
    sd.fit(grown, epochs=max(1, round(cfg.sd_refresh_steps / batches_per_epoch)), batch_size=64,
           seed=int(rng.integers(1 << 31)), weights=share_weights(np.arange(len(grown)) >= initial, cfg.sd_refresh_share))
    on_policy_accuracy = float((pred == truth).mean())
    return grown, {"labels": int(sum(len(t) for t in tasks)), "flagged_precision": flagged_true / max(1, flagged_total),
                   "on_policy_accuracy": on_policy_accuracy, "per_task": detector_report(pred, truth, catalogue)}


def train_rl(
    cfg: ExperimentConfig,
    catalogue: TaskCatalogue,
    boot: Collected,
    sd: SuccessDetector,
    log: Callable[[str], None],
    progress: bool = True,
    examples: LabelledExamples | None = None,
    iterations: int | None = None,
    episodes_per_iteration: int | None = None,
    train_steps_per_iteration: int | None = None,
) -> dict:
    """The MT-Opt loop on `catalogue` starting from the bootstrap episodes; returns the learning curve."""
    algo = cfg.algo
    iterations = iterations if iterations is not None else cfg.iterations
    episodes_per_iteration = episodes_per_iteration or cfg.episodes_per_iteration
    train_steps = train_steps_per_iteration or cfg.train_steps_per_iteration
    rng = np.random.default_rng(cfg.seed + 10)
    torch.manual_seed(cfg.seed)
    q = initial_q_network(cfg, catalogue, sd)
    learner = Learner(q, algo)
    targets = TargetNetworks(q, algo)
    computer = TargetComputer(targets, algo, seed=cfg.seed, device=cfg.device)
    policy = CEMPolicy(q, algo, seed=cfg.seed)
    buffer = ReplayBuffer(catalogue, cfg.replay_capacity_bytes, algo.step_penalty)
    own = [e for e in boot.episodes if e.task in catalogue]
    for ep, outcomes in zip(own, _label(own, catalogue, sd, algo.impersonation, algo.sd_threshold)):
        buffer.add(ep, outcomes)
    fleet = Fleet(catalogue, cfg.num_robots, cfg.seed + 20, cfg.sequence_probability)
    eval_fleet = Fleet(catalogue, cfg.num_robots * 4, cfg.seed + 30)
    choose = lambda r: catalogue.tasks[r.integers(len(catalogue))]
    curve, losses, refreshes, pending = [], [], [], []
    initial = len(examples) if examples is not None else 0  # rows after this one come from SD refreshes
    # wall seconds of each part of the loop ("train": sampling, Bellman targets and the update)
    phases = dict.fromkeys(("train", "collect", "label", "sd_refresh", "evaluate"), 0.0)
    episodes_total, t0 = len(own), time.time()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=iterations, desc="mt-opt", unit="it", dynamic_ncols=True)
    for it in range(1, iterations + 1):
        mark = time.perf_counter()
        for _ in range(train_steps):
            tb = computer(buffer.sample(algo.batch_size, rng, algo.rebalance, algo.success_fraction))
            losses.append(learner.step(tb))
            targets.update(q)
        mark = _phase(phases, "train", mark)
        out = fleet.collect(
            episodes_per_iteration, choose, lambda i, s, t: policy.batch(i, s, t)[0], cfg.max_episode_steps,
            epsilon=cfg.epsilon, scripted_fraction=cfg.scripted_fraction, policy_version=learner.steps,
        )
        mark = _phase(phases, "collect", mark)
        for ep, outcomes in zip(out.episodes, _label(out.episodes, catalogue, sd, algo.impersonation, algo.sd_threshold)):
            buffer.add(ep, outcomes)
        episodes_total += len(out.episodes)
        pending.append(out)
        mark = _phase(phases, "label", mark)
        if examples is not None and cfg.sd_refresh_every and it % cfg.sd_refresh_every == 0:
            examples, report = refresh_sd(sd, examples, pending, catalogue, cfg, rng, initial)
            pending = []
            kept = list(buffer.episodes.values())
            buffer.relabel_many({e.episode_id: o for e, o in
                                 zip(kept, _label(kept, catalogue, sd, algo.impersonation, algo.sd_threshold))})
            refreshes.append({"iteration": it, **report})
            log(f"iter {it}: SD refresh +{report['labels']} labels (precision of its on-policy successes "
                f"{report['flagged_precision']:.2f}), {len(kept)} episodes relabelled")
            mark = _phase(phases, "sd_refresh", mark)
        out_of_time = bool(cfg.time_limit_s) and time.time() - t0 > cfg.time_limit_s
        if it % cfg.eval_every == 0 or it == iterations or out_of_time:
            rates = evaluate_policy(eval_fleet, catalogue, lambda i, s, t: policy.batch(i, s, t)[0], cfg)
            mark = _phase(phases, "evaluate", mark)
            point = {"iteration": it, "train_steps": learner.steps, "episodes": episodes_total,
                     "wall_s": round(time.time() - t0, 1), "loss": float(np.mean(losses[-train_steps:])),
                     "success": rates, "mean_success": float(np.nanmean(list(rates.values())))}
            curve.append(point)
            log(f"iter {it}: steps {learner.steps} episodes {episodes_total} loss {point['loss']:.4f} "
                f"mean success {point['mean_success']:.3f}")
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses[-train_steps:]):.3f}",
                            success=f"{curve[-1]['mean_success']:.2f}" if curve else "-")
            bar.update(1)
        if out_of_time:
            log(f"time limit of {cfg.time_limit_s:.0f}s reached after iteration {it}")
            break
    if bar is not None:
        bar.close()
    return {"curve": curve, "buffer_sizes": buffer.sizes(), "episodes": episodes_total, "sd_refreshes": refreshes,
            "sd_labels": int(len(examples)) if examples is not None else None,
            "train_steps": learner.steps, "wall_s": time.time() - t0, "phase_s": {k: round(v, 1) for k, v in phases.items()},
            "q": q}


def initial_q_network(cfg: ExperimentConfig, catalogue: TaskCatalogue, sd: SuccessDetector) -> QNetwork:
    """A fresh Q-network for `catalogue`; its conv tower copied from the SD's when cfg.q_tower_init is "sd"."""
    algo = cfg.algo
    q = QNetwork(catalogue.num_slots, algo.image_size, algo.channels, algo.multi_head, algo.tower_stem,
                 algo.point_readout).to(cfg.device)
    if cfg.q_tower_init == "sd":
        q.tower.load_state_dict(sd.net.tower.state_dict())
    return q


def load_saved_q_network(run_dir: str | Path) -> tuple[QNetwork, MTOptConfig]:
    """The Q-network an `mtopt experiment --out RUN_DIR` saved (q.pt), built with the network
    settings of that run (results.json: tower stem, width, heads), and the run's algorithm config."""
    run_dir = Path(run_dir)
    saved = LEGACY_NETWORK | json.loads((run_dir / "results.json").read_text())["config"]["algo"]
    known = {f.name for f in dataclasses.fields(MTOptConfig)}
    algo = MTOptConfig(**{k: v for k, v in saved.items() if k in known})
    q = QNetwork(TaskCatalogue.load().num_slots, algo.image_size, algo.channels, algo.multi_head, algo.tower_stem,
                 algo.point_readout)
    q.load_state_dict(torch.load(run_dir / "q.pt"))
    return q, algo


def _phase(phases: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    phases[name] += now - since
    return now


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, log: Callable[[str], None] = print,
                   progress: bool = True) -> dict:
    """Runs one configuration; writes results.json, results.md and learning_curve.png to out_dir."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    full = TaskCatalogue.load()
    catalogue = full.subset(list(cfg.tasks)) if cfg.tasks else full
    t_start = time.time()
    boot, sd, info = bootstrap_and_sd(cfg, catalogue, log)
    if not cfg.single_task:
        rl = train_rl(cfg, catalogue, boot, sd, log, progress, examples=info["examples"])
        curve = rl["curve"]
        final = curve[-1]["success"]
        episodes, steps = rl["episodes"], rl["train_steps"]
    else:
        n = len(catalogue)
        final, curve, episodes, steps = {}, [], 0, 0
        single_algo = dataclasses.replace(cfg.algo, impersonation="orig")
        for task in catalogue:
            sub = catalogue.subset([task.name])
            sub_cfg = dataclasses.replace(cfg, algo=single_algo)
            rl = train_rl(sub_cfg, sub, boot, sd, log, progress, examples=info["examples"],
                          episodes_per_iteration=max(1, cfg.episodes_per_iteration // n),
                          train_steps_per_iteration=max(1, cfg.train_steps_per_iteration // n))
            final[task.name] = rl["curve"][-1]["success"][task.name]
            episodes += rl["episodes"]
            steps += rl["train_steps"]
            for i, point in enumerate(rl["curve"]):
                if len(curve) <= i:
                    curve.append({k: v for k, v in point.items() if k != "success"} | {"success": {}, "episodes": 0, "train_steps": 0})
                curve[i]["success"][task.name] = point["success"][task.name]
                curve[i]["episodes"] += point["episodes"]
                curve[i]["train_steps"] += point["train_steps"]
        for point in curve:
            point["mean_success"] = float(np.mean(list(point["success"].values())))
        rl = None
    result = {
        "config": _jsonable(dataclasses.asdict(cfg)),
        "final_success": final,
        "mean_success": float(np.mean(list(final.values()))),
        "scripted_success": info["scripted_rates"],
        "success_detector": info["sd"],
        "sd_examples": info["sd_examples"],
        "sd_labels_total": rl["sd_labels"] if rl is not None else info["sd_examples"],
        "sd_refreshes": rl["sd_refreshes"] if rl is not None else [],
        "curve": curve,
        "episodes": episodes,
        "train_steps": steps,
        "wall_s": round(time.time() - t_start, 1),
        "rl_phase_s": rl["phase_s"] if rl is not None else None,
        "torch_threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2))
        (out / "results.md").write_text(results_table(result))
        plot_curve(result, out / "learning_curve.png")
        if rl is not None:
            torch.save({k: v.cpu() for k, v in rl["q"].state_dict().items()}, out / "q.pt")
    return result


def _jsonable(d):
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
