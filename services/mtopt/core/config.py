"""All hyperparameters of the learning algorithm, in one documented dataclass."""

from __future__ import annotations

import dataclasses

IMPERSONATION_MODES = ("orig", "all", "skill")
DEFAULT_TOWER_STEM = "patch4"
TOWER_STEMS = (DEFAULT_TOWER_STEM, "conv2")
"""Conv tower stems: `patch4` (the default) cuts the image into 4x4 patches (stride 4); `conv2`
starts with a stride-2 4x4 conv at half resolution, ~3x the tower's arithmetic, and sees an
object's shape (cube or ball, ~6 px wide at 64 px) that 4x4 patches blur."""
Q_TOWER_INITS = ("random", "sd")
"""Where `mtopt experiment` starts the Q-network's conv tower: random weights, or a copy of the
initial success detector's tower (`ExperimentConfig.q_tower_init`)."""


@dataclasses.dataclass(frozen=True)
class MTOptConfig:
    """Hyperparameters of MT-Opt. Defaults follow QT-Opt / MT-Opt, scaled to the small images."""

    # -- network (paper Fig. 9, scaled) --
    image_size: int = 64
    """Input images are image_size x image_size RGB."""
    channels: int = 32
    """Width of the conv tower and of the per-position head."""
    multi_head: bool = False
    """Ablation only: one output head per task instead of the one-hot-conditioned shared head."""
    tower_stem: str = DEFAULT_TOWER_STEM
    """First layers of the conv tower (TOWER_STEMS), for the Q-network and the SD.
    `conv2` learned the shape tasks faster (docs/results.md 1e); the services take it from
    MTOPT_TRAINER_TOWER_STEM and MTOPT_SUCCESS_DETECTOR_TOWER_STEM."""
    point_readout: bool = True
    """The Q-head also reads the feature map at the action's point (bilinear between cells) and
    scores it with the conditioning: a local path beside the broadcast-and-pool one
    (docs/results.md 1o: sharper grasps, +0.11 mean success at 6,000 steps). False is the network
    of every run and version before it (a label or results.json without the key means False)."""

    # -- CEM (QT-Opt) --
    cem_iterations: int = 2
    cem_samples: int = 64
    cem_elites: int = 6

    # -- Bellman targets --
    gamma: float = 0.9
    """Discount factor."""
    step_penalty: float = 0.0
    """Optional small negative reward on every non-final step."""
    polyak_tau: float = 0.01
    """Qt1 <- (1 - tau) Qt1 + tau Q after every train step (slow Polyak average)."""
    target_lag_steps: int = 200
    """Qt2 <- Qt1 every this many train steps (the lagged copy used for clipped double Q)."""

    # -- learner --
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    grad_clip: float = 10.0

    # -- data --
    impersonation: str = "skill"
    """Impersonation function: orig (own task only), all (every task), skill (tasks of the same skill)."""
    rebalance: bool = True
    """Equal share of every batch per task, and success_fraction successes inside each task."""
    success_fraction: float = 0.5
    """Share of each task's slice of a batch drawn from episodes that succeeded for that task."""
    sd_threshold: float = 0.5
    """Success detector probability above which an episode counts as a success (reward 1)."""

    def __post_init__(self):
        if self.impersonation not in IMPERSONATION_MODES:
            raise ValueError(f"impersonation must be one of {IMPERSONATION_MODES}, got {self.impersonation!r}")
        if not 0.0 <= self.success_fraction <= 1.0:
            raise ValueError(f"success_fraction must be in [0, 1], got {self.success_fraction}")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.cem_elites > self.cem_samples or self.cem_elites < 1:
            raise ValueError(f"cem_elites must be in [1, cem_samples={self.cem_samples}], got {self.cem_elites}")
        if self.cem_iterations < 1:
            raise ValueError("cem_iterations must be >= 1")
        if self.tower_stem not in TOWER_STEMS:
            raise ValueError(f"tower_stem must be one of {TOWER_STEMS}, got {self.tower_stem!r}")
        if self.image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8, got {self.image_size}")
