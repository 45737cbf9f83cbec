"""`RobotAgent`: drives one `Robot`, records episodes and hands them to the spool (Acme's Actor).

Per episode:

1. Swap weights if the `ParameterSource` offers a new version (only here, between episodes).
2. Choose the task: uniformly from the robot's tasks; but after an episode that ended holding an
   object (state feature height), with ``sequence_probability`` continue with a task of the
   sequence skills (place, present) without a reset: pick, then place (MT-Opt's task sequencing).
3. Choose the policy: the scripted bootstrap policy while no learned version has loaded, then
   for ``scripted_fraction`` of the episodes; otherwise CEM on the ONNX Q-network with
   ``epsilon`` random actions per step.
4. Run up to ``max_steps`` steps (TERMINATE ends the episode earlier), recording with
   `EpisodeWriter`; every action is validated before the robot executes it.
5. Encode the episode (images PNG or JPEG) and write it to the spool; the uploader sends it.
   Every episode reports the version that acted (``policy_version``: 0 for scripted ones, as the
   proto says) and, in metadata, the version loaded on the robot.

While the spool is full, collection pauses (nothing is dropped) until uploads make room.

Usage::

    agent = RobotAgent(TabletopSim(seed=0), catalogue, spool, robot_id="sim-0", parameter_source=source)
    agent.run(stop_event, max_episodes=100)        # or agent.run_episode() one at a time
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from typing import Callable, Protocol, Sequence

import numpy as np

from mtopt.episode import Episode, EpisodeWriter
from mtopt.episode_codec import encode_episode
from mtopt.robot import ACTION_DIM, ACTION_TERMINATE, Observation, Robot, canonical_action, validate_action
from mtopt.sim.scripted import RandomPolicy, ScriptedPolicy
from mtopt.sim.tabletop import TabletopSim
from mtopt.tasks import Task, TaskCatalogue

from mtopt_agent.metrics import AgentMetrics
from mtopt_agent.spool import EpisodeSpool
from mtopt_agent.weights import LoadedPolicy, ParameterSource

log = logging.getLogger(__name__)

HOLDING_STATE_INDEX = 1
"""State feature that says an object is lifted (gripper height, 1 = lifted)."""


class BootstrapPolicy(Protocol):
    """A scripted policy: reset per task, then one action per observation."""

    def reset(self, task: Task) -> None: ...

    def __call__(self, obs: Observation, task_index: int | None = None) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class CollectSettings:
    """How the agent collects (the agent's slice of `AgentConfig`)."""

    epsilon: float = 0.2
    """Probability of a random action per step in learned-policy episodes."""
    scripted_fraction: float = 0.1
    """Share of episodes run by the scripted policy once a learned policy exists."""
    sequence_probability: float = 0.5
    """Chance to continue a holding robot with a sequence-skill task without a reset."""
    sequence_skills: tuple[str, ...] = ("place", "present")
    """Skills that may follow a pick."""
    max_steps: int = 4
    """Longest episode in steps."""
    image_encoding: str = "png"
    """png or jpeg."""
    jpeg_quality: int = 95
    episode_period_s: float = 0.0
    """Shortest time per episode: paces a simulated robot like a real one (0: flat out)."""


@dataclasses.dataclass(frozen=True)
class EpisodeReport:
    """What happened in one episode (for callers, logs and tests)."""

    episode_id: str
    task: str
    policy: str
    """"scripted" or "cem"."""
    policy_version: int
    num_steps: int
    sequenced: bool
    """True if the episode continued the previous one without a reset."""
    holding: bool
    """The robot ended the episode holding an object."""
    size_bytes: int
    success: bool | None
    """Ground truth for the episode's own task (simulated robots), else None."""


def default_bootstrap_policy(robot: Robot, rng: np.random.Generator) -> BootstrapPolicy:
    """The simulator's scripted pick/place/present policy; random actions for other robots
    (pass a real scripted policy to RobotAgent for a real robot)."""
    if isinstance(robot, TabletopSim):
        return ScriptedPolicy(robot, rng)
    log.warning("no scripted bootstrap policy for %s: using random actions until a learned policy loads",
                type(robot).__name__)
    return RandomPolicy(rng)


class RobotAgent:
    """Collects episodes on one robot; see the module docstring."""

    def __init__(
        self,
        robot: Robot,
        catalogue: TaskCatalogue,
        spool: EpisodeSpool,
        *,
        robot_id: str,
        settings: CollectSettings = CollectSettings(),
        parameter_source: ParameterSource | None = None,
        bootstrap_policy: BootstrapPolicy | None = None,
        task_names: Sequence[str] = (),
        metrics: AgentMetrics | None = None,
        seed: int | None = None,
        metadata: dict[str, str] | None = None,
    ):
        """
        Args:
          catalogue: the task catalogue (one-hot slots shared with the trainer).
          task_names: tasks to collect; empty = the whole catalogue.
          parameter_source: where learned policies come from; None = scripted only.
          bootstrap_policy: the scripted policy; default `default_bootstrap_policy`.
          metadata: extra low-cardinality episode annotations (e.g. software version).
        """
        self.robot, self.catalogue, self.spool = robot, catalogue, spool
        self.robot_id, self.settings = robot_id, settings
        self.parameter_source = parameter_source
        self.rng = np.random.default_rng(seed)
        self.bootstrap = bootstrap_policy if bootstrap_policy is not None else default_bootstrap_policy(robot, self.rng)
        self.tasks = [catalogue[n] for n in task_names] if task_names else list(catalogue.tasks)
        self.followups = [t for t in self.tasks if t.skill in settings.sequence_skills]
        self.metrics = metrics if metrics is not None else AgentMetrics(robot_id=robot_id)
        self.metadata = dict(metadata or {})
        self.loaded: LoadedPolicy | None = None
        self.episodes_done = 0
        self._holding = False
        self._success = getattr(robot, "success", None) if callable(getattr(robot, "success", None)) else None
        self._needs_reset = True
        self._broken_versions: set[int] = set()

    @property
    def running_version(self) -> int:
        """The learned policy's registry version; 0 while only the scripted policy runs."""
        return self.loaded.version if self.loaded is not None else 0

    # -- between episodes --------------------------------------------------------------------
    def maybe_swap_policy(self) -> bool:
        """Takes the parameter source's newest policy, if it changed. Only between episodes."""
        if self.parameter_source is None:
            return False
        offered = self.parameter_source.latest()
        if offered is None or offered is self.loaded or offered.version in self._broken_versions:
            return False
        previous = self.running_version
        self.loaded = offered
        self.metrics.model_version.set(offered.version)
        self.metrics.weight_updates.inc()
        log.info("robot %s now runs version %d (was %d; %s)", self.robot_id, offered.version, previous, offered.how)
        return True

    def choose_task(self) -> tuple[Task, bool]:
        """(task, sequenced): a follow-up without reset after a pick, else uniform."""
        if self._holding and self.followups and self.rng.random() < self.settings.sequence_probability:
            return self.followups[int(self.rng.integers(len(self.followups)))], True
        return self.tasks[int(self.rng.integers(len(self.tasks)))], False

    # -- one episode -------------------------------------------------------------------------
    def run_episode(self) -> EpisodeReport | None:
        """Runs, records and spools one episode. None if it was aborted (invalid action)."""
        self.maybe_swap_policy()
        s = self.settings
        task, sequenced = self.choose_task()
        obs = self.robot.observe() if sequenced and not self._needs_reset else self.robot.reset()
        self._needs_reset = False
        learned = self.loaded
        scripted = learned is None or self.rng.random() < s.scripted_fraction
        kind = "scripted" if scripted else "cem"
        if scripted:
            self.bootstrap.reset(task)
        writer = EpisodeWriter(self.robot_id, task.name, policy_version=0 if scripted else learned.version,
                               episode_id=uuid.uuid4().hex)
        writer.observe(obs)
        latency = self.metrics.policy_seconds.labels(kind)
        for t in range(s.max_steps):
            started = time.perf_counter()
            action = self.bootstrap(obs, task.index) if scripted else self._explore(learned.policy, obs, task.index)
            latency.observe(time.perf_counter() - started)
            try:
                action = validate_action(canonical_action(action))
            except ValueError as e:
                # A broken model (NaN) must not move the robot. The scene is unknown: reset next.
                log.error("%s policy produced an invalid action for %s, episode abandoned: %s", kind, task.name, e)
                self.metrics.episodes_aborted.labels("invalid_action").inc()
                self._needs_reset, self._holding = True, False
                if not scripted:  # never run this version again; scripted until a new one loads
                    self._broken_versions.add(learned.version)
                    self.loaded = None
                    self.metrics.model_version.set(0)
                return None
            writer.act(action)
            obs = self.robot.act(action)
            writer.observe(obs)
            self.metrics.steps.inc()
            if action[ACTION_TERMINATE] > 0:
                break
        episode = writer.finish()
        self._holding = bool(obs.state[HOLDING_STATE_INDEX] > 0.5)
        return self._spool(episode, task, kind, sequenced)

    def _explore(self, policy, obs: Observation, task_index: int) -> np.ndarray:
        if self.settings.epsilon and self.rng.random() < self.settings.epsilon:
            a = self.rng.uniform(-1, 1, ACTION_DIM).astype(np.float32)
            a[ACTION_TERMINATE] = 1.0 if self.rng.random() < 0.15 else -1.0
            return a
        return policy(obs, task_index)

    def _spool(self, episode: Episode, task: Task, kind: str, sequenced: bool) -> EpisodeReport:
        s = self.settings
        episode.metadata.update(self.metadata)
        episode.metadata.update({
            "sequenced": str(int(sequenced)),
            "loaded_version": str(self.running_version),
            "epsilon": str(s.epsilon if kind == "cem" else 0.0),
        })
        ground_truth = {}
        if self._success is not None:
            ground_truth = {t.name: bool(self._success(t)) for t in self.catalogue if t.goal}
        data = encode_episode(episode, image_format=s.image_encoding, jpeg_quality=s.jpeg_quality,
                              policy_name="scripted" if kind == "scripted" else "cem",
                              ground_truth_success=ground_truth)
        self.spool.put(episode.episode_id, data)
        self.episodes_done += 1
        self.metrics.episodes.labels(task.name, kind).inc()
        success = ground_truth.get(task.name) if ground_truth else None
        if success:
            self.metrics.ground_truth_successes.labels(task.name, kind).inc()
        return EpisodeReport(episode.episode_id, task.name, kind, episode.policy_version, episode.num_steps,
                             sequenced, self._holding, len(data), success)

    # -- the loop ----------------------------------------------------------------------------
    def wait_for_spool_space(self, stop: threading.Event) -> bool:
        """Pauses while the spool is full; False if ``stop`` was set meanwhile."""
        if not self.spool.full:
            return True
        log.warning("spool %s is full (%d episodes, %d bytes pending + %d bytes rejected >= %d): collection paused "
                    "until uploads make room (rejected episodes stay until someone clears rejected/ and restarts the agent)",
                    self.spool.directory, self.spool.depth, self.spool.nbytes, self.spool.rejected_bytes, self.spool.max_bytes)
        self.metrics.spool_full.set(1)
        started = time.monotonic()
        try:
            ok = self.spool.wait_until_not_full(stop=stop)
        finally:
            self.metrics.spool_full.set(0)
            self.metrics.paused_seconds.inc(time.monotonic() - started)
        if ok:
            log.info("spool has room again: collection resumes")
        return ok

    def run(self, stop: threading.Event, max_episodes: int = 0,
            on_episode: Callable[[EpisodeReport], None] | None = None) -> int:
        """Collects until ``stop`` is set (the episode in progress is finished and spooled first)
        or ``max_episodes`` episodes are spooled (0: no limit). Returns the episodes spooled."""
        done = 0
        while not stop.is_set() and (max_episodes <= 0 or done < max_episodes):
            if not self.wait_for_spool_space(stop):
                break
            started = time.monotonic()
            report = self.run_episode()
            if self.settings.episode_period_s > 0:
                stop.wait(max(0.0, self.settings.episode_period_s - (time.monotonic() - started)))
            if report is None:
                continue
            done += 1
            if on_episode is not None:
                on_episode(report)
        return done
