"""RobotAgent: task choice and pick-then-place sequencing, policy choice, spool back-pressure,
episode contents, any Robot; and AgentConfig from the environment."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agent_harness import agent_config, wait_until
from mtopt.episode_codec import decode_episode, parse_episode
from mtopt.robot import STATE_DIM, Observation, Robot
from mtopt.serving.config import ConfigError
from mtopt.sim import TabletopSim
from mtopt.tasks import TaskCatalogue

from mtopt_agent.agent import CollectSettings, RobotAgent
from mtopt_agent.config import load_config
from mtopt_agent.runtime import AgentRuntime
from mtopt_agent.spool import EpisodeSpool
from mtopt_agent.weights import LoadedPolicy, StaticParameterSource

CATALOGUE = TaskCatalogue.load()
FOLLOWUP_SKILLS = {"place", "present"}


def _agent(tmp_path, robot=None, **settings) -> RobotAgent:
    spool = EpisodeSpool(tmp_path / "spool", max_bytes=1 << 30, fsync=False)
    source = settings.pop("parameter_source", None)
    names = settings.pop("task_names", ())
    return RobotAgent(robot or TabletopSim(seed=3), CATALOGUE, spool, robot_id="sim-0", seed=3,
                      settings=CollectSettings(**settings), parameter_source=source, task_names=names)


def _episodes(agent: RobotAgent):
    return [decode_episode(e.path.read_bytes()) for e in agent.spool.pending()]


def test_pick_then_place_continues_without_reset(tmp_path):
    agent = _agent(tmp_path, sequence_probability=1.0)
    reports = [agent.run_episode() for _ in range(60)]
    episodes = _episodes(agent)
    sequenced = [i for i, r in enumerate(reports) if r.sequenced]
    assert sequenced, "scripted lifts should end holding an object now and then"
    for i, r in enumerate(reports[1:], start=1):
        assert r.sequenced == reports[i - 1].holding  # probability 1: every pick is followed up
    for i in sequenced:
        assert CATALOGUE[reports[i].task].skill in FOLLOWUP_SKILLS
        # No reset: the sequenced episode starts where the previous one ended.
        np.testing.assert_array_equal(episodes[i].images[0], episodes[i - 1].images[-1])
        assert episodes[i - 1].states[-1][1] == 1.0
        assert episodes[i].metadata["sequenced"] == "1"


def test_no_sequencing_when_its_probability_is_zero_and_tasks_are_restricted(tmp_path):
    agent = _agent(tmp_path, sequence_probability=0.0, task_names=("lift-red", "place-any"))
    reports = [agent.run_episode() for _ in range(30)]
    assert not any(r.sequenced for r in reports)
    assert {r.task for r in reports} == {"lift-red", "place-any"}


def test_episodes_carry_everything_the_pipeline_needs(tmp_path):
    agent = _agent(tmp_path, max_steps=3, image_encoding="jpeg", jpeg_quality=80)
    report = agent.run_episode()
    entry = agent.spool.pending()[0]
    msg = parse_episode(entry.path.read_bytes())
    assert msg.episode_id == report.episode_id and msg.robot_id == "sim-0" and msg.task == report.task
    assert 1 <= len(msg.steps) <= 3 and msg.policy_name == "scripted" and msg.policy_version == 0
    assert msg.final_image.encoding == 2  # JPEG
    assert set(msg.ground_truth_success) == set(CATALOGUE.names)
    assert msg.ground_truth_success[report.task] == report.success
    assert msg.start_time.seconds > 0 and msg.end_time.ToNanoseconds() >= msg.start_time.ToNanoseconds()


class _BrokenPolicy:
    def __call__(self, obs, task_index):
        return np.full(4, np.nan, np.float32)


def test_a_policy_that_outputs_nan_never_moves_the_robot(tmp_path):
    source = StaticParameterSource(LoadedPolicy(7, _BrokenPolicy(), "directory"))
    agent = _agent(tmp_path, parameter_source=source, scripted_fraction=0.0, epsilon=0.0)
    assert agent.run_episode() is None  # abandoned, nothing spooled, version 7 dropped
    assert agent.spool.depth == 0 and agent.running_version == 0
    assert agent.metrics.value("mtopt_robot_agent_episodes_aborted_total", {"reason": "invalid_action"}) == 1
    report = agent.run_episode()  # back to the scripted bootstrap
    assert report.policy == "scripted" and agent.spool.depth == 1


class _Pendulum(Robot):
    """A robot that is not the simulator: a bootstrap policy of random actions, no ground truth."""

    def __init__(self):
        self.t = 0

    def reset(self):
        self.t = 0
        return self.observe()

    def observe(self):
        return Observation(np.full((8, 8, 3), self.t, np.uint8), np.zeros(STATE_DIM, np.float32))

    def act(self, action):
        self.t += 1
        return self.observe()


def test_episode_period_paces_a_simulated_robot(tmp_path):
    import time

    paced = _agent(tmp_path, episode_period_s=0.15)
    t0 = time.monotonic()
    assert paced.run(threading.Event(), max_episodes=4) == 4
    assert time.monotonic() - t0 >= 4 * 0.15  # never faster than the period


def test_any_robot_can_be_driven(tmp_path):
    agent = _agent(tmp_path, robot=_Pendulum(), max_steps=5)
    reports = [agent.run_episode() for _ in range(5)]
    assert all(r.success is None for r in reports)
    assert all(not parse_episode(e.path.read_bytes()).ground_truth_success for e in agent.spool.pending())


def test_a_full_spool_pauses_collection_until_uploads_make_room(store, tmp_path):
    config = agent_config(tmp_path, store_address=f"127.0.0.1:{store.store.port}", spool_max_bytes=1)
    runtime = AgentRuntime(config)  # not started: nothing uploads yet
    done = []
    collector = threading.Thread(target=lambda: done.append(runtime.run(max_episodes=5)))
    collector.start()
    wait_until(lambda: runtime.metrics.value("mtopt_robot_agent_spool_full") == 1, what="collection to pause")
    assert runtime.spool.depth == 1 and runtime.agent.episodes_done == 1  # paused, nothing dropped
    runtime.start()  # the uploader makes room
    collector.join(30)
    assert done == [5]
    assert runtime.spool.wait_until_empty(30)
    assert runtime.metrics.value("mtopt_robot_agent_collection_paused_seconds_total") > 0
    runtime.close()
    assert len(store.list_all()) == 5


def test_stop_during_a_full_spool_ends_collection(tmp_path):
    runtime = AgentRuntime(agent_config(tmp_path, spool_max_bytes=1, drain_s=0))
    collector = threading.Thread(target=runtime.run)
    collector.start()
    wait_until(lambda: runtime.metrics.value("mtopt_robot_agent_spool_full") == 1, what="collection to pause")
    runtime.request_stop()
    collector.join(30)
    assert not collector.is_alive()
    assert runtime.close() is False  # not uploaded: the episode stays on disk for the next start
    assert len(list((tmp_path / "spool").glob("*.episode"))) == 1


# -- configuration -----------------------------------------------------------------------------
def test_config_from_environment(tmp_path):
    env = {
        "MTOPT_AGENT_ROBOT_ID": "robot-7", "MTOPT_AGENT_STORE_ADDRESS": "dns:///episode-store:50051",
        "MTOPT_AGENT_SPOOL_DIR": str(tmp_path), "MTOPT_AGENT_SPOOL_MAX_BYTES": "1_000_000",
        "MTOPT_AGENT_EPSILON": "0.1", "MTOPT_AGENT_SCRIPTED_FRACTION": "0.3", "MTOPT_AGENT_SEED": "5",
        "MTOPT_AGENT_MAX_STEPS": "6", "MTOPT_AGENT_METRICS_PORT": "0", "MTOPT_AGENT_IMAGE_ENCODING": "jpeg",
        "MTOPT_AGENT_TASK_NAMES": "lift-red,place-any", "MTOPT_AGENT_WEIGHTS_MODE": "poll",
    }
    c = load_config(env)
    assert (c.robot_id, c.store_address, c.spool_dir, c.spool_max_bytes) == ("robot-7", "dns:///episode-store:50051", tmp_path, 1_000_000)
    assert (c.epsilon, c.scripted_fraction, c.seed, c.max_steps, c.metrics_port) == (0.1, 0.3, 5, 6, 0)
    assert (c.image_encoding, c.task_names, c.weights_mode) == ("jpeg", ("lift-red", "place-any"), "poll")
    assert load_config({}).robot_id  # defaults to the host name


@pytest.mark.parametrize("var, value, message", [
    ("MTOPT_AGENT_EPSILON", "1.5", "MTOPT_AGENT_EPSILON must lie in [0, 1]"),
    ("MTOPT_AGENT_ROBOT_ID", "robot 7", "MTOPT_AGENT_ROBOT_ID must be 1-128 characters"),
    ("MTOPT_AGENT_IMAGE_ENCODING", "gif", "MTOPT_AGENT_IMAGE_ENCODING must be one of png, jpeg"),
    ("MTOPT_AGENT_WEIGHTS_MODE", "push", "MTOPT_AGENT_WEIGHTS_MODE must be one of watch, poll"),
    ("MTOPT_AGENT_MAX_STEPS", "many", "MTOPT_AGENT_MAX_STEPS='many' is invalid"),
    ("MTOPT_TASKS", "/nonexistent.yaml", "MTOPT_TASKS must name an existing task catalogue"),
])
def test_config_errors_name_the_variable(var, value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config({var: value})


def test_unknown_task_names_are_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match="MTOPT_AGENT_TASK_NAMES names unknown tasks"):
        AgentRuntime(agent_config(tmp_path, task_names=("juggle",)))


def test_metrics_are_served_over_http(tmp_path):
    import urllib.request

    runtime = AgentRuntime(agent_config(tmp_path, metrics_port=0, metrics_host="127.0.0.1", drain_s=0))
    runtime.start()
    try:
        runtime.run(max_episodes=2)
        with urllib.request.urlopen(f"http://127.0.0.1:{runtime.metrics_server.port}/metrics", timeout=10) as r:
            text = r.read().decode()
    finally:
        runtime.close()
    assert 'mtopt_robot_agent_model_version{robot="sim-0"} 0.0' in text
    assert "mtopt_robot_agent_spool_episodes 2.0" in text  # the store is unreachable: both wait
    assert 'mtopt_robot_agent_upload_errors_total{code="UNAVAILABLE"}' in text
    assert "mtopt_robot_agent_episodes_total{" in text
