"""A fast tabletop world rendered to small RGB images with OpenCV.

The table spans [-1, 1] x [-1, 1]. The left half is the bin that objects start in; on the right
are a plate, a bowl and a presentation square. Four objects, each a different colour, are cubes
or balls. The gripper moves to a commanded point, closes to grasp the nearest object within reach
(a grasped object is lifted and drawn larger, with a shadow) and opens to release it: onto the
plate or into the bowl when released over them, otherwise onto the table.

Ground-truth success (`success`) reads each task's `goal` from the catalogue. The learning
pipeline never calls it; it exists for evaluation and for labelling success-detector examples.
Everything is deterministic under the seed.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from mtopt.robot import ACTION_DIM, STATE_DIM, Observation, Robot, canonical_action, validate_action
from mtopt.tasks import Task

COLOURS = {  # RGB
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 40),
}
SHAPES = ("cube", "ball")
BIN = (-0.95, -0.9, -0.1, 0.9)  # x0, y0, x1, y1
TABLE_RGB = (150, 140, 125)
BIN_RGB = (105, 95, 85)
PLATE_RGB = (245, 245, 245)
BOWL_RGB = (120, 70, 30)
ZONE_RGB = (0, 220, 220)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Parameters of the built-in tabletop world."""

    image_size: int = 64
    """Camera images are image_size x image_size RGB."""
    num_objects: int = 4
    """Objects per scene (at most one per colour)."""
    grasp_radius: float = 0.13
    """A closing gripper grasps the nearest object centre within this distance."""
    motion_noise: float = 0.02
    """Std-dev of actuation noise on every commanded position."""
    fixture_jitter: float = 0.08
    """Fixtures move by up to this much at each reset."""


@dataclasses.dataclass
class _Object:
    colour: str
    shape: str
    pos: np.ndarray
    resting_on: str = "table"  # table | plate | bowl | gripper


class TabletopSim(Robot):
    """The embedded default robot; see the module docstring and `mtopt.robot`."""

    def __init__(self, config: SimConfig = SimConfig(), seed: int | None = 0):
        self.config = config
        self.rng = np.random.default_rng(seed)
        self._scale = config.image_size / 2.0
        self.objects: list[_Object] = []
        self.fixtures: dict[str, np.ndarray] = {}
        self.gripper = np.zeros(2, dtype=np.float64)
        self.closed = False
        self.held: int | None = None
        self._background: np.ndarray | None = None
        self.reset()

    # -- Robot -------------------------------------------------------------------------------
    def reset(self) -> Observation:
        cfg, rng = self.config, self.rng
        j = cfg.fixture_jitter
        self.fixtures = {
            "plate": np.array([0.55, 0.55]) + rng.uniform(-j, j, 2),
            "bowl": np.array([0.55, -0.55]) + rng.uniform(-j, j, 2),
            "present": np.array([0.55, 0.0]) + rng.uniform(-j / 2, j / 2, 2),
        }
        colours = rng.permutation(list(COLOURS))[: cfg.num_objects]
        shapes = [SHAPES[i % 2] for i in range(cfg.num_objects)]  # both shapes always present
        shapes = list(rng.permutation(shapes))
        positions: list[np.ndarray] = []
        while len(positions) < cfg.num_objects:
            p = np.array([rng.uniform(BIN[0] + 0.12, BIN[2] - 0.12), rng.uniform(BIN[1] + 0.12, BIN[3] - 0.12)])
            if all(np.linalg.norm(p - q) > 0.3 for q in positions):
                positions.append(p)
        self.objects = [_Object(str(c), str(s), p) for c, s, p in zip(colours, shapes, positions)]
        self.gripper = np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.9, 0.9)])
        self.closed = False
        self.held = None
        self._background = self._draw_background()
        return self.observe()

    def observe(self) -> Observation:
        state = np.array([float(self.closed), float(self.held is not None)], dtype=np.float32)
        return Observation(image=self.render(), state=state)

    def act(self, action: np.ndarray) -> Observation:
        a = canonical_action(validate_action(action))
        if a[3] > 0:  # TERMINATE: nothing moves
            return self.observe()
        target = np.clip(a[:2] + self.rng.normal(0.0, self.config.motion_noise, 2), -1.0, 1.0)
        self.gripper = target
        if self.held is not None:
            self.objects[self.held].pos = target.copy()
        if a[2] > 0:
            self.closed = True
            if self.held is None:
                self._try_grasp()
        else:
            self.closed = False
            if self.held is not None:
                self._release()
        return self.observe()

    # -- physics -----------------------------------------------------------------------------
    def _try_grasp(self) -> None:
        best, best_d = None, self.config.grasp_radius
        for i, obj in enumerate(self.objects):
            d = float(np.hypot(*(obj.pos - self.gripper)))
            if d <= best_d:
                best, best_d = i, d
        if best is not None:
            self.held = best
            self.objects[best].resting_on = "gripper"
            self.objects[best].pos = self.gripper.copy()

    def _release(self) -> None:
        obj = self.objects[self.held]
        self.held = None
        obj.resting_on = "table"
        for name, radius in (("plate", 0.22), ("bowl", 0.2)):
            centre = self.fixtures[name]
            if np.hypot(*(obj.pos - centre)) <= radius:
                obj.resting_on = name
                break

    # -- ground truth ------------------------------------------------------------------------
    def success(self, task: Task) -> bool:
        """Ground-truth success of `task` in the current state (evaluation only)."""
        goal = task.goal
        if not goal:
            raise ValueError(f"task {task.name!r} has no `goal` in the catalogue; the simulator cannot judge it")

        def matches(obj: _Object) -> bool:
            return goal.get("colour", obj.colour) == obj.colour and goal.get("shape", obj.shape) == obj.shape

        kind = goal["kind"]
        if kind == "hold":
            return self.held is not None and matches(self.objects[self.held])
        if kind == "rest_on":
            fixtures = goal.get("fixtures", ["plate", "bowl"])
            return any(o.resting_on in fixtures and matches(o) for o in self.objects)
        if kind == "hold_over":
            if self.held is None or not matches(self.objects[self.held]):
                return False
            zone = self.fixtures[goal.get("zone", "present")]
            return bool(np.all(np.abs(self.gripper - zone) <= 0.18))
        raise ValueError(f"task {task.name!r}: unknown goal kind {kind!r}")

    # -- rendering ---------------------------------------------------------------------------
    def _px(self, p: np.ndarray) -> tuple[int, int]:
        # Image row 0 is the top of the table (y = +1). Fixed-point with 4 fractional bits.
        s = self._scale * 16
        return int(round((p[0] + 1.0) * s)), int(round((1.0 - p[1]) * s))

    def _r(self, r: float) -> int:
        return int(round(r * self._scale * 16))

    def _draw_background(self) -> np.ndarray:
        n = self.config.image_size
        img = np.empty((n, n, 3), dtype=np.uint8)
        img[:] = TABLE_RGB
        x0, y0, x1, y1 = BIN
        cv2.rectangle(img, self._px((x0, y1)), self._px((x1, y0)), BIN_RGB, -1, cv2.LINE_AA, 4)
        cv2.circle(img, self._px(self.fixtures["plate"]), self._r(0.22), PLATE_RGB, -1, cv2.LINE_AA, 4)
        cv2.circle(img, self._px(self.fixtures["bowl"]), self._r(0.2), BOWL_RGB, -1, cv2.LINE_AA, 4)
        cv2.circle(img, self._px(self.fixtures["bowl"]), self._r(0.13), (170, 120, 70), -1, cv2.LINE_AA, 4)
        z = self.fixtures["present"]
        cv2.rectangle(img, self._px(z + (-0.18, 0.18)), self._px(z + (0.18, -0.18)), ZONE_RGB, 1 * 16 // 16, cv2.LINE_AA, 4)
        return img

    def _draw_object(self, img: np.ndarray, obj: _Object, scale: float) -> None:
        colour = COLOURS[obj.colour]
        if obj.shape == "cube":
            h = 0.09 * scale
            cv2.rectangle(img, self._px(obj.pos + (-h, h)), self._px(obj.pos + (h, -h)), colour, -1, cv2.LINE_AA, 4)
        else:
            cv2.circle(img, self._px(obj.pos), self._r(0.1 * scale), colour, -1, cv2.LINE_AA, 4)

    def render(self) -> np.ndarray:
        img = self._background.copy()
        for i, obj in enumerate(self.objects):
            if i != self.held:
                self._draw_object(img, obj, 1.0)
        g = self._px(self.gripper)
        if self.held is not None:
            # A lifted object is closer to the overhead camera: drawn larger, outlined by the
            # fingers, with its shadow on the table.
            obj = self.objects[self.held]
            cv2.circle(img, self._px(self.gripper + (0.07, -0.07)), self._r(0.15), (50, 45, 40), -1, cv2.LINE_AA, 4)
            cv2.circle(img, g, self._r(0.19), (10, 10, 10), -1, cv2.LINE_AA, 4)
            self._draw_object(img, obj, 1.6)
        elif self.closed:
            cv2.circle(img, g, self._r(0.07), (10, 10, 10), -1, cv2.LINE_AA, 4)
        else:
            cv2.circle(img, g, self._r(0.15), (10, 10, 10), 1, cv2.LINE_AA, 4)
        return img

    # -- introspection (simulation only) -----------------------------------------------------
    def object_positions(self, colour: str | None = None, shape: str | None = None) -> list[np.ndarray]:
        """Privileged object positions on the table, for scripted bootstrap policies."""
        return [
            o.pos.copy()
            for i, o in enumerate(self.objects)
            if i != self.held and (colour is None or o.colour == colour) and (shape is None or o.shape == shape)
        ]

    @property
    def holding(self) -> bool:
        return self.held is not None


assert ACTION_DIM == 4 and STATE_DIM == 2
