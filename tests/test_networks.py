"""Unit tests of the Q-network, the success detector network, ONNX export, learner and CEM policies."""

import numpy as np
import pytest
import torch

from mtopt.core.bellman import q_loss
from mtopt.core.config import MTOptConfig
from mtopt.core.export import HEAD_FILE, TOWER_FILE, export_onnx, export_onnx_bytes
from mtopt.core.learner import Learner, TargetBatch
from mtopt.core.networks import QNetwork, SuccessDetectorNet, canonical_action_t
from mtopt.core.policy import CEMPolicy
from mtopt.robot import ACTION_DIM, TERMINATE_ACTION, Observation, canonical_action

SLOTS, SIZE, CH = 32, 64, 8


def images(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, SIZE, SIZE, 3), dtype=torch.uint8, generator=g)


def qnet(seed=0, multi_head=False, stem="patch4", point_readout=True):
    torch.manual_seed(seed)
    return QNetwork(SLOTS, SIZE, CH, multi_head=multi_head, stem=stem, point_readout=point_readout).eval()


def rand_actions(b, n, seed=1):
    return torch.rand(b, n, ACTION_DIM, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def is_canonical(a):
    a = np.asarray(a)
    return (
        a.shape == (ACTION_DIM,)
        and np.all(np.isfinite(a))
        and np.all(np.abs(a[:2]) <= 1.0)
        and set(np.unique(a[2:]).tolist()) <= {-1.0, 1.0}
    )


# -- QNetwork ---------------------------------------------------------------------------------
@pytest.mark.parametrize("multi_head", [False, True])
@pytest.mark.parametrize("b,n", [(1, 1), (3, 5), (2, 64)])
def test_qnetwork_output_shapes(multi_head, b, n):
    q = qnet(multi_head=multi_head)
    with torch.no_grad():
        out = q(images(b), torch.rand(b, 2), rand_actions(b, n), torch.arange(b) % 13)
    assert out.shape == (b, n) and out.dtype == torch.float32
    assert torch.all(torch.isfinite(out))


def test_tower_feature_map_shape():
    q = qnet()
    with torch.no_grad():
        f = q.tower(images(2))
    assert f.shape[:2] == (2, CH) and f.ndim == 4


def test_tower_stems_reach_the_same_map_at_different_first_resolutions():
    x = images(2)
    for stem, first_map in (("patch4", SIZE // 4), ("conv2", SIZE // 2)):
        tower = qnet(stem=stem).tower
        with torch.no_grad():
            assert tower(x).shape == (2, CH, SIZE // 8, SIZE // 8)
            first = tower.convs[0](torch.cat([x.permute(0, 3, 1, 2).float(), tower.coords.expand(2, -1, -1, -1)], 1))
        assert first.shape[-2:] == (first_map, first_map), stem
    assert SuccessDetectorNet(SLOTS, SIZE, CH, stem="conv2").tower.convs[0].stride == (2, 2)
    with pytest.raises(ValueError, match="stem"):
        QNetwork(SLOTS, SIZE, CH, stem="patch8")
    with pytest.raises(ValueError, match="tower_stem"):
        MTOptConfig(tower_stem="patch8")


def test_head_on_precomputed_features_equals_forward():
    q = qnet()
    img, st, a, tk = images(3), torch.rand(3, 2), rand_actions(3, 7), torch.tensor([0, 4, 12])
    with torch.no_grad():
        full = q(img, st, a, tk)
        f = q.tower(img)
        head = q.head(f, st, a, tk)
    torch.testing.assert_close(head, full, rtol=0, atol=0)


def test_n_candidates_equal_separate_evaluations():
    q = qnet()
    b, n = 2, 16
    img, st, a, tk = images(b), torch.rand(b, 2), rand_actions(b, n), torch.tensor([1, 9])
    with torch.no_grad():
        together = q(img, st, a, tk)
        f = q.tower(img)
        alone = torch.stack([q.head(f, st, a[:, j : j + 1], tk)[:, 0] for j in range(n)], dim=1)
        per_state = torch.cat([q(img[i : i + 1], st[i : i + 1], a[i : i + 1], tk[i : i + 1]) for i in range(b)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together, per_state, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("point_readout", [False, True])
def test_score_equals_head(point_readout):
    q = qnet(point_readout=point_readout)
    b, n = 19, 8  # more states than one chunk
    img, st, a, tk = images(b), torch.rand(b, 2), rand_actions(b, n), torch.arange(b) % 13
    with torch.no_grad():
        f = q.tower(img)
        torch.testing.assert_close(q.score(f, st, a, tk), q.head(f, st, a, tk), rtol=1e-5, atol=1e-6)


def test_head_workspace_is_inference_only():
    q = qnet()
    f = q.tower(images(2))
    ws = (torch.empty(2 * 3 * f[0].numel()), torch.empty(2 * 3 * f[0].numel()))
    with pytest.raises(ValueError, match="inference only"):
        q.head(f, torch.rand(2, 2), rand_actions(2, 3), torch.arange(2), workspace=ws)
    with torch.no_grad():
        torch.testing.assert_close(
            q.head(f, torch.ones(2, 2), rand_actions(2, 3), torch.arange(2), workspace=ws),
            q.head(f, torch.ones(2, 2), rand_actions(2, 3), torch.arange(2)), rtol=0, atol=0,
        )


def _reference_head(h, features, cond, points):
    """ConditionedHead written out directly, as the network is defined (module docstring)."""
    f = features.flatten(2).transpose(1, 2)
    x = f[:, None, :, :] + h.embed(cond)[:, :, None, :]
    rel = h.cells[None, None, :, :] - points[:, :, None, :]
    x = x + h.offset(torch.cat([rel, (rel * rel).sum(-1, keepdim=True)], dim=-1))
    x = h.pointwise(torch.relu(x))
    out = h.fc(torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=-1))
    if h.point_readout:  # bilinear sampling of the map at the point, edge cells beyond the outer centres
        grid = torch.stack([points[..., 0], -points[..., 1]], dim=-1)[:, :, None, :]  # y up = row 0
        at = torch.nn.functional.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = out + h.readout(torch.cat([at[..., 0].transpose(1, 2), h.embed(cond)], dim=-1))
    return out


@pytest.mark.parametrize("point_readout", [True, False])
def test_head_equals_its_direct_definition_with_gradients(point_readout):
    """The head's factored offset term, in-place activations and tent-weight sampling change no
    logit and no gradient."""
    q = qnet(seed=3, point_readout=point_readout).train()
    with torch.no_grad():  # non-zero biases everywhere, so the bias paths are checked too
        for p in q.q_head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    features = q.tower(images(3)).detach().requires_grad_(True)
    a = canonical_action_t(rand_actions(3, 7))
    cond = torch.cat([a, torch.rand(3, 7, 2), torch.rand(3, 7, SLOTS)], dim=-1).requires_grad_(True)
    points = a[..., :2].clone().requires_grad_(True)
    outs, grads = [], []
    for fn in (q.q_head, lambda *args: _reference_head(q.q_head, *args)):
        q.zero_grad()
        for t in (features, cond, points):
            t.grad = None
        out = fn(features, cond, points)
        (out.sin().sum()).backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in (features, cond, points)] + [p.grad.clone() for p in q.q_head.parameters()])
    assert outs[0].shape == (3, 7, 1)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for g_fast, g_ref in zip(*grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=1e-4, atol=1e-5)


def test_canonical_action_binarisation():
    a = torch.tensor([[[0.2, -0.4, 0.3, -0.2], [0.2, -0.4, 0.9, -1.0], [1.7, -3.0, 0.01, 0.5], [1.0, -1.0, 1.0, 1.0]]])
    c = canonical_action_t(a)
    expected = torch.tensor([[[0.2, -0.4, 1.0, -1.0], [0.2, -0.4, 1.0, -1.0], [0.0, 0.0, -1.0, 1.0], [0.0, 0.0, -1.0, 1.0]]])
    torch.testing.assert_close(c, expected, rtol=0, atol=0)
    np.testing.assert_array_equal(canonical_action(a.numpy()), c.numpy())  # torch twin == numpy version
    q = qnet()
    with torch.no_grad():
        out = q(images(1), torch.rand(1, 2), a, torch.tensor([2]))
    assert out[0, 0] == out[0, 1]  # grip 0.3 and 0.9 are the same command
    assert out[0, 2] == out[0, 3]  # both terminate: one action
    with torch.no_grad():
        other = q(images(1), torch.rand(1, 2), torch.tensor([[[0.2, -0.4, -0.3, -0.2]]]), torch.tensor([2]))
    assert other[0, 0] != out[0, 0]  # but open vs close differ


def test_every_terminate_action_is_one_action():
    """Nothing moves on TERMINATE, so its position and grip must not change what the Q-network sees:
    a network that saw them valued "terminate over the plate" like "move over the plate"."""
    rng = np.random.default_rng(4)
    a = rng.uniform(-0.9, 0.9, (1, 9, ACTION_DIM)).astype(np.float32)
    a[..., 3] = rng.uniform(0.01, 1.0, 9)  # all TERMINATE, anywhere, any grip
    c = canonical_action(a)
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, np.broadcast_to(TERMINATE_ACTION, c.shape))
    np.testing.assert_array_equal(canonical_action_t(torch.from_numpy(a)).numpy(), c)
    with torch.no_grad():
        out = qnet()(images(1), torch.rand(1, 2), torch.from_numpy(a), torch.tensor([5]))
    torch.testing.assert_close(out, out[:1, :1].expand_as(out), rtol=0, atol=1e-6)  # rows of one product: not bit-equal
    moves = a.copy()
    moves[..., 3] = -0.5  # the same points as moves: they still differ
    assert len(set(canonical_action(moves)[0, :, 0].tolist())) == 9


def test_task_conditioning_changes_the_output():
    q = qnet()
    img, st = images(1), torch.rand(1, 2)
    a = rand_actions(1, 8)
    with torch.no_grad():
        outs = torch.stack([q(img, st, a, torch.tensor([k]))[0] for k in range(13)])
    for i in range(13):
        for j in range(i + 1, 13):
            assert not torch.allclose(outs[i], outs[j]), (i, j)


def test_multi_head_gathers_the_task_column():
    q = qnet(multi_head=True)
    assert q.q_head.fc[-1].out_features == SLOTS
    assert q.q_head.embed[0].in_features == ACTION_DIM + 2  # no one-hot input
    b, n = 3, 4
    img, st, a, tk = images(b), torch.rand(b, 2), rand_actions(b, n), torch.tensor([0, 7, 31])
    with torch.no_grad():
        f = q.tower(img)
        cond = torch.cat([canonical_action_t(a), st[:, None, :].expand(b, n, -1)], dim=-1)
        every = q.q_head(f, cond, canonical_action_t(a)[..., :2])  # (B, N, SLOTS)
        got = q.head(f, st, a, tk)
    assert every.shape == (b, n, SLOTS)
    for i in range(b):
        torch.testing.assert_close(got[i], every[i, :, tk[i]], rtol=0, atol=0)
    # the shared-head network has the one-hot in its input instead
    assert qnet().q_head.embed[0].in_features == ACTION_DIM + 2 + SLOTS


# -- SuccessDetectorNet -----------------------------------------------------------------------
def test_success_detector_net_shapes_and_columns():
    torch.manual_seed(0)
    sd = SuccessDetectorNet(SLOTS, SIZE, CH).eval()
    img = images(4)
    tasks = torch.tensor([[0, 1, 6]] * 4)
    with torch.no_grad():
        out = sd(img, tasks)
        assert out.shape == (4, 3)
        for j in range(3):
            torch.testing.assert_close(out[:, j], sd(img, tasks[:, j : j + 1])[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out[:, 0], out[:, 1])


# -- ONNX export ------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[("patch4", True), ("conv2", True), ("patch4", False)],
                ids=["patch4", "conv2", "no-point-readout"])
def exported(request):
    stem, point_readout = request.param
    q = qnet(seed=3, stem=stem, point_readout=point_readout)
    return q, export_onnx_bytes(q)


def test_onnx_export_files(exported, tmp_path):
    q, artifacts = exported
    assert set(artifacts) == {TOWER_FILE, HEAD_FILE}
    assert all(isinstance(v, bytes) and len(v) > 100 for v in artifacts.values())
    paths = export_onnx(q, tmp_path / "model")
    assert sorted(p.name for p in paths) == sorted([TOWER_FILE, HEAD_FILE])
    assert all(p.is_file() for p in paths)


def test_onnx_matches_torch(exported):
    pytest.importorskip("onnxruntime")
    from mtopt.onnx_policy import OnnxCEMPolicy

    q, artifacts = exported
    policy = OnnxCEMPolicy(artifacts[TOWER_FILE], artifacts[HEAD_FILE])
    rng = np.random.default_rng(0)
    worst = 0.0
    for trial in range(3):
        img = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        state = rng.uniform(0, 1, 2).astype(np.float32)
        acts = rng.uniform(-1, 1, (64, ACTION_DIM)).astype(np.float32)
        task = int(rng.integers(13))
        onnx_logits = policy.q_values(img, state, acts, task)
        assert onnx_logits.shape == (64,)
        with torch.no_grad():
            torch_logits = q(torch.from_numpy(img)[None], torch.from_numpy(state)[None],
                             torch.from_numpy(acts)[None], torch.tensor([task]))[0].numpy()
        worst = max(worst, float(np.abs(onnx_logits - torch_logits).max()))
    assert worst <= 1e-5, worst


def test_onnx_policy_returns_a_valid_canonical_action(exported, tmp_path):
    pytest.importorskip("onnxruntime")
    from mtopt.onnx_policy import OnnxCEMPolicy

    q, artifacts = exported
    export_onnx(q, tmp_path)
    rng = np.random.default_rng(1)
    obs = Observation(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8), np.array([0.0, 1.0], np.float32))
    policies = [OnnxCEMPolicy(artifacts[TOWER_FILE], artifacts[HEAD_FILE], seed=0),
                OnnxCEMPolicy.from_directory(tmp_path, seed=0, epsilon=1.0)]
    if hasattr(OnnxCEMPolicy, "from_bytes"):
        policies.append(OnnxCEMPolicy.from_bytes(artifacts, seed=1))
    for policy in policies:
        for _ in range(5):
            a = policy(obs, 3)
            assert is_canonical(a), a
            assert a.dtype == np.float32


# -- torch CEM policy -------------------------------------------------------------------------
def test_cem_policy_returns_valid_canonical_actions():
    q = qnet(seed=4)
    config = MTOptConfig(image_size=SIZE, channels=CH)
    policy = CEMPolicy(q, config, epsilon=0.0, seed=0)
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    actions, values = policy.batch(imgs, np.zeros((3, 2), np.float32), np.array([0, 5, 10]))
    assert actions.shape == (3, ACTION_DIM) and values.shape == (3,)
    assert all(is_canonical(a) for a in actions)
    assert np.all((values > 0) & (values < 1))
    # the reported value is Q of the chosen (canonical) action
    with torch.no_grad():
        direct = torch.sigmoid(q(torch.from_numpy(imgs), torch.zeros(3, 2), torch.from_numpy(actions)[:, None],
                                 torch.tensor([0, 5, 10])))[:, 0].numpy()
    np.testing.assert_allclose(values, direct, atol=1e-5)
    obs = Observation(imgs[0], np.zeros(2, np.float32))
    assert is_canonical(policy(obs, 1))
    assert is_canonical(CEMPolicy(q, config, epsilon=1.0, seed=0)(obs, 1))


# -- Learner ----------------------------------------------------------------------------------
def test_learner_reduces_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    q = QNetwork(SLOTS, SIZE, CH)
    config = MTOptConfig(image_size=SIZE, channels=CH, learning_rate=3e-3)
    learner = Learner(q, config)
    b = 16
    g = torch.Generator().manual_seed(5)
    tb = TargetBatch(
        images=images(b, seed=5),
        states=torch.rand(b, 2, generator=g),
        actions=(torch.rand(b, ACTION_DIM, generator=g) * 2 - 1),
        tasks=torch.randint(0, 13, (b,), generator=g),
        targets=torch.randint(0, 2, (b,), generator=g).float(),
    )
    losses = [learner.step(tb) for _ in range(50)]
    assert learner.steps == 50
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # the reported loss is q_loss of the network's logits (before that step's update)
    with torch.no_grad():
        q.eval()
        now = float(q_loss(q(tb.images, tb.states, tb.actions[:, None], tb.tasks)[:, 0], tb.targets))
    assert now < losses[0]
    # state round trip
    other = Learner(QNetwork(SLOTS, SIZE, CH), config)
    other.load_state_dict(learner.state_dict())
    assert other.steps == 50
    for a, c in zip(other.q.parameters(), q.parameters()):
        assert torch.equal(a, c)
