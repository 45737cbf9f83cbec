"""The budget and schedule of `mtopt experiment`, without torch: the CLI reads its defaults here."""

from __future__ import annotations

import dataclasses

from mtopt.core.config import Q_TOWER_INITS, MTOptConfig


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Budget and schedule of one experiment run (algorithm hyperparameters live in `algo`)."""

    algo: MTOptConfig = MTOptConfig()
    seed: int = 0
    tasks: tuple[str, ...] = ()
    """Task names to learn; empty = the whole catalogue."""
    single_task: bool = False
    """Ablation: one Q-network per task, each with 1/num_tasks of the budget and only its own data."""
    bootstrap_episodes: int = 3000
    """Scripted episodes that seed the data (and the success detector's examples)."""
    sd_examples_per_task: int = 1000
    """Labelled final images per task for the success detector (half positive where possible).
    1,000 rather than 300: the SD's held-out accuracy on the shape tasks rose from 0.72-0.82 to
    0.90-0.95, and mean success at 6,000 steps by 0.10 over three seeds (docs/results.md 1f)."""
    q_tower_init: str = "random"
    """Where the Q-network's conv tower starts: "random" (He init, as in QT-Opt) or "sd" (a copy of
    the initial success detector's tower, which has learned colour and shape from the labels).
    "sd" ended lower on both seeds measured (docs/results.md 1g), so it stays an ablation."""
    sd_epochs: int = 25
    sd_min_steps: int = 1500
    """The SD trains for at least this many gradient steps (more epochs on small example sets)."""
    sd_random_fraction: float = 0.3
    """Share of the SD's labelling pool collected with random actions instead of the scripted
    policy: final states that look like a success to a careless eye (an open gripper over an empty
    plate) but are not, so the SD cannot key on the gripper's position instead of the outcome."""
    sd_refresh_every: int = 5
    """Every this many iterations, label some on-policy final images and fine-tune the SD (0 = off).
    The policy seeks out whatever the SD calls a success; labelling what it produced is how the
    SD's false positives get corrected before the policy learns to exploit them."""
    sd_refresh_labels: int = 10
    """Labels per task per refresh: half from images the SD currently calls a success for the task."""
    sd_refresh_steps: int = 300
    """Gradient steps of each SD fine-tune (on all examples labelled so far)."""
    sd_refresh_share: float = 0.5
    """Share of every SD fine-tune batch drawn from the on-policy labels of the refreshes (the rest
    from the bootstrap examples). 0 = uniform over all examples, where ~130 new labels among
    13,000 are each seen about once per fine-tune and the policy kept exploiting the SD's false
    positives; 0.5 ended them and raised mean success at 6,000 steps (docs/results.md 1n)."""
    iterations: int = 60
    episodes_per_iteration: int = 64
    train_steps_per_iteration: int = 60
    max_episode_steps: int = 4
    num_robots: int = 32
    """Simulated robots stepped in lock-step while collecting."""
    epsilon: float = 0.2
    """Probability of a random action per step while collecting."""
    scripted_fraction: float = 0.1
    """Share of collection episodes run by the scripted policy."""
    sequence_probability: float = 0.5
    """After an episode that ends holding an object, chance to continue with a place/present task."""
    eval_every: int = 10
    eval_episodes_per_task: int = 30
    replay_capacity_bytes: int = 4 << 30
    threads: int = 0
    """torch threads (0 = torch default)."""
    device: str = "cpu"
    """Torch device for the Q-network, targets, CEM and the SD (cpu, cuda)."""
    time_limit_s: float = 0.0
    """Stop the RL loop after the first iteration that ends past this many seconds (0 = no limit);
    the final evaluation still runs, and the results say where it stopped."""

    def __post_init__(self):
        if not 0.0 <= self.sd_refresh_share < 1.0:
            raise ValueError(f"sd_refresh_share must be in [0, 1), got {self.sd_refresh_share}")
        if self.q_tower_init not in Q_TOWER_INITS:
            raise ValueError(f"q_tower_init must be one of {Q_TOWER_INITS}, got {self.q_tower_init!r}")
