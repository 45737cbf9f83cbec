"""Where does a Q-network put its grasp? Localisation probes for the pick tasks (docs/results.md 1i).

For a scene and a lift task, the probe scores a dense 81 x 81 grid of closing grasps (grip +1,
terminate -1) with the Q-network's head and takes the grid's argmax: the best grasp the network
knows, free of any search error. It reports, per task, how often that point is within the grasp
radius of an object the task wants ("on"), of another object ("wrong"), within 0.25 of a wanted
object ("near") or further ("far"), and the median distance to the nearest wanted object.

    python scripts/q_probe.py localise runs/flat-s0            # a Q-network saved by `mtopt experiment`
    python scripts/q_probe.py supervised --steps 1500           # a fresh network trained on ground truth
    python scripts/q_probe.py tower-shape --steps 1500          # can the conv tower alone tell ball from cube?

`supervised` trains the same QNetwork by plain classification instead of Q-learning: 128 grasps
per step on a fixed pool of 6,000 scenes, 60% aimed near an object (std 0.15) and the rest
uniform, each labelled by the simulator itself (its grasp and success rules, no actuation
noise), cross-entropy on the logit. What it reaches bounds what the
architecture can resolve; the gap to `localise` on an RL-trained network is the RL signal's.
`--hit-label` and `--miss-label` replace the 1/0 labels with soft ones, e.g. the Bellman targets
of a hit and of a retryable miss (0.9 and 0.81 with gamma 0.9), to measure what a narrower
hit/miss contrast alone costs. `--point-readout` trains the network with the Q-head's point
readout (off in this probe unless asked, as in the figures of 1i); `--tasks` trains and probes
some lift tasks only (docs/results.md 1o).

`held` asks what a saved network's TERMINATE is worth while the gripper holds an object the lift
task wants and while it holds one it does not (docs/results.md 1p): a grasp's target bootstraps
from that value, so a network that cannot tell them apart cannot learn which object to grasp.

    python scripts/q_probe.py held runs/pr-s0 --scenes 300

`tower-shape` asks whether the tower alone can see shape: a fresh tower and a 1x1 conv learn,
from ground truth, ball or cube at the cell under each object, scored on held-out scenes.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from mtopt.core.config import DEFAULT_TOWER_STEM, TOWER_STEMS
from mtopt.core.networks import QNetwork
from mtopt.experiment import load_saved_q_network
from mtopt.robot import TERMINATE_ACTION
from mtopt.sim.tabletop import SimConfig, TabletopSim
from mtopt.tasks import Task, TaskCatalogue

GRID = 81
GRASP_RADIUS = SimConfig().grasp_radius
EXACT = SimConfig(motion_noise=0.0)  # a grasp lands where it is aimed


class Scene:
    """A frozen scene: its camera image, and the simulator to judge grasps in it.

    Scenes made from one simulator share it: `outcome` puts this scene's objects back first.
    The fixtures are whichever scene was made last, which a lift task never looks at."""

    def __init__(self, sim: TabletopSim):
        sim.reset()
        self.image = sim.render()
        self.objects = [dataclasses.replace(o) for o in sim.objects]
        self._sim = sim

    def outcome(self, task: Task, point: np.ndarray) -> tuple[str, float]:
        """(on | wrong | near | far, distance to the nearest wanted object) for a grasp at `point`:
        the simulator's own grasp and success rules, on this scene, without actuation noise."""
        sim = self._sim
        sim.objects = [dataclasses.replace(o) for o in self.objects]
        sim.held, sim.closed = None, False
        goal = task.goal
        to_wanted = min(float(np.hypot(*(pos - point))) for pos in sim.object_positions(goal.get("colour"), goal.get("shape")))
        sim.act(np.array([point[0], point[1], 1.0, -1.0], np.float32))
        if sim.holding:
            return ("on" if sim.success(task) else "wrong"), to_wanted
        return ("near" if to_wanted <= 2 * GRASP_RADIUS else "far"), to_wanted


def grasp_grid() -> torch.Tensor:
    lin = np.linspace(-1.0, 1.0, GRID, dtype=np.float32)
    xs, ys = np.meshgrid(lin, lin)
    n = GRID * GRID
    return torch.from_numpy(np.stack([xs.ravel(), ys.ravel(), np.ones(n, np.float32), -np.ones(n, np.float32)], -1))


@torch.no_grad()
def localise(q: QNetwork, tasks: list[Task], scenes: list[Scene]) -> dict:
    q.eval()
    grid = grasp_grid()[None]
    state = torch.zeros(1, 2)  # gripper open, nothing held: the first step of a pick
    out = {}
    for task in tasks:
        counts = dict.fromkeys(("on", "wrong", "near", "far"), 0)
        dists = []
        for scene in scenes:
            features = q.tower(torch.from_numpy(scene.image[None]))
            logits = q.head(features, state, grid, torch.tensor([task.index]))[0]
            kind, d = scene.outcome(task, grid[0, int(logits.argmax()), :2].numpy())
            counts[kind] += 1
            dists.append(d)
        out[task.name] = {k: round(v / len(scenes), 3) for k, v in counts.items()} | {
            "median_distance": round(float(np.median(dists)), 3)}
    out["mean_on"] = round(float(np.mean([v["on"] for v in out.values()])), 3)
    return out


def supervised(
    catalogue: TaskCatalogue, tasks: list[Task], steps: int, seed: int, batch: int = 128,
    hit_label: float = 1.0, miss_label: float = 0.0, stem: str = DEFAULT_TOWER_STEM, image_size: int = 64,
    point_readout: bool = False, multi_head: bool = False,
) -> tuple[QNetwork, float]:
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    sim = TabletopSim(dataclasses.replace(EXACT, image_size=image_size), seed=seed)
    pool = [Scene(sim) for _ in range(6000)]
    q = QNetwork(catalogue.num_slots, image_size, multi_head=multi_head, stem=stem, point_readout=point_readout)
    opt = torch.optim.Adam(q.parameters(), 1e-3)
    states = torch.zeros(batch, 2)
    losses = []
    for _ in range(steps):
        images, actions, task_ids, labels = [], [], [], []
        for j in rng.integers(len(pool), size=batch):
            scene, task = pool[j], tasks[rng.integers(len(tasks))]
            if rng.random() < 0.6:
                point = scene.objects[rng.integers(len(scene.objects))].pos + rng.normal(0, 0.15, 2)
            else:
                point = rng.uniform(-1, 1, 2)
            point = np.clip(point, -1, 1)
            images.append(scene.image)
            actions.append([point[0], point[1], 1.0, -1.0])
            task_ids.append(task.index)
            labels.append(hit_label if scene.outcome(task, point)[0] == "on" else miss_label)
        logits = q(torch.from_numpy(np.stack(images)), states, torch.tensor(actions, dtype=torch.float32)[:, None],
                   torch.tensor(task_ids))[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, torch.tensor(labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return q, float(np.mean(losses[-200:]))


@torch.no_grad()
def held_values(q: QNetwork, tasks: list[Task], scenes: int, seed: int) -> dict:
    """Q(s, TERMINATE, task) of states that hold an object, split by whether the held object is
    one the task wants. Per task, the mean sigmoid Q of both groups, the share of (wanted,
    unwanted) pairs ranked the right way round (the ROC AUC; 0.5 = the network cannot tell them
    apart), and `v_*`: the best value over a dense grid of closing and opening moves and TERMINATE,
    which is what a grasp's Bellman target bootstraps from."""
    q.eval()
    sim = TabletopSim(dataclasses.replace(EXACT, image_size=q.tower.image_size), seed=888_000 + seed)
    images, states, wants = [], [], []
    for i in range(scenes):
        sim.reset()
        target = sim.objects[i % len(sim.objects)].pos
        obs = sim.act(np.array([target[0], target[1], 1.0, -1.0], np.float32))
        if sim.holding:
            images.append(obs.image)
            states.append(obs.state)
            wants.append([sim.success(task) for task in tasks])  # a lift task's goal: holding what it wants
    images, states = torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(states))
    features = q.tower(images)
    terminate = torch.from_numpy(TERMINATE_ACTION)[None, None, :]
    grid = grasp_grid()
    opening = grid.clone()
    opening[:, 2] = -1.0
    every = torch.cat([grid, opening, terminate[0]])[None].expand(len(images), -1, -1)  # the last one is TERMINATE
    out = {}
    for task, wanted in zip(tasks, np.array(wants).T):
        tasks_t = torch.full((len(images),), task.index)
        values = torch.sigmoid(q.score(features, states, every, tasks_t))
        p, v = values[:, -1].numpy(), values.max(dim=1).values.numpy()
        if wanted.all() or not wanted.any():
            out[task.name] = {"held": len(wanted), "wanted": int(wanted.sum()), "q_wanted": round(float(p[wanted].mean()), 3) if wanted.any() else None}
            continue
        pos, neg = p[wanted], p[~wanted]
        auc = float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
        out[task.name] = {"held": len(wanted), "wanted": int(wanted.sum()), "q_wanted": round(float(pos.mean()), 3),
                          "q_unwanted": round(float(neg.mean()), 3), "auc": round(auc, 3),
                          "v_wanted": round(float(v[wanted].mean()), 3), "v_unwanted": round(float(v[~wanted].mean()), 3)}
    return out


def tower_shape(steps: int, seed: int, stem: str, scenes: int, batch: int = 64) -> dict:
    """Can the conv tower alone see shape? A fresh tower and a 1x1 conv are trained to say, at the
    cell under each object's centre, whether it is a ball or a cube (ground truth, cross-entropy),
    then scored on held-out scenes. No task, no action, no head."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)

    def labelled(sim: TabletopSim, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, cells, balls = [], [], []
        for i in range(n):
            sim.reset()
            images.append(sim.render())
            for obj in sim.objects:  # row 0 of the 8 x 8 map is y = +1
                col, row = (min(7, int((c + 1.0) * 4)) for c in (obj.pos[0], -obj.pos[1]))
                cells.append((i, row, col))
                balls.append(float(obj.shape == "ball"))
        return torch.from_numpy(np.stack(images)), torch.tensor(cells), torch.tensor(balls)

    train_images, train_cells, train_balls = labelled(TabletopSim(EXACT, seed=seed), 6000)
    test_images, test_cells, test_balls = labelled(TabletopSim(EXACT, seed=777_000 + seed), scenes)
    channels = 32
    tower = QNetwork(1, channels=channels, stem=stem).tower  # the Q-network's tower, He-initialised
    readout = torch.nn.Conv2d(channels, 1, 1)
    opt = torch.optim.Adam([*tower.parameters(), *readout.parameters()], 1e-3)

    def logits(images: torch.Tensor, cells: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return readout(tower(images))[:, 0][rows, cells[:, 1], cells[:, 2]]

    for _ in range(steps):
        picked = torch.from_numpy(np.sort(rng.choice(len(train_images), batch, replace=False)))
        where = torch.isin(train_cells[:, 0], picked)
        cells = train_cells[where]
        rows = torch.searchsorted(picked, cells[:, 0].contiguous())
        images = train_images[picked]
        loss = F.binary_cross_entropy_with_logits(logits(images, cells, rows), train_balls[where])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        accuracy = ((logits(test_images, test_cells, test_cells[:, 0]) > 0).float() == test_balls).float().mean()
    return {"probe": "tower-shape", "tower_stem": stem, "steps": steps, "held_out_objects": len(test_balls),
            "accuracy": round(float(accuracy), 3), "final_loss": round(loss.item(), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    loc = sub.add_parser("localise", help="probe a Q-network saved by `mtopt experiment` (RUN/q.pt)")
    loc.add_argument("run", type=Path)
    held = sub.add_parser("held", help="a saved Q-network's value of TERMINATE while holding a wanted or an unwanted object")
    held.add_argument("run", type=Path)
    sup = sub.add_parser("supervised", help="train a fresh Q-network on ground-truth grasps, then probe it")
    sup.add_argument("--steps", type=int, default=1500)
    sup.add_argument("--hit-label", type=float, default=1.0, help="target for a grasp that succeeds")
    sup.add_argument("--miss-label", type=float, default=0.0, help="target for one that does not")
    sup.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM)
    sup.add_argument("--image-size", type=int, default=SimConfig().image_size, help="camera image side, px")
    sup.add_argument("--point-readout", action=argparse.BooleanOptionalAction, default=False,
                     help="the Q-head's point readout (QNetwork(point_readout=True))")
    sup.add_argument("--multi-head", action="store_true", help="per-task output heads instead of the one-hot input")
    sup.add_argument("--tasks", default="", help="comma-separated lift tasks to train and probe (default: all lift tasks)")
    shape = sub.add_parser("tower-shape", help="train a fresh conv tower to tell ball from cube per cell, then score it")
    shape.add_argument("--steps", type=int, default=1500)
    shape.add_argument("--tower-stem", choices=list(TOWER_STEMS), default=DEFAULT_TOWER_STEM)
    for p in (loc, held, sup, shape):
        p.add_argument("--scenes", type=int, default=300, help="held-out scenes per task")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    catalogue = TaskCatalogue.load()
    lifts = [t for t in catalogue if t.goal.get("kind") == "hold"]
    t0 = time.time()
    extra = {}
    if args.command == "tower-shape":
        result = tower_shape(args.steps, args.seed, args.tower_stem, args.scenes)
        print(json.dumps(result | {"seconds": round(time.time() - t0)}))
        return
    if args.command == "held":
        q, _ = load_saved_q_network(args.run)
        result = held_values(q, lifts, args.scenes, args.seed)
        for name, row in result.items():
            print(f"{name:12s} {row}")
        print(json.dumps({"probe": "held", "run": str(args.run), "tasks": result, "seconds": round(time.time() - t0)}))
        return
    if args.command == "localise":
        q, _ = load_saved_q_network(args.run)
    else:
        if args.tasks:
            wanted = args.tasks.split(",")
            unknown = sorted(set(wanted) - {t.name for t in lifts})
            if unknown:
                parser.error(f"--tasks: not lift tasks of the catalogue: {', '.join(unknown)}")
            lifts = [t for t in lifts if t.name in wanted]
        q, extra["final_loss"] = supervised(
            catalogue, lifts, args.steps, args.seed, hit_label=args.hit_label, miss_label=args.miss_label,
            stem=args.tower_stem, image_size=args.image_size, point_readout=args.point_readout,
            multi_head=args.multi_head,
        )
        extra |= {"trained_tasks": [t.name for t in lifts], "image_size": args.image_size, "steps": args.steps,
                  "hit_label": args.hit_label, "miss_label": args.miss_label, "tower_stem": args.tower_stem,
                  "point_readout": args.point_readout, "multi_head": args.multi_head}
    held_out = TabletopSim(dataclasses.replace(EXACT, image_size=q.tower.image_size), seed=777_000 + args.seed)
    scenes = [Scene(held_out) for _ in range(args.scenes)]
    result = localise(q, lifts, scenes)
    for name, row in result.items():
        if isinstance(row, dict):
            print(f"{name:12s} " + " ".join(f"{k} {v}" for k, v in row.items()))
    print(json.dumps({"probe": args.command, **extra, "mean_on": result["mean_on"], "seconds": round(time.time() - t0),
                      "tasks": {k: v for k, v in result.items() if isinstance(v, dict)}}))


if __name__ == "__main__":
    main()
