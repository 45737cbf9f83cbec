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
                 "--threads", "1", "--episodes-per-iteration", "8", "--train-steps-per-iteration", "5",
                 "--tower-stem", "conv2", "--point-readout", "--step-penalty", "0.05"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["final_success"]) == {"lift-any", "place-any"}
    assert summary["train_steps"] == 4 * 5
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["config"]["algo"]["impersonation"] == "skill" and len(data["curve"]) == 2
    assert data["config"]["algo"]["tower_stem"] == "conv2" and data["config"]["algo"]["point_readout"] is True
    assert data["config"]["algo"]["step_penalty"] == 0.05
    phases = data["rl_phase_s"]  # where the RL loop's time went
    assert set(phases) == {"train", "collect", "label", "sd_refresh", "evaluate"}
    assert phases["train"] > 0 and phases["collect"] > 0 and sum(phases.values()) <= data["wall_s"]

    # the saved network comes back with the run's own settings (a conv2 tower, not the default)
    import torch

    from mtopt.experiment import load_saved_q_network

    q, algo = load_saved_q_network(tmp_path)
    assert algo.tower_stem == "conv2" and algo.step_penalty == 0.05 and algo.point_readout
    saved = torch.load(tmp_path / "q.pt")
    assert all(torch.equal(v, saved[k]) for k, v in q.state_dict().items())

    # a run saved before the point readout existed has no such key: its network has no readout
    from mtopt.core.networks import QNetwork

    old = tmp_path / "before-point-readout"
    old.mkdir()
    del data["config"]["algo"]["point_readout"]
    (old / "results.json").write_text(json.dumps(data))
    torch.save(QNetwork(q.num_task_slots, stem="conv2", point_readout=False).state_dict(), old / "q.pt")
    q_old, algo_old = load_saved_q_network(old)
    assert not algo_old.point_readout and not q_old.q_head.point_readout


def test_sd_refresh_labels_on_policy_images_from_ground_truth_and_fine_tunes():
    import numpy as np

    from mtopt.collect import Fleet
    from mtopt.core.success_detector import LabelledExamples, SuccessDetector
    from mtopt.experiment import random_batch_policy, refresh_sd
    from mtopt.tasks import TaskCatalogue

    catalogue = TaskCatalogue.load().subset(["lift-any", "place-any"])
    rng = np.random.default_rng(0)
    fleet = Fleet(catalogue, 8, seed=3)
    choose = lambda r: catalogue.tasks[r.integers(len(catalogue))]
    pending = [fleet.collect(40, choose, None, 4), fleet.collect(40, choose, random_batch_policy(rng), 4)]
    sd = SuccessDetector(catalogue.num_slots, channels=8)
    seed_examples = LabelledExamples(np.zeros((2, 64, 64, 3), np.uint8), np.array([0, 8]), np.array([True, False]))
    cfg = ExperimentConfig(sd_refresh_labels=6, sd_refresh_steps=3, sd_refresh_share=0.5)
    finals = np.stack([e.final_image for c in pending for e in c.episodes])
    truth = np.concatenate([c.ground_truth for c in pending])
    called = sd.predict(finals, catalogue.indices) > cfg.algo.sd_threshold  # before the fine-tune
    grown, report = refresh_sd(sd, seed_examples, pending, catalogue, cfg, rng, initial=2)

    assert report["labels"] == 2 * 6 and len(grown) == 2 + 12 and sd.version == 1
    for img, task, label in zip(grown.images[2:], grown.tasks[2:], grown.labels[2:]):
        j = [t.index for t in catalogue.tasks].index(int(task))
        i = int(np.flatnonzero((finals == img).all(axis=(1, 2, 3)))[0])
        assert label == truth[i, j]  # every new label is the ground truth of an on-policy image
    np.testing.assert_array_equal(grown.images[:2], seed_examples.images)  # earlier examples are kept
    assert 0.0 <= report["flagged_precision"] <= 1.0 and 0.0 <= report["on_policy_accuracy"] <= 1.0
    for j, task in enumerate(catalogue.tasks):  # the reward's quality per task, from the SD before its fine-tune
        row = report["per_task"][task.name]
        assert row["called"] == called[:, j].sum() and row["positives"] == truth[:, j].sum()
        assert row["precision"] == pytest.approx((called[:, j] & truth[:, j]).sum() / max(1, called[:, j].sum()))
        assert row["tpr"] == pytest.approx((called[:, j] & truth[:, j]).sum() / max(1, truth[:, j].sum()))


def test_detector_report_counts_near_misses_of_the_same_skill_only():
    import numpy as np

    from mtopt.experiment import detector_report
    from mtopt.tasks import TaskCatalogue

    catalogue = TaskCatalogue.load().subset(["lift-any", "lift-cube", "lift-ball", "place-any"])
    names = [t.name for t in catalogue.tasks]
    rows = [  # ground truth per final image
        {"lift-any", "lift-cube"},  # holds a cube
        {"lift-any", "lift-ball"},  # holds a ball: a near miss for lift-cube
        {"lift-any", "lift-ball"},
        set(),  # empty-handed
        {"place-any"},  # placed: another skill, not a near miss for any lift task
    ]
    truth = np.array([[n in r for n in names] for r in rows])
    pred = truth.copy()
    pred[:, names.index("lift-cube")] = [True, True, False, True, False]  # the SD's lift-cube verdicts

    report = detector_report(pred, truth, catalogue)
    cube = report["lift-cube"]
    assert cube["near_misses"] == 2 and cube["near_miss_fpr"] == 0.5  # one of the two held balls called a cube
    assert cube["tpr"] == 1.0 and cube["tnr"] == 0.5 and cube["accuracy"] == 0.6 and cube["positives"] == 1
    assert cube["called"] == 3 and cube["precision"] == pytest.approx(1 / 3)
    assert report["lift-ball"]["near_misses"] == 1 and report["lift-ball"]["near_miss_fpr"] == 0.0  # the cube
    # lift-any succeeds whenever a sibling does, and place-any has no sibling here: no near misses
    assert report["lift-any"]["near_misses"] == 0 and report["lift-any"]["near_miss_fpr"] is None
    assert report["place-any"]["near_misses"] == 0 and report["place-any"]["near_miss_fpr"] is None


def test_sd_refresh_share_must_be_a_fraction():
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="sd_refresh_share"):
            ExperimentConfig(sd_refresh_share=bad)


def test_q_tower_can_start_from_the_success_detectors_tower():
    import torch

    from mtopt.core.config import MTOptConfig
    from mtopt.core.success_detector import SuccessDetector
    from mtopt.experiment import initial_q_network
    from mtopt.tasks import TaskCatalogue

    catalogue = TaskCatalogue.load().subset(["lift-any", "place-any"])
    algo = MTOptConfig(channels=8, tower_stem="conv2")
    sd = SuccessDetector(catalogue.num_slots, channels=8, stem="conv2")
    copied = initial_q_network(ExperimentConfig(algo=algo, q_tower_init="sd"), catalogue, sd)
    fresh = initial_q_network(ExperimentConfig(algo=algo), catalogue, sd)
    sd_tower = sd.net.tower.state_dict()
    for name, value in copied.tower.state_dict().items():
        assert torch.equal(value, sd_tower[name]), name
        assert value.data_ptr() != sd_tower[name].data_ptr(), f"{name} must be a copy: RL must not move the SD"
    assert not torch.equal(fresh.tower.convs[0].weight, sd_tower["convs.0.weight"])
    with pytest.raises(ValueError, match="q_tower_init"):
        ExperimentConfig(q_tower_init="imagenet")
