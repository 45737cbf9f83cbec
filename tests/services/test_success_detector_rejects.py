"""Every bad input to success_detector gets its status, a rejected_total{reason} count and
stores nothing (local dir and MinIO)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from registry_harness import code_of
from sd_harness import make_sd  # noqa: F401 - fixture
from mtopt.episode_codec import encode_image
from mtopt.v1 import common_pb2
from mtopt.v1 import success_detector_pb2 as sd_pb

StatusCode = __import__("grpc").StatusCode
TASK = "lift-red"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _example(i: int, image=None, task: str = TASK, success: bool = True, example_id: str | None = None):
    return sd_pb.LabelledExample(example_id=f"ep-{i}/{task}" if example_id is None else example_id,
                                 image=encode_image(_images(1, seed=i)[0]) if image is None else image, task=task, success=success)


def _corrupt_png() -> common_pb2.Image:
    good = encode_image(_images(1)[0])
    return common_pb2.Image(data=good.data[:60], encoding=good.encoding, height=64, width=64, channels=3)


BAD_EXAMPLES = {
    "empty_id": (lambda: _example(1, example_id=""), "invalid_example"),
    "long_id": (lambda: _example(1, example_id="x" * 600), "invalid_example"),
    "unknown_task": (lambda: _example(1, task="juggle"), "unknown_task"),
    "no_image": (lambda: sd_pb.LabelledExample(example_id="ep-1", task=TASK, success=True), "invalid_image"),
    "not_an_image": (lambda: _example(1, image=common_pb2.Image(data=b"hello", encoding=common_pb2.IMAGE_ENCODING_PNG,
                                                                   height=64, width=64, channels=3)), "invalid_image"),
    "truncated_png": (lambda: _example(1, image=_corrupt_png()), "invalid_image"),
    "wrong_size": (lambda: _example(1, image=encode_image(_images(1, size=32)[0])), "invalid_image"),
    "grey": (lambda: _example(1, image=encode_image(_images(1)[0][:, :, 0])), "invalid_image"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXAMPLES))
def test_add_examples_rejects_bad_example_and_stores_nothing(make_registry, make_sd, case):
    sd = make_sd(make_registry())
    bad, reason = BAD_EXAMPLES[case]
    request = sd_pb.AddExamplesRequest(examples=[_example(0), bad()])  # a valid one first: not stored either
    assert code_of(lambda: sd.stub.AddExamples(request, timeout=10)) == StatusCode.INVALID_ARGUMENT
    assert sd.stored_keys() == []
    assert sd.metric("mtopt_success_detector_rejected_total", reason=reason) == 1
    assert sd.metric("mtopt_success_detector_examples", task=TASK, label="positive") == 0


def test_too_many_examples_or_images(make_registry, make_sd):
    sd = make_sd(make_registry(), max_examples_per_request=3, max_classify_images=2)
    request = sd_pb.AddExamplesRequest(examples=[_example(i) for i in range(4)])
    assert code_of(lambda: sd.stub.AddExamples(request, timeout=10)) == StatusCode.RESOURCE_EXHAUSTED
    assert sd.stored_keys() == []
    images = [encode_image(i) for i in _images(3)]
    assert code_of(lambda: sd.stub.Classify(sd_pb.ClassifyRequest(images=images), timeout=10)) == StatusCode.RESOURCE_EXHAUSTED
    assert sd.metric("mtopt_success_detector_rejected_total", reason="too_large") == 2


def test_train_version_rejects(make_registry, make_sd):
    sd = make_sd(make_registry(), max_train_steps=1000)
    train = lambda **kw: sd.stub.TrainVersion(sd_pb.TrainVersionRequest(**({"request_id": "r1"} | kw)), timeout=10)  # noqa: E731
    assert code_of(lambda: train(request_id="")) == StatusCode.INVALID_ARGUMENT
    assert code_of(train) == StatusCode.FAILED_PRECONDITION  # no examples at all
    sd.add_examples(_images(3), [TASK] * 3, [True] * 3)
    assert code_of(lambda: train(tasks=[TASK])) == StatusCode.FAILED_PRECONDITION  # no negatives
    assert code_of(lambda: train(tasks=["lift-blue"])) == StatusCode.FAILED_PRECONDITION  # no examples for the task
    assert code_of(lambda: train(tasks=["juggle"])) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: train(train_steps=-1)) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: train(train_steps=1001)) == StatusCode.INVALID_ARGUMENT
    sd.add_examples(_images(3, seed=5), [TASK] * 3, [False] * 3)
    assert code_of(lambda: train(base_version=7)) == StatusCode.NOT_FOUND
    for bad in ({"focus_share": 1.0, "focus_source": "human"}, {"focus_share": -0.1, "focus_source": "human"},
                {"focus_share": float("nan"), "focus_source": "human"}, {"focus_share": 0.5},  # a share needs a source
                {"focus_share": 0.5, "focus_source": "x" * 300}):
        assert code_of(lambda: train(**bad)) == StatusCode.INVALID_ARGUMENT, bad
    assert not [k for k in sd.stored_keys() if not k.startswith("success_detector/examples/")]
    assert sd.metric("mtopt_success_detector_rejected_total", reason="no_examples") == 3
    assert sd.metric("mtopt_success_detector_rejected_total", reason="unknown_task") == 1
    assert sd.metric("mtopt_success_detector_rejected_total", reason="unknown_version") == 1


def test_classify_and_get_version_rejects(make_registry, make_sd):
    sd = make_sd(make_registry(), train_steps=5)
    images = [encode_image(i) for i in _images(2)]
    classify = lambda **kw: sd.stub.Classify(sd_pb.ClassifyRequest(**({"images": images} | kw)), timeout=10)  # noqa: E731
    assert code_of(classify) == StatusCode.FAILED_PRECONDITION  # nothing trained yet
    assert code_of(lambda: sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=0), timeout=10)) == StatusCode.NOT_FOUND
    assert sd.metric("mtopt_success_detector_rejected_total", reason="no_ready_version") == 2

    version = sd.train_ready_version(_images(6), [TASK] * 6, [True, False] * 3)
    assert len(classify().scores) == 2
    assert code_of(lambda: classify(sd_version=version + 5)) == StatusCode.NOT_FOUND
    assert code_of(lambda: sd.stub.GetVersion(sd_pb.GetSdVersionRequest(version=99), timeout=10)) == StatusCode.NOT_FOUND
    assert code_of(lambda: classify(sd_version=-1)) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: classify(tasks=["lift-blue"])) == StatusCode.INVALID_ARGUMENT  # not a task of this version
    assert code_of(lambda: classify(tasks=["juggle"])) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: classify(images=[_corrupt_png()])) == StatusCode.INVALID_ARGUMENT
    assert code_of(lambda: classify(images=[encode_image(_images(1, size=32)[0])])) == StatusCode.INVALID_ARGUMENT
    assert sd.metric("mtopt_success_detector_rejected_total", reason="unknown_version") == 2
    assert sd.metric("mtopt_success_detector_rejected_total", reason="unknown_task") == 2
    assert sd.metric("mtopt_success_detector_rejected_total", reason="invalid_image") == 2
    assert sd.metric("mtopt_success_detector_images_classified_total") == 2
