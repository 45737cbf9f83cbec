"""End-to-end smoke test of `mtopt experiment`: the whole loop learns a pick task on the simulator.

A few minutes of CPU: three lift tasks (f_skill impersonation, re-balancing, SD rewards only).
"""

import json

import pytest

from mtopt.cli import main
from mtopt.experiment import ExperimentConfig, run_experiment


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_lift_tasks_end_clearly_above_scripted_rate(tmp_path):
    cfg = ExperimentConfig(
        tasks=("lift-any", "lift-red", "lift-blue"),
        bootstrap_episodes=1000,
        sd_examples_per_task=200,
        sd_epochs=25,
        iterations=16,
        episodes_per_iteration=32,
        train_steps_per_iteration=50,
        eval_every=16,
        eval_episodes_per_task=40,
        threads=2,
    )
    result = run_experiment(cfg, tmp_path, log=lambda s: None, progress=False)

    # the success detector, trained on labelled final images, is the only reward source
    for name, sd in result["success_detector"].items():
        assert sd["accuracy"] > 0.85, (name, sd)
    specific = ["lift-red", "lift-blue"]
    learned = sum(result["final_success"][t] for t in specific) / 2
    scripted = sum(result["scripted_success"][t] for t in specific) / 2
    assert learned > scripted + 0.15, (result["final_success"], result["scripted_success"])
    assert (tmp_path / "results.json").exists() and (tmp_path / "learning_curve.png").stat().st_size > 1000
    assert "| lift-red |" in (tmp_path / "results.md").read_text()


def test_cli_quick_run_writes_results(tmp_path, capsys):
    assert main(["experiment", "--quick", "--tasks", "lift-any,place-any", "--out", str(tmp_path), "--no-progress",
                 "--threads", "1", "--episodes-per-iteration", "8", "--train-steps-per-iteration", "5"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["final_success"]) == {"lift-any", "place-any"}
    assert summary["train_steps"] == 4 * 5
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["algo"]["impersonation"] == "skill" and len(data["curve"]) == 2
