"""Training one SD version: read its examples, hold some out, fit, evaluate, publish.

Everything here blocks and runs on the service's training thread (one version at a time); the
learning itself is `mtopt.core.success_detector.SuccessDetector.fit`, the same code the
single-process experiment runner uses.

Usage::

    examples, hashes, sources = load_examples(storage, entries, catalogue, image_size)
    result = train_and_evaluate(examples, hashes, catalogue, settings, base=None)
    version = publish(registry_client, record, result, catalogue)
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Sequence

import numpy as np
import torch

from mtopt.core.config import DEFAULT_TOWER_STEM
from mtopt.core.success_detector import LabelledExamples, SuccessDetector, share_weights
from mtopt.episode_codec import decode_image
from mtopt.success_detector.models import ARTIFACT, MODEL, SERVING_ALIAS, build_detector, network_kwargs, weights_bytes
from mtopt.success_detector.storage import SdStorage, VersionRecord
from mtopt.tasks import TaskCatalogue
from mtopt.v1 import success_detector_pb2 as pb


class TrainingCancelled(RuntimeError):
    """The service is stopping; the version was not published."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    image_size: int
    channels: int
    train_steps: int
    batch_size: int
    learning_rate: float
    eval_fraction: float
    threshold: float
    device: str
    seed: int = 0
    tower_stem: str = DEFAULT_TOWER_STEM


@dataclasses.dataclass
class TrainResult:
    detector: SuccessDetector
    network: dict
    metrics: dict[str, float]
    num_examples: int


def load_examples(
    storage: SdStorage, entries: Sequence[tuple[str, str, bool]], catalogue: TaskCatalogue, image_size: int,
) -> tuple[LabelledExamples, list[str], list[str]]:
    """The stored examples ``entries`` = [(h, task, success)] as arrays, their hashes and sources."""
    images, tasks, labels, hashes, sources = [], [], [], [], []
    for h, task, success in entries:
        data = storage.get_example(h, task, success)
        if data is None:
            raise RuntimeError(f"example {h} of task {task!r} is listed but its object is missing")
        example = pb.LabelledExample.FromString(data)
        images.append(decode_image(example.image, name=f"example {example.example_id!r}", expected_shape=(image_size, image_size, 3)))
        tasks.append(catalogue[task].index)
        labels.append(success)
        hashes.append(h)
        sources.append(example.source)
    shape = (0, image_size, image_size, 3)
    return LabelledExamples(
        np.stack(images) if images else np.zeros(shape, np.uint8), np.asarray(tasks, np.int64), np.asarray(labels, bool),
    ), hashes, sources


def held_out(hashes: Sequence[str], fraction: float) -> np.ndarray:
    """Boolean mask of the examples held out for evaluation: a stable hash split of example_id."""
    return np.array([int(h[:8], 16) / 2**32 < fraction for h in hashes], bool)


def subset(examples: LabelledExamples, mask: np.ndarray) -> LabelledExamples:
    return LabelledExamples(examples.images[mask], examples.tasks[mask], examples.labels[mask])


def epochs_for(steps: int, num_examples: int, batch_size: int) -> int:
    """Epochs of `SuccessDetector.fit` that make at least ``steps`` gradient steps."""
    per_epoch = max(1, -(-num_examples // batch_size))
    return max(1, -(-steps // per_epoch))


def auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve (ties count half); None unless both classes are present."""
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def evaluate(sd: SuccessDetector, examples: LabelledExamples, catalogue: TaskCatalogue, threshold: float, prefix: str) -> dict[str, float]:
    """Accuracy per task and overall, AUC, on ``examples`` (each judged for its own task)."""
    if len(examples) == 0:
        return {}
    slots = sorted(set(int(t) for t in examples.tasks))
    probs = sd.predict(examples.images, slots)
    column = {s: j for j, s in enumerate(slots)}
    own = probs[np.arange(len(examples)), [column[int(t)] for t in examples.tasks]]
    correct = (own > threshold) == examples.labels
    out = {f"{prefix}/accuracy": float(correct.mean()), f"{prefix}/num_examples": float(len(examples))}
    for s in slots:
        mask = examples.tasks == s
        out[f"{prefix}/accuracy/{catalogue.by_index(s).name}"] = float(correct[mask].mean())
    area = auc(own, examples.labels)
    if area is not None:
        out[f"{prefix}/auc"] = area
    return out


def train_and_evaluate(
    examples: LabelledExamples, hashes: Sequence[str], catalogue: TaskCatalogue, settings: TrainSettings,
    base: tuple[dict, bytes] | None = None, cancelled: threading.Event | None = None,
    sources: Sequence[str] | None = None, focus: tuple[str, float] | None = None,
) -> TrainResult:
    """Fits a new SD (warm-started from ``base`` = (network, weights) if given) on the examples
    not held out, evaluates it on those held out, and returns it with its metrics.

    ``focus`` = (source, share): the training examples whose entry in ``sources`` is that source
    fill that share of every batch (`share_weights`)."""
    mask = held_out(hashes, settings.eval_fraction)
    if mask.all():  # nothing left to train on: train on every example, evaluate on none
        mask = np.zeros(len(examples), bool)
    train, test = subset(examples, ~mask), subset(examples, mask)
    focus_rows = sample_weights = None
    if focus is not None:
        focus_rows = (np.asarray(sources, dtype=object) == focus[0])[~mask]
        sample_weights = share_weights(focus_rows, focus[1])
    torch.manual_seed(settings.seed)
    if base is not None:
        network, weights = base
        sd = build_detector(network, weights, settings.device)
    else:
        network = network_kwargs(catalogue.num_slots, settings.image_size, settings.channels, settings.tower_stem)
        sd = build_detector(network, None, settings.device)
    epochs = epochs_for(settings.train_steps, len(train), settings.batch_size)

    def stop_if_cancelled(_module, _inputs):  # checked before every forward pass: a stop ends fit() within one batch
        if cancelled is not None and cancelled.is_set():
            raise TrainingCancelled("the service stopped while this version was training")

    hook = sd.net.register_forward_pre_hook(stop_if_cancelled)
    try:
        losses = sd.fit(train, epochs=epochs, batch_size=settings.batch_size, lr=settings.learning_rate, seed=settings.seed,
                        weights=sample_weights)
    finally:
        hook.remove()
    metrics = {"train/loss": float(losses[-1]), "train/epochs": float(epochs), "train/num_examples": float(len(train))}
    if sample_weights is not None:
        metrics["train/num_focus_examples"] = float(np.count_nonzero(focus_rows))
    metrics |= evaluate(sd, test, catalogue, settings.threshold, "eval")
    metrics |= {k: v for k, v in evaluate(sd, train, catalogue, settings.threshold, "train").items() if k.count("/") == 1}
    return TrainResult(sd, network, metrics, len(examples))


def publish(client, record: VersionRecord, result: TrainResult, catalogue: TaskCatalogue, parent_registry_version: int = 0):
    """Publishes a trained version to the registry (idempotent: its publish_id is the SD version)."""
    return client.publish(
        MODEL, record.train_steps, {ARTIFACT: weights_bytes(result.detector)}, metrics=result.metrics,
        parent_version=parent_registry_version, aliases=(SERVING_ALIAS,) if record.promote else (),
        tasks=[catalogue[n] for n in record.tasks], publish_id=f"{MODEL}/sd-version-{record.version}",
        labels={"network": json.dumps(result.network, sort_keys=True), "sd_version": str(record.version),
                "request_id": record.request_id[:200]},
    )
