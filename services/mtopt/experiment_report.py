"""What `mtopt experiment` writes besides results.json: the per-task table (results.md) and the
learning-curve plot (learning_curve.png)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def results_table(result: dict) -> str:
    lines = ["| task | scripted | MT-Opt | SD accuracy | SD near-miss FPR |", "|---|---|---|---|---|"]
    for name, rate in result["final_success"].items():
        sd = result["success_detector"][name]
        near = sd.get("near_miss_fpr")  # absent from runs before it was measured
        lines.append(f"| {name} | {result['scripted_success'][name]:.2f} | {rate:.2f} | {sd['accuracy']:.3f} | "
                     f"{'-' if near is None else f'{near:.3f}'} |")
    mean_scripted = np.mean(list(result["scripted_success"].values()))
    lines.append(f"| **mean** | {mean_scripted:.2f} | {result['mean_success']:.2f} | | |")
    lines.append("")
    lines.append(f"{result['episodes']} episodes, {result['train_steps']} train steps, {result['wall_s']} s wall, "
                 f"{result['torch_threads']} torch threads")
    if result.get("rl_phase_s"):
        lines.append("RL loop, wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result["rl_phase_s"].items()))
    return "\n".join(lines) + "\n"


def plot_curve(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    if not curve:
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    xs = [p["episodes"] for p in curve]
    for name in result["final_success"]:
        ax.plot(xs, [p["success"].get(name, np.nan) for p in curve], alpha=0.5, lw=1, label=name)
    ax.plot(xs, [p["mean_success"] for p in curve], color="black", lw=2.5, label="mean over tasks")
    ax.axhline(np.mean(list(result["scripted_success"].values())), color="grey", ls="--", label="scripted mean")
    ax.set_xlabel("episodes collected")
    ax.set_ylabel("ground-truth success")
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7, ncol=2)
    ax.set_title("MT-Opt on the tabletop simulator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
