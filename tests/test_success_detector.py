"""Unit tests of the success detector (training on labelled final images) and of example selection."""

import numpy as np
import pytest
import torch

from mtopt.core.success_detector import LabelledExamples, SuccessDetector, select_examples, share_weights

SLOTS, SIZE, CH = 32, 64, 8


def colour_images(rgb, n, rng):
    img = np.empty((n, SIZE, SIZE, 3), np.uint8)
    img[:] = rgb
    noise = rng.integers(-20, 21, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def test_success_detector_learns_a_separable_task():
    rng = np.random.default_rng(0)
    n = 48
    red, blue = colour_images((220, 40, 40), n, rng), colour_images((50, 80, 230), n, rng)
    train = LabelledExamples(
        images=np.concatenate([red, blue]),
        tasks=np.zeros(2 * n, np.int64),
        labels=np.concatenate([np.ones(n, bool), np.zeros(n, bool)]),
    )
    torch.manual_seed(0)
    sd = SuccessDetector(SLOTS, SIZE, CH)
    history = sd.fit(train, epochs=30, seed=0)
    assert len(history) == 30 and history[-1] < history[0]
    assert sd.version == 1
    test_red, test_blue = colour_images((220, 40, 40), 40, rng), colour_images((50, 80, 230), 40, rng)
    p = sd.predict(np.concatenate([test_red, test_blue]), [0])
    assert p.shape == (80, 1)
    correct = np.concatenate([p[:40, 0] > 0.5, p[40:, 0] <= 0.5])
    assert correct.mean() > 0.95, correct.mean()
    assert sd.predict(np.zeros((0, SIZE, SIZE, 3), np.uint8), [0, 1]).shape == (0, 2)


def test_fit_weights_decide_which_examples_train():
    # the same red images twice, once labelled success and once failure: the weights pick the winner
    rng = np.random.default_rng(1)
    red = colour_images((220, 40, 40), 32, rng)
    train = LabelledExamples(np.concatenate([red, red]), np.zeros(64, np.int64),
                             np.concatenate([np.ones(32, bool), np.zeros(32, bool)]))
    probe = colour_images((220, 40, 40), 16, rng)
    for positive_weight, expect_success in ((1.0, True), (0.0, False)):
        torch.manual_seed(0)
        sd = SuccessDetector(SLOTS, SIZE, CH)
        w = np.concatenate([np.full(32, positive_weight), np.full(32, 1.0 - positive_weight)])
        sd.fit(train, epochs=8, seed=0, weights=w)
        p = sd.predict(probe, [0])[:, 0]
        assert ((p > 0.5) == expect_success).all(), (positive_weight, p)


def test_share_weights_give_a_few_focus_rows_their_share_of_every_batch():
    focus = np.arange(13_130) >= 13_000  # 130 refresh labels after 13,000 bootstrap examples
    w = share_weights(focus, 0.5)
    assert w.shape == (13_130,) and np.isclose(w.sum(), 1.0)
    assert np.isclose(w[focus].sum(), 0.5) and np.isclose(w[~focus].sum(), 0.5)
    assert np.isclose(w[13_000] / w[0], 100.0)  # each focus row is drawn 100x as often
    assert np.isclose(share_weights(focus, 0.25)[focus].sum(), 0.25)
    assert share_weights(focus, 0.0) is None  # uniform: fit visits every row once per epoch
    assert share_weights(np.zeros(5, bool), 0.5) is None and share_weights(np.ones(5, bool), 0.5) is None
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="share"):
            share_weights(focus, bad)


def test_fit_rejects_bad_weights():
    ex = LabelledExamples(np.zeros((3, SIZE, SIZE, 3), np.uint8), np.zeros(3, np.int64), np.array([True, False, True]))
    sd = SuccessDetector(SLOTS, SIZE, CH)
    for bad in (np.ones(2), np.array([1.0, -1.0, 1.0]), np.zeros(3), np.array([1.0, np.nan, 1.0])):
        try:
            sd.fit(ex, epochs=1, weights=bad)
        except ValueError as e:
            assert "weights" in str(e)
        else:
            raise AssertionError(f"accepted weights {bad}")
    assert sd.version == 0  # nothing trained


def _outcomes_fixture(catalogue):
    """Images 0-3: hold red (lift-any, lift-red); 4-13: hold blue (lift-any, lift-blue);
    14-23: nothing held, nothing placed (no success); 24-27: on plate (place skill only)."""
    n = 28
    col = {t.name: j for j, t in enumerate(catalogue.tasks)}
    out = np.zeros((n, len(catalogue)), bool)
    out[0:4, [col["lift-any"], col["lift-red"]]] = True
    out[4:14, [col["lift-any"], col["lift-blue"]]] = True
    out[24:28, [col["place-on-plate"], col["place-any"]]] = True
    imgs = np.zeros((n, 4, 4, 3), np.uint8)
    imgs[:, 0, 0, 0] = np.arange(n)  # image i is tagged with i
    return imgs, out, col


def _chosen(examples, catalogue, name):
    m = examples.tasks == catalogue[name].index
    return examples.images[m][:, 0, 0, 0].astype(int), examples.labels[m]


def test_select_examples_prefers_same_skill_near_misses(catalogue):
    imgs, out, col = _outcomes_fixture(catalogue)
    ex = select_examples(imgs, out, catalogue, per_task=8, rng=np.random.default_rng(0))
    tags, labels = _chosen(ex, catalogue, "lift-red")
    assert len(tags) == 8
    pos, neg = tags[labels], tags[~labels]
    assert sorted(pos.tolist()) == [0, 1, 2, 3]  # half positive
    assert len(neg) == 4
    # half near misses (holding blue: success for lift-any / lift-blue), half far (nothing or plate)
    assert np.sum((neg >= 4) & (neg < 14)) == 2 and np.sum(neg >= 14) == 2
    assert len(set(tags.tolist())) == 8  # no repeats
    # labels are the ground truth of the task they are paired with
    for t, l in zip(tags, labels):
        assert out[t, col["lift-red"]] == l
    # every task gets examples, each paired with its own slot
    assert set(ex.tasks.tolist()) <= set(catalogue.indices)
    assert len(ex) == len(ex.images) == len(ex.labels)


def test_select_examples_uses_near_misses_when_no_far_negatives(catalogue):
    imgs, out, _ = _outcomes_fixture(catalogue)
    keep = np.r_[0:14]  # only holding images: every lift-red negative is a near miss
    ex = select_examples(imgs[keep], out[keep], catalogue, per_task=8, rng=np.random.default_rng(1))
    tags, labels = _chosen(ex, catalogue, "lift-red")
    assert sorted(tags[labels].tolist()) == [0, 1, 2, 3]
    neg = tags[~labels]
    assert len(neg) == 4 and np.all((neg >= 4) & (neg < 14))


def test_select_examples_near_misses_stay_inside_the_skill(catalogue):
    imgs, out, _ = _outcomes_fixture(catalogue)
    keep = np.r_[0:4, 14:28]  # no blue holds: plate images succeed only for another skill
    ex = select_examples(imgs[keep], out[keep], catalogue, per_task=8, rng=np.random.default_rng(2))
    tags, labels = _chosen(ex, catalogue, "lift-red")
    neg = tags[~labels]
    assert len(neg) == 4 and np.all(neg >= 14)  # far negatives only (plate images count as far)
    tags, labels = _chosen(ex, catalogue, "place-on-plate")
    assert sorted(tags[labels].tolist()) == [24, 25, 26, 27]
    assert len(tags) == 8 and not np.any(np.isin(tags[~labels], [24, 25, 26, 27]))


def test_select_examples_fills_per_task_when_enough_data(catalogue):
    imgs, out, _ = _outcomes_fixture(catalogue)
    keep = np.r_[0:1, 4:14, 14:15]  # 1 positive, 10 near misses, 1 far negative for lift-red
    ex = select_examples(imgs[keep], out[keep], catalogue, per_task=4, rng=np.random.default_rng(3))
    tags, labels = _chosen(ex, catalogue, "lift-red")
    assert labels.sum() == 1
    assert len(tags) == 4  # 1 positive + 3 negatives: 12 images are available
