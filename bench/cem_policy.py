"""Benchmark: CEM action-selection latency per robot step on one CPU core.

Network: `mtopt.core.networks.QNetwork(32)` (random init, eval mode) with the default
`MTOptConfig` CEM (2 iterations x 64 samples, 6 elites). Observations are real simulator
observations from scripted episodes of the built-in task catalogue (images, state features and
the episode's task index), cycled through in the same order for every method.

Three ways of choosing one action for one observation are timed, interleaved in every repeat:

    onnx   mtopt.onnx_policy.OnnxCEMPolicy on mtopt.core.export.export_onnx_bytes(q) output
           (ONNX Runtime + numpy, one thread: what the robot runs)       -> reported `value`
    torch  mtopt.core.policy.CEMPolicy (tower once per state, head per sample) -> `torch_ms`
    naive  mtopt.core.cem.cem_argmax with a score function that runs the whole network
           (tower + head) on every candidate: q(image.expand(N, ...), ...) -> `baseline`

value = ONNX latency (ms/step), baseline = naive latency (ms/step), ratio = baseline / value
(speed-up). Target: value <= 5 ms. Latency of a repeat = mean over its observations; the
reported numbers are medians over repeats (p90 of the individual calls is reported too).

    python bench/cem_policy.py [--quick]

The last line printed is one JSON object.
"""

from __future__ import annotations

import os

import _onecore  # noqa: E402,F401  (pins to one core before numpy/torch load)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

_onecore.pin_torch()

import onnxruntime as ort  # noqa: E402

from mtopt.core.cem import cem_argmax  # noqa: E402
from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS, MTOptConfig  # noqa: E402
from mtopt.core.export import HEAD_FILE, TOWER_FILE, export_onnx_bytes  # noqa: E402
from mtopt.core.networks import QNetwork  # noqa: E402
from mtopt.core.policy import CEMPolicy  # noqa: E402
from mtopt.onnx_policy import OnnxCEMPolicy  # noqa: E402
from mtopt.robot import ACTION_DIM, CEM_INITIAL_MEAN, Observation, canonical_action, is_terminate  # noqa: E402
from mtopt.sim import ScriptedPolicy, TabletopSim  # noqa: E402
from mtopt.tasks import TaskCatalogue  # noqa: E402

TARGET_MS = 5.0
NUM_TASK_SLOTS = 32


_cpu = _onecore.cpu_label


def collect_observations(count: int, seed: int, max_steps: int = 6) -> list[tuple[Observation, int]]:
    """(observation, task index) pairs met while running scripted episodes in the simulator."""
    catalogue = TaskCatalogue.load()
    rng = np.random.default_rng(seed)
    sim = TabletopSim(seed=seed)
    script = ScriptedPolicy(sim, rng)
    out: list[tuple[Observation, int]] = []
    while len(out) < count:
        task = catalogue.tasks[int(rng.integers(len(catalogue)))]
        script.reset(task)
        obs = sim.reset()
        for _ in range(max_steps):
            out.append((obs, task.index))
            action = script(obs)
            obs = sim.act(action)
            if is_terminate(action):
                break
    return out[:count]


class NaiveCEMPolicy:
    """CEM that runs the whole Q-network (tower + head) for every candidate action."""

    def __init__(self, q: QNetwork, config: MTOptConfig, seed: int = 0):
        self.q, self.config = q.eval(), config
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def __call__(self, obs: Observation, task_index: int) -> np.ndarray:
        img = torch.from_numpy(np.ascontiguousarray(obs.image))[None]
        st = torch.from_numpy(np.asarray(obs.state, np.float32))[None]
        task = torch.tensor([task_index], dtype=torch.int64)

        def score(a: torch.Tensor) -> torch.Tensor:  # a: (1, N, A) -> (1, N)
            n = a.shape[1]
            return self.q(img.expand(n, -1, -1, -1), st.expand(n, -1), a[0][:, None, :], task.expand(n))[:, 0][None]

        best, _ = cem_argmax(score, 1, ACTION_DIM, self.config.cem_iterations, self.config.cem_samples,
                             self.config.cem_elites, self.generator, init_mean=CEM_INITIAL_MEAN)
        return canonical_action(best[0].numpy())


def time_policy(policy, observations: list[tuple[Observation, int]]) -> list[float]:
    """Per-call latencies in seconds over all observations."""
    out = []
    for obs, task in observations:
        t0 = time.perf_counter()
        action = policy(obs, task)
        out.append(time.perf_counter() - t0)
    assert action.shape == (ACTION_DIM,)
    return out


def check_onnx_matches_torch(q: QNetwork, artifacts: dict[str, bytes], observations, seed: int) -> float:
    """Max |logit difference| between the ONNX graphs and torch on a few observations and actions."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    tower = ort.InferenceSession(artifacts[TOWER_FILE], opts, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(artifacts[HEAD_FILE], opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst = 0.0
    for obs, task in observations[:8]:
        actions = rng.uniform(-1, 1, (1, 16, ACTION_DIM)).astype(np.float32)
        (features,) = tower.run(None, {"images": obs.image[None]})
        (logits,) = head.run(None, {"features": features, "states": obs.state[None], "actions": actions,
                                    "tasks": np.array([task], np.int64)})
        with torch.no_grad():
            ref = q(torch.from_numpy(obs.image[None]), torch.from_numpy(obs.state[None]), torch.from_numpy(actions),
                    torch.tensor([task])).numpy()
        worst = max(worst, float(np.max(np.abs(logits - ref))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short run (< 1 minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM, help="the Q-network's tower stem")
    parser.add_argument("--point-readout", action=argparse.BooleanOptionalAction, default=MTOptConfig().point_readout,
                        help="the Q-head's point readout (default: the config's)")
    args = parser.parse_args()

    # naive is ~10-20x slower: it gets fewer observations per repeat
    n_obs, n_obs_naive, repeats = (40, 8, 5) if args.quick else (200, 30, 7)

    print(f"cem_policy: mode={'quick' if args.quick else 'full'} cpu={_cpu()} python={platform.python_version()} "
          f"torch={torch.__version__} threads={torch.get_num_threads()}/{torch.get_num_interop_threads()} "
          f"onnxruntime={ort.__version__}", flush=True)
    config = MTOptConfig()
    torch.manual_seed(args.seed)
    q = QNetwork(NUM_TASK_SLOTS, image_size=config.image_size, channels=config.channels, stem=args.tower_stem,
                   point_readout=args.point_readout).eval()
    observations = collect_observations(n_obs, args.seed)
    held = sum(float(o.state[1]) for o, _ in observations)
    print(f"  {len(observations)} simulator observations ({held:.0f} holding an object), "
          f"CEM {config.cem_iterations} x {config.cem_samples} samples, {config.cem_elites} elites", flush=True)

    t0 = time.perf_counter()
    artifacts = export_onnx_bytes(q)
    print(f"  exported ONNX in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{k} {len(v) / 1024:.0f} KiB" for k, v in artifacts.items()), flush=True)
    max_diff = check_onnx_matches_torch(q, artifacts, observations, args.seed)
    print(f"  ONNX vs torch logits: max |diff| = {max_diff:.2e}", flush=True)

    policies = {
        "onnx": OnnxCEMPolicy(artifacts[TOWER_FILE], artifacts[HEAD_FILE], iterations=config.cem_iterations,
                              samples=config.cem_samples, elites=config.cem_elites, seed=args.seed),
        "torch": CEMPolicy(q, config, seed=args.seed),
        "naive": NaiveCEMPolicy(q, config, seed=args.seed),
    }
    subsets = {"onnx": observations, "torch": observations, "naive": observations[:n_obs_naive]}

    for name, policy in policies.items():  # warm-up
        time_policy(policy, subsets[name][: max(4, len(subsets[name]) // 4)])

    means: dict[str, list[float]] = {k: [] for k in policies}
    calls: dict[str, list[float]] = {k: [] for k in policies}
    for r in range(repeats):
        parts = []
        for name, policy in policies.items():
            lat = time_policy(policy, subsets[name])
            means[name].append(statistics.mean(lat) * 1e3)
            calls[name].extend(x * 1e3 for x in lat)
            parts.append(f"{name} {means[name][-1]:.3f} ms")
        print(f"  repeat {r + 1}/{repeats}: " + ", ".join(parts), flush=True)

    med = {k: statistics.median(v) for k, v in means.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in calls.items()}
    value, torch_ms, baseline = med["onnx"], med["torch"], med["naive"]
    result = {
        "bench": "cem_policy",
        "tower_stem": args.tower_stem,
        "point_readout": args.point_readout,
        "value": round(value, 4),
        "unit": "ms/step",
        "baseline": round(baseline, 4),
        "ratio": round(baseline / value, 2),
        "target_ms": TARGET_MS,
        "meets_target": bool(value <= TARGET_MS),
        "onnx_ms": round(value, 4),
        "torch_ms": round(torch_ms, 4),
        "naive_ms": round(baseline, 4),
        "torch_speedup": round(baseline / torch_ms, 2),
        "onnx_p90_ms": round(p90["onnx"], 4),
        "torch_p90_ms": round(p90["torch"], 4),
        "naive_p90_ms": round(p90["naive"], 4),
        "onnx_vs_torch_max_logit_diff": float(f"{max_diff:.3g}"),
        "cem_iterations": config.cem_iterations,
        "cem_samples": config.cem_samples,
        "cem_elites": config.cem_elites,
        "observations": len(observations),
        "naive_observations": n_obs_naive,
        "repeats": repeats,
        "mode": "quick" if args.quick else "full",
        "cpu": _cpu(),
    }
    print(f"cem_policy: onnx {value:.3f} ms/step (target <= {TARGET_MS} ms), torch {torch_ms:.3f} ms, "
          f"naive {baseline:.3f} ms -> speed-up {baseline / value:.1f}x (torch {baseline / torch_ms:.1f}x)", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
