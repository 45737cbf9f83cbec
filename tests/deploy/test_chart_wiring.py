"""The chart's wiring: every Deployment and Job the chart renders (sim robots and the simulated
labeller on, bundled MinIO) runs on this machine as the process its container describes (command,
args, env, ports; Service names resolved to loopback ports, the bundled MinIO to a real MinIO,
container paths to tmp; see chart_wiring.py). Every service must become SERVING on the
readiness probe's grpc.health.v1 name (and on the liveness name), the sim robot's /metrics must
answer its liveness probe, the `helm test` pod's own check must pass, the labeller Job must exit
0 (a success-detector version READY), and episodes must flow from the simulated robot through
the store, log_replay and Bellman to the trainer, which trains. With continuous labelling
(simLabeller.refreshEverySeconds) the labeller is a Deployment that must train and promote a second
SD version instead. Then everything stops on SIGTERM and exits 0. This proves that the chart and the code agree."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
import urllib.request

import pytest
from chart_wiring import ChartWiring, MinioEndpoint
from deploy_helpers import REPO, find, render, to_model

from mtopt.up.monitor import scrape, total
from mtopt.up.supervisor import Supervisor, health_status

sys.path.insert(0, str(REPO / "tests" / "services"))
from store_harness import MinioNotInstalled, run_minio  # noqa: E402 - the services tests' real MinIO

# Small settings so that the whole chain learns within a couple of minutes on a busy 2-core box;
# one replica of everything (one loopback port per Service name).
VALUES = {
    "simRobots.enabled": "true", "simRobots.replicas": "1",
    "episodeStore.replicas": "1", "modelRegistry.replicas": "1", "successDetector.replicas": "1", "bellman.replicas": "1",
    "simRobots.config.episode_period_s": "0.2", "simRobots.config.min_model_step": "10",
    "simLabeller.config.min_episodes": "40", "simLabeller.config.examples_per_task": "16",
    "simLabeller.config.train_steps": "50",
    "successDetector.config.refresh_s": "1", "logReplay.config.sd_poll_s": "2",
    "trainer.config.publish_every_steps": "10", "trainer.config.min_buffer_rows": "256", "trainer.config.threads": "1",
    "bellman.config.threads": "1", "bellman.config.target_lag_steps": "20",
}
START_S, SERVING_S, LEARN_S = 120, 240, 300


@pytest.fixture
def minio(tmp_path):
    try:
        with run_minio(tmp_path / "minio-data") as info:
            yield MinioEndpoint(info.endpoint, info.access_key, info.secret_key)
    except MinioNotInstalled as e:
        pytest.fail(str(e))


def _wait(what: str, condition, timeout_s: float, sup: Supervisor) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        sup.check()  # a crashed process fails the test with the tail of its log
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {r.spec.name}\n{r.tail(1500)}" for r in sup.running.values())
            pytest.fail(f"{what}: not within {timeout_s:.0f} s\n{logs}")
        time.sleep(1.0)


def _http_ok(port: int, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_rendered_env_of_the_labeller_is_a_valid_config():
    job = next(o for o in render(VALUES) if o["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    module = importlib.import_module(container["command"][2])
    env = {e["name"]: e["value"] for e in container["env"]}
    config = module.load_config(env)
    assert config.min_episodes == 40 and config.metrics_port == 9090
    assert set(k for k in env if k.startswith(module.PREFIX)) <= {module.PREFIX + f.upper() for f in config.__dataclass_fields__}


def test_labeller_job_runs_restricted():
    job = to_model(next(o for o in render(VALUES) if o["kind"] == "Job"), "V1Job")
    spec = job.spec.template.spec
    assert spec.restart_policy == "OnFailure" and spec.service_account_name == "mtopt-sim-labeller"
    assert spec.security_context.run_as_non_root is True and spec.security_context.seccomp_profile.type == "RuntimeDefault"
    assert spec.automount_service_account_token is False
    sc = spec.containers[0].security_context
    assert sc.read_only_root_filesystem is True and sc.allow_privilege_escalation is False and sc.capabilities.drop == ["ALL"]
    assert {"cpu", "memory"} <= set(spec.containers[0].resources.limits)
    assert "/tmp" in {m.mount_path for m in spec.containers[0].volume_mounts}


# continuous labelling: the labeller is a Deployment that trains a new SD version every few seconds
CONTINUOUS = {"simLabeller.refreshEverySeconds": "5", "simLabeller.refreshLabelsPerTask": "4",
              "simLabeller.config.refresh_train_steps": "20"}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("labelling", ["job", "continuous"])
def test_chart_processes_become_healthy_and_learn(minio, tmp_path, monkeypatch, labelling):
    for name in list(__import__("os").environ):
        if name.startswith(("MTOPT_", "AWS_")):  # only the chart's env may configure the processes
            monkeypatch.delenv(name)
    objects = render(VALUES | (CONTINUOUS if labelling == "continuous" else {}))
    wiring = ChartWiring(objects, minio, tmp_path / "pods")
    specs = wiring.specs()
    by_component = {s.role: s for s in specs}
    assert set(by_component) == {"episode-store", "model-registry", "success-detector", "log-replay", "bellman", "trainer",
                                 "sim-robot", "sim-labeller"}, sorted(by_component)

    with Supervisor(specs, tmp_path / "logs", grace_s=15, start_timeout_s=START_S) as sup:
        for spec in specs:
            sup.start(spec)
        for spec in specs:
            sup.wait_started(spec)

        services = [s for s in specs if s.grpc_port is not None]
        assert len(services) == 6
        for spec in services:
            _wait(f"{spec.name} live", lambda s=spec: health_status(s.address, "liveness") == "SERVING", START_S, sup)
        for spec in services:
            _wait(f"{spec.name} SERVING on {spec.health_service!r}",
                  lambda s=spec: health_status(s.address, s.health_service) == "SERVING", SERVING_S, sup)
        robot = by_component["sim-robot"]
        probe = next(p for p in wiring.pods if p.name == robot.name).container["livenessProbe"]["httpGet"]
        assert _http_ok(robot.metrics_port, probe["path"]), "the sim robot's liveness probe fails"

        # the `helm test` pod's own check, on the chart's Service names
        test_pod = find(objects, "Pod", "mtopt-test-health")["spec"]["containers"][0]
        args = [wiring.resolve_address(a) for a in test_pod["args"]]
        check = subprocess.run([sys.executable, *test_pod["command"][1:], *args], capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, f"helm test pod's check failed:\n{check.stdout}\n{check.stderr}"

        # the labeller trains the first SD version; episodes flow robot -> store -> log_replay -> Bellman -> trainer
        labeller = by_component["sim-labeller"]
        if labelling == "job":
            _wait("the simulated labeller Job finished", lambda: sup.exited_cleanly(labeller.name), LEARN_S, sup)
        else:  # the Deployment runs on: a second SD version trained from on-policy labels and promoted
            assert not labeller.exits
            sd_metrics = by_component["success-detector"].metrics_port
            _wait("SD version 2 serving", lambda: total(scrape(sd_metrics), "mtopt_success_detector_serving_version") >= 2,
                  LEARN_S, sup)
            _wait("a labelling round counted as trained",  # the labeller polls GetVersion: it learns of READY a little later
                  lambda: total(scrape(labeller.metrics_port), "mtopt_sim_labeller_refresh_rounds_total", result="trained") >= 1,
                  30, sup)
        store = by_component["episode-store"]
        assert total(scrape(store.metrics_port), "mtopt_episode_store_episodes_stored_total") > 0
        trainer = by_component["trainer"]
        _wait("trainer rows accepted and steps taken",
              lambda: total(scrape(trainer.metrics_port), "mtopt_trainer_steps_total") > 0
              and total(scrape(trainer.metrics_port), "mtopt_trainer_rows_accepted_total") > 0, LEARN_S, sup)
        assert total(scrape(by_component["bellman"].metrics_port), "mtopt_bellman_targets_total") > 0
        sup.check()
        codes = sup.stop_all()
    assert codes and all(code == 0 for code in codes.values()), f"exit codes after SIGTERM: {codes}"
