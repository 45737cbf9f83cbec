"""The multi-task success detector (SD): P(success | final image, task), the only reward source.

Trained by supervised learning on labelled final images: positives and near-miss negatives (a
final state that succeeded for another task of the same skill, e.g. holding the blue object is a
near-miss for lift-red).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mtopt.core.config import DEFAULT_TOWER_STEM
from mtopt.core.networks import SuccessDetectorNet
from mtopt.tasks import TaskCatalogue


@dataclasses.dataclass
class LabelledExamples:
    """Final images with a success label for one task each."""

    images: np.ndarray  # (N, H, W, 3) uint8
    tasks: np.ndarray  # (N,) int64 task slots
    labels: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return int(self.tasks.shape[0])


def select_examples(
    final_images: np.ndarray,
    outcomes: np.ndarray,
    catalogue: TaskCatalogue,
    per_task: int,
    rng: np.random.Generator,
) -> LabelledExamples:
    """Picks up to `per_task` examples per task, half positive and half negative.

    `outcomes` is (num_images, len(catalogue)) bool ground truth. Negatives prefer near misses:
    images that succeeded for another task of the same skill.
    """
    imgs, tasks, labels = [], [], []
    for j, task in enumerate(catalogue.tasks):
        pos = np.flatnonzero(outcomes[:, j])
        same_skill = [i for i, t in enumerate(catalogue.tasks) if t.skill == task.skill and i != j]
        near = np.flatnonzero(~outcomes[:, j] & outcomes[:, same_skill].any(axis=1)) if same_skill else np.array([], int)
        far = np.flatnonzero(~outcomes[:, j] & ~np.isin(np.arange(len(outcomes)), near))
        n_pos = min(len(pos), per_task // 2)
        n_neg = per_task - n_pos
        n_far = min(len(far), n_neg // 2)
        n_near = min(len(near), n_neg - n_far)
        n_far = min(len(far), n_neg - n_near)
        chosen_pos = rng.choice(pos, n_pos, replace=False) if n_pos else np.array([], int)
        chosen_near = rng.choice(near, n_near, replace=False) if n_near else np.array([], int)
        chosen_far = rng.choice(far, n_far, replace=False) if n_far else np.array([], int)
        for idx, label in ((chosen_pos, True), (chosen_near, False), (chosen_far, False)):
            imgs.append(final_images[idx])
            tasks.append(np.full(len(idx), task.index, dtype=np.int64))
            labels.append(np.full(len(idx), label))
    return LabelledExamples(np.concatenate(imgs), np.concatenate(tasks), np.concatenate(labels))


def share_weights(focus: np.ndarray, share: float) -> np.ndarray | None:
    """Sampling weights for `SuccessDetector.fit` under which the rows where `focus` is true fill
    `share` of every batch (and the others the rest), however few they are.

    None (uniform: every row once per epoch) when `share` is 0 or either group is empty. This is
    how the SD refreshes' few on-policy labels (the false positives the policy found) weigh as much
    as the thousands of bootstrap examples (docs/results.md 1n).
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be in [0, 1), got {share}")
    focus = np.asarray(focus, bool)
    n_focus = int(focus.sum())
    if not share or not n_focus or n_focus == len(focus):
        return None
    return np.where(focus, share / n_focus, (1.0 - share) / (len(focus) - n_focus))


class SuccessDetector:
    """Trains and runs a `SuccessDetectorNet`.

    Usage::

        sd = SuccessDetector(catalogue.num_slots)
        sd.fit(examples, epochs=30)
        probs = sd.predict(final_images, [t.index for t in tasks])   # (N, len(tasks))
    """

    def __init__(self, num_task_slots: int, image_size: int = 64, channels: int = 32, device: str = "cpu",
                 stem: str = DEFAULT_TOWER_STEM):
        self.net = SuccessDetectorNet(num_task_slots, image_size, channels, stem).to(device)
        self.device = device
        self.version = 0

    def fit(
        self, examples: LabelledExamples, epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
        weights: np.ndarray | None = None,
    ) -> list[float]:
        """Supervised training (positive class re-weighted to balance); returns the loss per epoch.

        Without `weights` every epoch visits each example once. With `weights` (one non-negative
        value per example) an epoch draws as many rows, with replacement, each in proportion to its
        weight: how a few hard examples get a fixed share of every batch.
        """
        g = torch.Generator().manual_seed(seed)
        images = torch.from_numpy(examples.images)
        tasks = torch.from_numpy(examples.tasks)
        labels = torch.from_numpy(examples.labels.astype(np.float32))
        p = None  # sampling probability of each row (None: each row once per epoch)
        pos = float(labels.mean()) if len(labels) else 0.5
        if weights is not None:
            w = np.asarray(weights, dtype=np.float64)
            if w.shape != (len(examples),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
                raise ValueError(f"weights must be {len(examples)} finite non-negative values with a positive sum")
            p = torch.from_numpy(w / w.sum())
            pos = float((p * labels.double()).sum())  # the positive share of what training will see
        pos_weight = torch.tensor((1 - pos) / max(pos, 1e-3)).clamp(0.2, 5.0).to(self.device)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        history = []
        self.net.train()
        for _ in range(epochs):
            if p is None:
                order = torch.randperm(len(labels), generator=g)
            else:
                order = torch.multinomial(p, len(labels), replacement=True, generator=g)
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                img = images[idx].to(self.device)
                # augmentation: small pixel shifts so the SD does not memorise exact positions
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
                img = torch.roll(img, shifts=(dy, dx), dims=(1, 2))
                logits = self.net(img, tasks[idx, None].to(self.device))[:, 0]
                loss = F.binary_cross_entropy_with_logits(logits, labels[idx].to(self.device), pos_weight=pos_weight)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append(total / max(1, len(labels)))
        self.net.eval()
        self.version += 1
        return history

    @torch.no_grad()
    def predict(self, images: np.ndarray, task_indices: Sequence[int], batch_size: int = 256) -> np.ndarray:
        """P(success) of every image for every task in `task_indices`: (N, len(task_indices))."""
        self.net.eval()
        out = []
        tasks = torch.as_tensor(list(task_indices), dtype=torch.int64)
        for start in range(0, len(images), batch_size):
            img = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(self.device)
            t = tasks[None, :].expand(img.shape[0], -1).to(self.device)
            out.append(torch.sigmoid(self.net(img, t)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(tasks)), np.float32)
