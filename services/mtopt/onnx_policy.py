"""The CEM policy on the exported ONNX Q-network, with ONNX Runtime and numpy only (robot side)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtopt.robot import ACTION_DIM, CEM_INITIAL_MEAN, Observation, canonical_action

TOWER_FILE, HEAD_FILE = "q_tower.onnx", "q_head.onnx"


def cem_argmax_np(score_fn, action_dim: int, iterations: int, samples: int, elites: int,
                  rng: np.random.Generator, init_std: float = 0.6,
                  init_mean=None) -> tuple[np.ndarray, float]:
    """CEM for one state: `score_fn` maps (N, A) candidates to (N,) scores (`mtopt.core.cem`'s twin)."""
    mean = np.zeros(action_dim, np.float32) if init_mean is None else np.asarray(init_mean, np.float32).copy()
    std = np.full(action_dim, init_std, np.float32)
    best_a, best_s = mean, -np.inf
    for _ in range(iterations):
        cand = np.clip(mean + std * rng.standard_normal((samples, action_dim)).astype(np.float32), -1, 1)
        scores = score_fn(cand)
        order = np.argsort(-scores)[:elites]
        if scores[order[0]] > best_s:
            best_a, best_s = cand[order[0]], float(scores[order[0]])
        elite = cand[order]
        mean, std = elite.mean(0), np.maximum(elite.std(0), 1e-3)
    return best_a, best_s


class OnnxCEMPolicy:
    """Greedy CEM on `q_tower.onnx` + `q_head.onnx` (see `mtopt.core.export`).

    Usage::

        policy = OnnxCEMPolicy.from_bytes(artifacts)      # or OnnxCEMPolicy(directory)
        action = policy(obs, task_index)
    """

    def __init__(self, tower_model: bytes | str | Path, head_model: bytes | str | Path, iterations: int = 2,
                 samples: int = 64, elites: int = 6, epsilon: float = 0.0, seed: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        load = lambda m: ort.InferenceSession(m if isinstance(m, bytes) else str(m), opts, providers=["CPUExecutionProvider"])
        self.tower, self.head = load(tower_model), load(head_model)
        self.iterations, self.samples, self.elites, self.epsilon = iterations, samples, elites, epsilon
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_bytes(cls, artifacts: dict[str, bytes], **kw) -> "OnnxCEMPolicy":
        """From `mtopt.core.export.export_onnx_bytes` output (or registry artifacts)."""
        return cls(artifacts[TOWER_FILE], artifacts[HEAD_FILE], **kw)

    @classmethod
    def from_directory(cls, directory: str | Path, **kw) -> "OnnxCEMPolicy":
        d = Path(directory)
        return cls(d / TOWER_FILE, d / HEAD_FILE, **kw)

    def reset(self, task=None) -> None:
        pass

    def q_values(self, image: np.ndarray, state: np.ndarray, actions: np.ndarray, task_index: int) -> np.ndarray:
        """Logits (N,) of N actions in one state; runs the tower once."""
        (features,) = self.tower.run(None, {"images": image[None]})
        return self._head(features, state, actions, task_index)

    def _head(self, features, state, actions, task_index) -> np.ndarray:
        (logits,) = self.head.run(None, {
            "features": features,
            "states": np.asarray(state, np.float32)[None],
            "actions": np.asarray(actions, np.float32)[None],
            "tasks": np.array([task_index], np.int64),
        })
        return logits[0]

    def __call__(self, obs: Observation, task_index: int) -> np.ndarray:
        if self.epsilon and self.rng.random() < self.epsilon:
            a = self.rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            a[3] = 1.0 if self.rng.random() < 0.15 else -1.0
            return canonical_action(a)
        (features,) = self.tower.run(None, {"images": obs.image[None]})
        best, _ = cem_argmax_np(lambda a: self._head(features, obs.state, a, task_index), ACTION_DIM,
                                self.iterations, self.samples, self.elites, self.rng, init_mean=CEM_INITIAL_MEAN)
        return canonical_action(best)
