"""RegistryParameterSource and weight swaps, against the real model_registry in-process.

Faults a healthy registry never produces (a cut download, no WatchVersions) are injected on the
robot's side of the channel (agent_harness.FaultInjector).
"""

from __future__ import annotations

import grpc
import pytest

from agent_harness import CATALOGUE, FaultInjector, agent_config, wait_until
from mtopt.episode_codec import parse_episode
from mtopt.v1 import common_pb2, model_registry_pb2_grpc as mr_grpc

from mtopt_agent.metrics import AgentMetrics
from mtopt_agent.runtime import AgentRuntime
from mtopt_agent.weights import RegistryParameterSource


@pytest.fixture
def faults() -> FaultInjector:
    return FaultInjector()


@pytest.fixture
def stub(registry, faults):
    channel = grpc.insecure_channel(registry.address)
    yield mr_grpc.ModelRegistryStub(grpc.intercept_channel(channel, faults))
    channel.close()


def _source(stub, mode="watch", **kw) -> RegistryParameterSource:
    kw.setdefault("metrics", AgentMetrics())
    return RegistryParameterSource(stub, robot_id="sim-0", mode=mode, poll_interval_s=0.05, catalogue=CATALOGUE, **kw)


@pytest.mark.parametrize("mode", ["watch", "poll"])
def test_follows_new_versions_and_honours_pins(registry, stub, faults, onnx_models, mode):
    source = _source(stub, mode)
    source.start()
    try:
        assert source.latest() is None  # nothing published yet: the scripted policy runs
        v1 = registry.publish(onnx_models[1])
        assert source.wait_for(v1, 30)
        v2 = registry.publish(onnx_models[2])
        assert source.wait_for(v2, 30)
        registry.pin("sim-0", v1)  # the pin wins over the alias, even when it goes back
        assert source.wait_for(v1, 30)
        assert source.latest().how == ("watch" if mode == "watch" else "pin")
        registry.pin("other-robot", v2)  # another robot's pin changes nothing here
        registry.unpin("sim-0")
        assert source.wait_for(v2, 30)
    finally:
        source.close()
    if mode == "watch":
        assert faults.calls["Resolve"] == 0 and faults.calls["WatchVersions"] == 1  # pushed, not polled


def test_the_watch_reconnects_after_a_registry_restart(registry, stub, faults, onnx_models):
    source = _source(stub, mode="watch")
    source.start()
    try:
        v1 = registry.publish(onnx_models[1])
        assert source.wait_for(v1, 30)
        registry.stop()
        registry.start()
        v2 = registry.publish(onnx_models[2])
        assert source.wait_for(v2, 30)
        assert faults.calls["WatchVersions"] >= 2
    finally:
        source.close()


def test_follows_the_configured_alias(registry, stub, onnx_models):
    source = _source(stub, mode="watch", alias="latest")
    source.start()
    try:
        v1 = registry.publish(onnx_models[1], aliases=("stable", "latest"))
        assert source.wait_for(v1, 30)
        v2 = registry.publish(onnx_models[2], aliases=("latest",))  # not promoted to stable
        assert source.wait_for(v2, 30)
    finally:
        source.close()


def test_a_version_that_does_not_run_is_skipped_and_the_robot_keeps_its_policy(registry, stub, onnx_models):
    metrics = AgentMetrics()
    source = _source(stub, metrics=metrics)
    source.start()
    try:
        v1 = registry.publish(onnx_models[1])
        assert source.wait_for(v1, 30)
        bad = registry.publish({"q_tower.onnx": onnx_models[2]["q_tower.onnx"], "q_head.onnx": b"not an onnx model"})
        wait_until(lambda: bad in source.bad_versions, what="the broken version to be refused")
        assert "does not run" in source.bad_versions[bad]
        assert source.latest().version == v1  # the robot keeps what it had
        assert metrics.value("mtopt_robot_agent_weight_errors_total", {"stage": "load"}) == 1
        missing = registry.publish({"model.pt": b"torch weights only"})
        wait_until(lambda: missing in source.bad_versions, what="the version without ONNX to be refused")
        assert "no q_tower.onnx, q_head.onnx" in source.bad_versions[missing]
        v4 = registry.publish(onnx_models[2])
        assert source.wait_for(v4, 30)
    finally:
        source.close()


def test_a_model_with_other_task_slots_is_refused(registry, stub, onnx_models):
    source = _source(stub, mode="poll")
    source.start()
    try:
        swapped = [common_pb2.Task(name="lift-any", skill="lift", index=5)]
        bad = registry.publish(onnx_models[1], tasks=swapped)
        wait_until(lambda: bad in source.bad_versions, what="the mismatched version to be refused")
        assert "lift-any (here 0, model 5)" in source.bad_versions[bad]
        assert source.latest() is None
        good = registry.publish(onnx_models[1])
        assert source.wait_for(good, 30)
    finally:
        source.close()


def test_a_cut_download_resumes_at_its_offset(registry, stub, faults, onnx_models):
    faults.cut_downloads = 2
    source = _source(stub, mode="poll")
    source.start()
    try:
        v1 = registry.publish(onnx_models[1])
        assert source.wait_for(v1, 30)
    finally:
        source.close()
    # q_tower: cut, cut (after resuming at 4096), complete; q_head: complete.
    assert faults.cut_downloads == 0 and faults.calls["GetArtifact"] == 4


def test_watch_falls_back_to_polling_when_the_registry_has_no_watch(registry, stub, faults, onnx_models):
    faults.unimplemented.add("WatchVersions")
    source = _source(stub, mode="watch")
    source.start()
    try:
        v1 = registry.publish(onnx_models[1])
        assert source.wait_for(v1, 30)
        assert source.mode == "poll" and faults.calls["Resolve"] >= 1
    finally:
        source.close()


def test_agent_swaps_only_between_episodes_and_reports_the_version(registry, onnx_models, tmp_path):
    config = agent_config(tmp_path, registry_address=registry.address, scripted_fraction=0.0, epsilon=0.0, drain_s=0,
                          cem_samples=16, cem_elites=4)
    robot_version = {"robot": "sim-0"}
    with AgentRuntime(config) as runtime:
        agent, metrics = runtime.agent, runtime.metrics
        first = agent.run_episode()
        assert (first.policy, first.policy_version) == ("scripted", 0)  # bootstrap until a version exists
        assert metrics.value("mtopt_robot_agent_model_version", robot_version) == 0
        v1 = registry.publish(onnx_models[1])
        assert runtime.parameter_source.wait_for(v1, 30)
        assert metrics.value("mtopt_robot_agent_model_version", robot_version) == 0  # not yet: between episodes
        report = agent.run_episode()
        assert (report.policy, report.policy_version) == ("cem", v1)
        assert metrics.value("mtopt_robot_agent_model_version", robot_version) == v1
        registry.pin("sim-0", v1)
        v2 = registry.publish(onnx_models[2])
        assert agent.run_episode().policy_version == v1  # pinned: v2 is not taken
        registry.unpin("sim-0")
        assert runtime.parameter_source.wait_for(v2, 30)
        assert agent.run_episode().policy_version == v2
        assert metrics.value("mtopt_robot_agent_model_version", robot_version) == v2
        assert metrics.value("mtopt_robot_agent_weight_updates_total") == 2
        spooled = runtime.spool.pending()
    msgs = [parse_episode(e.path.read_bytes()) for e in spooled]
    assert [m.policy_version for m in msgs] == [0, v1, v1, v2]
    assert [m.policy_name for m in msgs] == ["scripted", "cem", "cem", "cem"]
    assert [m.metadata["loaded_version"] for m in msgs] == ["0", str(v1), str(v1), str(v2)]


def test_versions_below_min_model_step_are_not_loaded(registry, stub, onnx_models):
    source = _source(stub, mode="watch", min_model_step=250)
    source.start()
    try:
        v1 = registry.publish(onnx_models[1])  # step 100
        v2 = registry.publish(onnx_models[2])  # step 200
        assert not source.wait_for(v2, 1.0) and source.latest() is None  # the scripted policy keeps running
        v3 = registry.publish(onnx_models[1])  # step 300
        assert source.wait_for(v3, 30) and v1 < v2 < v3
        assert not source.bad_versions  # skipped, not marked bad
    finally:
        source.close()
