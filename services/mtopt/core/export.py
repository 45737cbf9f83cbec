"""ONNX export of the Q-network for robots, which run it with ONNX Runtime (no torch).

The network is exported as two graphs so the robot keeps the "tower once per state" speed-up:

    q_tower.onnx : images (B,H,W,3) uint8                       -> features (B,C,h,w)
    q_head.onnx  : features, states (B,S), actions (B,N,A), tasks (B,) int64 -> logits (B,N)
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import nn

from mtopt.core.networks import QNetwork
from mtopt.robot import ACTION_DIM, STATE_DIM

TOWER_FILE, HEAD_FILE = "q_tower.onnx", "q_head.onnx"
OPSET = 17


class _Head(nn.Module):
    def __init__(self, q: QNetwork):
        super().__init__()
        self.q = q

    def forward(self, features, states, actions, tasks):
        return self.q.head(features, states, actions, tasks)


def export_onnx_bytes(q: QNetwork) -> dict[str, bytes]:
    """{file name: serialized ONNX model} for the tower and the head."""
    q = q.eval()
    size = q.tower.image_size
    images = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with torch.no_grad():
        features = q.tower(images)
    states = torch.zeros(2, STATE_DIM)
    actions = torch.zeros(2, 3, ACTION_DIM)
    tasks = torch.zeros(2, dtype=torch.int64)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        buf = io.BytesIO()
        torch.onnx.export(
            q.tower, (images,), buf, input_names=["images"], output_names=["features"],
            dynamic_axes={"images": {0: "B"}, "features": {0: "B"}}, opset_version=OPSET, dynamo=False,
        )
        out[TOWER_FILE] = buf.getvalue()
        buf = io.BytesIO()
        torch.onnx.export(
            _Head(q), (features, states, actions, tasks), buf,
            input_names=["features", "states", "actions", "tasks"], output_names=["logits"],
            dynamic_axes={"features": {0: "B"}, "states": {0: "B"}, "actions": {0: "B", 1: "N"},
                          "tasks": {0: "B"}, "logits": {0: "B", 1: "N"}},
            opset_version=OPSET, dynamo=False,
        )
        out[HEAD_FILE] = buf.getvalue()
    return out


def export_onnx(q: QNetwork, directory: str | Path) -> list[Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in export_onnx_bytes(q).items():
        path = directory / name
        path.write_bytes(data)
        paths.append(path)
    return paths
