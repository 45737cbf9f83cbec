"""How the greedy policy of a saved network fails the two-stage tasks (place-*, present-*).

Runs RUN/q.pt (an `mtopt experiment --out` directory) with the policy's CEM search on fresh
scenes and sorts every episode by ground truth into one outcome:

    success                                   the task's goal holds at the end
    never held anything                       no grasp succeeded in the whole episode
    never held anything, then terminated      ... and the policy chose TERMINATE (it expected success)
    ran out of steps after holding            it held an object but never terminated; split by
                                              what it ended with: "..., holding a matching object",
                                              "..., holding a wrong object" (colour or shape the
                                              task does not want), "..., after releasing"
    terminated holding (not at goal)          TERMINATE while holding, goal not met (wrong object or place)
    terminated after releasing (not at goal)  TERMINATE after a release that missed the goal

    python scripts/failure_modes.py runs/flat-s0 --episodes 100

The last line printed is one JSON object (outcome counts per task and in total).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch

from mtopt.core.policy import CEMPolicy
from mtopt.experiment import load_saved_q_network
from mtopt.robot import is_terminate
from mtopt.sim.tabletop import TabletopSim
from mtopt.tasks import TaskCatalogue


def outcome(sim: TabletopSim, task, ever_held: bool, terminated: bool) -> str:
    if sim.success(task):
        return "success"
    if not ever_held:
        return "never held anything, then terminated" if terminated else "never held anything"
    if not terminated:
        if not sim.holding:
            return "ran out of steps after holding, after releasing"
        held, goal = sim.objects[sim.held], task.goal
        wanted = goal.get("colour", held.colour) == held.colour and goal.get("shape", held.shape) == held.shape
        return f"ran out of steps after holding, holding a {'matching' if wanted else 'wrong'} object"
    return "terminated holding (not at goal)" if sim.holding else "terminated after releasing (not at goal)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="an `mtopt experiment --out` directory with q.pt")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per task")
    parser.add_argument("--max-steps", type=int, default=4, help="steps per episode, as in the experiment")
    parser.add_argument("--seed", type=int, default=5000, help="scene seeds are SEED .. SEED + episodes - 1")
    args = parser.parse_args()
    torch.set_num_threads(1)
    catalogue = TaskCatalogue.load()
    q, algo = load_saved_q_network(args.run)
    policy = CEMPolicy(q, algo, seed=0)
    per_task: dict[str, collections.Counter] = {}
    for task in catalogue.tasks:
        if task.skill == "lift":
            continue
        counts = per_task[task.name] = collections.Counter()
        for ep in range(args.episodes):
            sim = TabletopSim(seed=args.seed + ep)
            obs, ever_held, terminated = sim.reset(), False, False
            for _ in range(args.max_steps):
                action, _ = policy.batch(obs.image[None], obs.state[None], np.array([task.index]))
                obs = sim.act(action[0])
                ever_held |= sim.holding
                if is_terminate(action[0]):
                    terminated = True
                    break
            counts[outcome(sim, task, ever_held, terminated)] += 1
        print(f"{task.name:20s} {dict(counts)}")
    total = sum(per_task.values(), collections.Counter())
    print(json.dumps({"run": str(args.run), "episodes_per_task": args.episodes, "total": dict(sorted(total.items())),
                      "tasks": {k: dict(v) for k, v in per_task.items()}}))


if __name__ == "__main__":
    main()
