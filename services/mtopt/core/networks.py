"""The multi-task Q-network and success detector (MT-Opt paper Fig. 9, scaled to small images).

    image (uint8 HxWx3) + 2 coordinate planes -> conv tower -> feature map F (C x H/8 x W/8)
    action, state features, task one-hot -> MLP -> vector g (C), broadcast-added to F
    -> per-position layers (1x1 convs) -> spatial max and mean pool -> two FC -> logit
    + point readout (the Q-network's default): F read at the action's (x, y), with g -> MLP -> logit

Q(s, a, T) = sigmoid(logit). The tower depends only on the image, so `tower` runs once per state
and `head` scores any number of candidate actions against it: CEM evaluates 64 actions for the
price of one tower pass plus 64 cheap head passes.

Shapes used throughout: features (B, C, h, w); actions (B, N, ACTION_DIM); states (B, STATE_DIM);
task indices (B,) or (B, N); logits (B, N).
"""

from __future__ import annotations

import json

import torch
from torch import nn
from torch.nn import functional as F

from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS
from mtopt.robot import ACTION_DIM, ACTION_TERMINATE, STATE_DIM, TERMINATE_ACTION


def canonical_action_t(actions: torch.Tensor) -> torch.Tensor:
    """Torch twin of `mtopt.robot.canonical_action`: clip positions, binarise grip/terminate, and
    every TERMINATE action becomes the one vector `TERMINATE_ACTION`."""
    pos = actions[..., :2].clamp(-1.0, 1.0)
    flags = torch.where(actions[..., 2:] > 0, 1.0, -1.0).to(actions.dtype)
    out = torch.cat([pos, flags], dim=-1)
    terminate = out[..., ACTION_TERMINATE :] > 0
    return torch.where(terminate, torch.as_tensor(TERMINATE_ACTION, dtype=actions.dtype, device=actions.device), out)


class ConvTower(nn.Module):
    """uint8 NHWC image -> feature map (B, C, H/8, W/8). Adds x/y coordinate planes (CoordConv)."""

    def __init__(self, image_size: int, channels: int, stem: str = DEFAULT_TOWER_STEM):
        super().__init__()
        if stem not in TOWER_STEMS:
            raise ValueError(f"stem must be one of {TOWER_STEMS}, got {stem!r}")
        self.image_size = image_size
        c = channels
        if stem == "patch4":
            # A strided 4x4 stem keeps the tower cheap on CPU (robots, Bellman workers) while objects
            # (about 6 px wide at 64 px) still land in distinct cells of the 8x8 output map.
            layers = [nn.Conv2d(5, c, 4, stride=4), nn.ReLU(),
                      nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(c, c, 3, stride=1, padding=1), nn.ReLU()]
        else:  # conv2: H/2 -> H/4 -> H/8
            layers = [nn.Conv2d(5, c, 4, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(c, c, 3, stride=2, padding=1), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        lin = torch.linspace(-1.0, 1.0, image_size)
        ys, xs = torch.meshgrid(-lin, lin, indexing="ij")  # row 0 is y = +1
        self.register_buffer("coords", torch.stack([xs, ys])[None], persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) * (2.0 / 255.0) - 1.0
        x = torch.cat([x, self.coords.expand(x.shape[0], -1, -1, -1)], dim=1)
        return self.convs(x)


def init_weights(module: nn.Module) -> None:
    """He-normal weights and zero biases for every conv and linear layer (ReLU network)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


class ConditionedHead(nn.Module):
    """Scores N conditioning vectors per feature map: (B,C,h,w), (B,N,D) -> (B,N,outputs).

    With `spatial=True` the conditioning also carries a point on the table per candidate (the
    action's target x, y); its offset from every cell of the feature map is embedded and added
    too, so "is this action on that object" is a per-cell question the head answers directly.
    """

    def __init__(self, channels: int, cond_dim: int, outputs: int = 1, map_size: int = 8, spatial: bool = False,
                 point_readout: bool = False):
        super().__init__()
        if point_readout and not spatial:
            raise ValueError("point_readout needs spatial=True (a point per candidate)")
        self.spatial = spatial
        self.point_readout = point_readout
        self.embed = nn.Sequential(nn.Linear(cond_dim, 64), nn.ReLU(), nn.Linear(64, channels))
        if spatial:
            self.offset = nn.Linear(3, channels)
            centres = -1.0 + (torch.arange(map_size, dtype=torch.float32) + 0.5) * (2.0 / map_size)
            ys, xs = torch.meshgrid(-centres, centres, indexing="ij")  # row 0 is y = +1
            self.register_buffer("cells", torch.stack([xs, ys], -1).reshape(-1, 2), persistent=False)
            self.register_buffer("centres", centres, persistent=False)
            self.cell_width = 2.0 / map_size
            self.centre_limit = 1.0 - self.cell_width / 2
        if point_readout:
            self.readout = nn.Sequential(nn.Linear(2 * channels, 64), nn.ReLU(), nn.Linear(64, outputs))
        self.pointwise = nn.Sequential(
            nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels), nn.ReLU()
        )
        self.fc = nn.Sequential(nn.Linear(2 * channels, 64), nn.ReLU(), nn.Linear(64, outputs))

    def forward(
        self, features: torch.Tensor, cond: torch.Tensor, points: torch.Tensor | None = None,
        workspace: tuple[torch.Tensor, torch.Tensor] | None = None, with_readout: bool = True,
        embedded: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`workspace`: two flat float tensors of at least B*N*h*w*C elements that the big
        intermediate tensors are written into instead of fresh memory (inference only).
        `with_readout=False` leaves out the point readout's term (`readout_logits`), for callers
        that add it themselves over a larger batch; `embedded` is `self.embed(cond)` when the caller
        already has it."""
        b, c, h, w = features.shape
        n = cond.shape[1]
        rows = b * n * h * w
        if workspace is not None and torch.is_grad_enabled():
            raise ValueError("a head workspace is for inference only (torch.no_grad)")
        out = [None, None] if workspace is None else [t[: rows * c].view(rows, c) for t in workspace]
        f = features.flatten(2).transpose(1, 2)  # (B, hw, C)
        g = self.embed(cond) if embedded is None else embedded  # (B, N, C)
        if self.spatial:
            x = self._spatial_input(f, g, points, out[0])
        else:
            x = f[:, None, :, :] + g[:, :, None, :]  # (B, N, hw, C): broadcast add
        # Per-cell layers on one (B*N*hw, C) matrix, activations in place: on a CPU this work is
        # bound by passes over the (B, N, hw, C) tensor, not by the 32x32 products.
        x = x.relu_().reshape(rows, c)
        lin1, lin2 = self.pointwise[0], self.pointwise[2]
        x = torch.addmm(lin1.bias, x, lin1.weight.t(), out=out[1]).relu_()
        x = torch.addmm(lin2.bias, x, lin2.weight.t(), out=out[0]).relu_()
        x = x.reshape(b, n, h * w, c)
        pooled = torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=-1)  # (B, N, 2C)
        logits = self.fc(pooled)
        if self.point_readout and with_readout:
            logits = logits + self._readout(f, g, points)
        return logits

    def readout_logits(self, features: torch.Tensor, embedded: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The point readout's term of the logits alone, from the embedded conditioning
        (`self.embed(cond)`): (B,C,h,w), (B,N,C), (B,N,2) -> (B,N,outputs)."""
        return self._readout(features.flatten(2).transpose(1, 2), embedded, points)

    def _readout(self, f: torch.Tensor, g: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.readout(torch.cat([self.features_at(f, points), g], dim=-1))

    def features_at(self, f: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """The feature map read at each candidate's point, bilinear between cell centres (points
        beyond the outer centres read the edge cells): (B, hw, C), (B, N, 2) -> (B, N, C).

        Tent weights and one batched product instead of grid_sample, so the ONNX head needs no
        GridSample operator. The weights are separable: one tent per column (x) and one per row
        (y), multiplied into the (h, w) grid."""
        p = points.clamp(-self.centre_limit, self.centre_limit) / self.cell_width
        c = self.centres / self.cell_width
        wx = (1.0 - (p[..., 0:1] - c).abs()).clamp_min(0.0)  # (B, N, w)
        wy = (1.0 - (p[..., 1:2] + c).abs()).clamp_min(0.0)  # (B, N, h); row 0 is y = +1
        weights = (wy[..., :, None] * wx[..., None, :]).flatten(2)  # (B, N, hw), sums to 1 for every point
        return torch.bmm(weights, f)

    def _spatial_input(
        self, f: torch.Tensor, g: torch.Tensor, points: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """f + g + offset([cell - point, |cell - point|^2]) for every (candidate, cell): (B, N, hw, C).

        The offset layer is linear, so with d = cell - point and |d|^2 = |cell|^2 - 2 cell.point +
        |point|^2 it splits into a per-cell term (joins f), a per-candidate term (joins g) and
        px * U + py * V with U, V = -2 cx W2, -2 cy W2 per cell. One batched product with K = 2,
        added to f + per-cell, writes the whole tensor, and one in-place add brings in g +
        per-candidate. The direct form builds (B, N, hw, 3) offsets first and adds three full-size
        tensors.
        """
        b, hw, c = f.shape
        n = g.shape[1]
        weight, cells = self.offset.weight, self.cells  # (C, 3), (hw, 2)
        cell_sq = (cells * cells).sum(-1, keepdim=True)
        per_cell = F.linear(torch.cat([cells, cell_sq], dim=-1), weight, self.offset.bias)  # (hw, C)
        point_sq = (points * points).sum(-1, keepdim=True)
        per_cand = F.linear(torch.cat([-points, point_sq], dim=-1), weight)  # (B, N, C)
        cross = (-2.0 * cells.t()[:, :, None]) * weight[:, 2]  # (2, hw, C)
        x = torch.baddbmm(
            (f + per_cell).reshape(b, 1, hw * c), points, cross.reshape(1, 2, hw * c).expand(b, -1, -1),
            out=None if out is None else out.view(b, n, hw * c),
        )
        return x.reshape(b, n, hw, c).add_((g + per_cand)[:, :, None, :])


class QNetwork(nn.Module):
    """Multi-task Q(s, a, T) as a logit; `multi_head` is the per-task-heads ablation.

    `point_readout=False` is the network of every run and published version from before the
    option: `network_kwargs` reads a trainer's label with that default."""

    def __init__(self, num_task_slots: int, image_size: int = 64, channels: int = 32, multi_head: bool = False,
                 stem: str = DEFAULT_TOWER_STEM, point_readout: bool = True):
        super().__init__()
        self.num_task_slots = num_task_slots
        self.multi_head = multi_head
        self.tower = ConvTower(image_size, channels, stem)
        cond_dim = ACTION_DIM + STATE_DIM + (0 if multi_head else num_task_slots)
        self.q_head = ConditionedHead(
            channels, cond_dim, outputs=num_task_slots if multi_head else 1, map_size=image_size // 8, spatial=True,
            point_readout=point_readout,
        )
        init_weights(self)

    def head(
        self, features: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, tasks: torch.Tensor,
        workspace: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits (B, N) for N candidate actions per precomputed feature map (`workspace`: see
        `ConditionedHead.forward`)."""
        cond, points = self._conditioning(states, actions, tasks)
        return self._task_column(self.q_head(features, cond, points, workspace=workspace), tasks)

    def _conditioning(self, states: torch.Tensor, actions: torch.Tensor, tasks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's conditioning (B, N, D) and the candidates' points (B, N, 2)."""
        b, n, _ = actions.shape
        actions = canonical_action_t(actions)
        parts = [actions, states[:, None, :].expand(b, n, -1)]
        if not self.multi_head:
            parts.append(F.one_hot(tasks, self.num_task_slots).to(actions.dtype)[:, None, :].expand(b, n, -1))
        return torch.cat(parts, dim=-1), actions[..., :2]

    def _task_column(self, out: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """(B, N, outputs) -> (B, N): the one output, or the task's column of the multi-head ablation."""
        if self.multi_head:
            b, n, _ = out.shape
            out = out.gather(-1, tasks[:, None, None].expand(b, n, 1))
        return out[..., 0]

    def score(
        self, features: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, tasks: torch.Tensor, chunk: int = 4
    ) -> torch.Tensor:
        """`head` evaluated `chunk` states at a time: the same logits, for many candidates per state.

        The head's broadcast tensor is (B, N, h*w, C); for CEM (N = 64) over a large batch that is
        tens of megabytes per call, which costs more in page faults than in arithmetic. Chunks of
        a few states stay in cache, and without autograd every chunk reuses one workspace instead
        of allocating its own tensors. The conditioning and the point readout, which have no such
        tensor, run once on the whole batch: per chunk their many small calls cost more than their
        arithmetic. On an accelerator the whole batch goes in one call: there the cost is kernel
        launches, not memory.
        """
        if features.device.type != "cpu" or features.shape[0] <= chunk:
            return self.head(features, states, actions, tasks)
        workspace = None
        if not torch.is_grad_enabled():
            _, c, h, w = features.shape
            size = chunk * actions.shape[1] * h * w * c
            workspace = (features.new_empty(size), features.new_empty(size))
        cond, points = self._conditioning(states, actions, tasks)
        g = self.q_head.embed(cond)  # once for the chunks and the readout
        out = torch.cat(
            [
                self.q_head(features[i : i + chunk], cond[i : i + chunk], points[i : i + chunk], workspace=workspace,
                            with_readout=False, embedded=g[i : i + chunk])
                for i in range(0, features.shape[0], chunk)
            ]
        )
        if self.q_head.point_readout:
            out = out + self.q_head.readout_logits(features, g, points)
        return self._task_column(out, tasks)

    def forward(self, images: torch.Tensor, states: torch.Tensor, actions: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """images (B,H,W,3) uint8, states (B,S), actions (B,N,A), tasks (B,) int64 -> logits (B,N)."""
        return self.head(self.tower(images), states, actions, tasks)


LEGACY_NETWORK = {"point_readout": False}
"""Network settings a label or a saved run from before the option does not name: what it was."""


def network_kwargs(label: str) -> dict:
    """QNetwork constructor kwargs from a version's labels["network"] (JSON). Labels written
    before the point readout existed lack its key: those networks have none."""
    kwargs = json.loads(label)
    if not isinstance(kwargs, dict):
        raise ValueError(f"a network label is a JSON object, got {type(kwargs).__name__}")
    return LEGACY_NETWORK | kwargs


class SuccessDetectorNet(nn.Module):
    """P(success | final image, task) as a logit: the Q-network's tower, no action input."""

    def __init__(self, num_task_slots: int, image_size: int = 64, channels: int = 32, stem: str = DEFAULT_TOWER_STEM):
        super().__init__()
        self.num_task_slots = num_task_slots
        self.tower = ConvTower(image_size, channels, stem)
        self.sd_head = ConditionedHead(channels, num_task_slots, map_size=image_size // 8)
        init_weights(self)

    def forward(self, images: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
        """images (B,H,W,3) uint8, tasks (B,N) int64 -> logits (B,N): every image vs N tasks."""
        cond = F.one_hot(tasks, self.num_task_slots).to(torch.float32)
        return self.sd_head(self.tower(images), cond)[..., 0]
