"""helm lint and `helm template` scenarios: what each values scenario renders, and what the
chart refuses (schema and template guards) with a message that says what to fix."""

from __future__ import annotations

import pytest
import yaml
from deploy_helpers import CHART, KEDA, MONITORING, SCENARIOS, env_of, find, helm, render, render_scenario, template_args

SERVICES = {  # component -> (module, env prefix, port)
    "episode-store": ("mtopt.episode_store", "MTOPT_EPISODE_STORE_", 50051),
    "success-detector": ("mtopt.success_detector", "MTOPT_SUCCESS_DETECTOR_", 50052),
    "log-replay": ("mtopt.log_replay", "MTOPT_LOG_REPLAY_", 50053),
    "bellman": ("mtopt.bellman", "MTOPT_BELLMAN_", 50054),
    "model-registry": ("mtopt.model_registry", "MTOPT_MODEL_REGISTRY_", 50055),
    "trainer": ("mtopt.trainer", "MTOPT_TRAINER_", 50056),
}
STORAGE = ("episode-store", "success-detector", "log-replay", "model-registry", "trainer")  # trainer: checkpoints


def test_lint_strict():
    helm("lint", "--strict", str(CHART))
    for values, apis in SCENARIOS.values():
        args = ["lint", "--strict", str(CHART)]
        for k, v in values.items():
            args += ["--set", f"{k}={v}"]
        helm(*args)  # lint has no --api-versions: capability-guarded objects are skipped there


@pytest.fixture(scope="module")
def defaults():
    return render_scenario("defaults")


def test_defaults_one_deployment_service_account_per_service(defaults):
    for component, (module, prefix, port) in SERVICES.items():
        name = f"mtopt-{component}"
        deployment = find(defaults, "Deployment", name)
        find(defaults, "ServiceAccount", name)
        service = find(defaults, "Service", name)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == ["python", "-m", module]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": port, "metrics": 9090}
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": port, "metrics": 9090}
        env = env_of(deployment)
        assert env[f"{prefix}PORT"] == str(port)
        assert env[f"{prefix}METRICS_PORT"] == "9090"
        assert env["MTOPT_TASKS"] == "/etc/mtopt/tasks/tasks.yaml"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == component
        assert labels["app.kubernetes.io/instance"] == "mtopt"
        assert labels["app.kubernetes.io/part-of"] == "mtopt"


def test_defaults_headless_services_and_dns_targets(defaults):
    for component in ("episode-store", "model-registry", "success-detector"):
        assert find(defaults, "Service", f"mtopt-{component}")["spec"]["clusterIP"] == "None"
    for component in ("log-replay", "bellman", "trainer"):
        assert "clusterIP" not in find(defaults, "Service", f"mtopt-{component}")["spec"]
    bellman = env_of(find(defaults, "Deployment", "mtopt-bellman"))
    assert bellman["MTOPT_BELLMAN_LOG_REPLAY_ADDRESS"] == "dns:///mtopt-log-replay:50053"
    assert bellman["MTOPT_BELLMAN_TRAINER_ADDRESS"] == "dns:///mtopt-trainer:50056"
    assert bellman["MTOPT_BELLMAN_REGISTRY_ADDRESS"] == "dns:///mtopt-model-registry:50055"
    log_replay = env_of(find(defaults, "Deployment", "mtopt-log-replay"))
    assert log_replay["MTOPT_LOG_REPLAY_STORE_ADDRESS"] == "dns:///mtopt-episode-store:50051"
    assert log_replay["MTOPT_LOG_REPLAY_SUCCESS_DETECTOR_ADDRESS"] == "dns:///mtopt-success-detector:50052"
    for component in ("success-detector", "trainer"):
        prefix = SERVICES[component][1]
        assert env_of(find(defaults, "Deployment", f"mtopt-{component}"))[f"{prefix}REGISTRY_ADDRESS"] == "dns:///mtopt-model-registry:50055"
    registry = env_of(find(defaults, "Deployment", "mtopt-model-registry"))
    assert registry["MTOPT_MODEL_REGISTRY_DEFAULT_ALIAS"] == "latest"


def test_defaults_storage_is_bundled_minio(defaults):
    find(defaults, "Deployment", "mtopt-minio")
    find(defaults, "PersistentVolumeClaim", "mtopt-minio")
    secret = find(defaults, "Secret", "mtopt-minio")
    assert set(secret["data"]) == {"rootUser", "rootPassword"}
    for component in STORAGE:
        prefix = SERVICES[component][1]
        env = env_of(find(defaults, "Deployment", f"mtopt-{component}"))
        assert env[f"{prefix}BACKEND"] == "s3"
        assert env[f"{prefix}S3_ENDPOINT"] == "mtopt-minio:9000"
        assert env[f"{prefix}S3_BUCKET"] == "mtopt"
        assert env["MTOPT_S3_ACCESS_KEY"] == {"secretKeyRef": {"name": "mtopt-minio", "key": "rootUser"}}
        assert env["MTOPT_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "mtopt-minio", "key": "rootPassword"}}
    assert "MTOPT_S3_ACCESS_KEY" not in env_of(find(defaults, "Deployment", "mtopt-bellman"))


def test_defaults_tasks_configmap_is_the_builtin_catalogue(defaults):
    from deploy_helpers import REPO

    configmap = find(defaults, "ConfigMap", "mtopt-tasks")
    builtin = (REPO / "services" / "mtopt" / "tasks.yaml").read_text()
    assert (CHART / "files" / "tasks.yaml").read_text() == builtin, "copy services/mtopt/tasks.yaml to helm/mtopt/files/"
    assert configmap["data"]["tasks.yaml"].strip() == builtin.strip()


def test_defaults_pdbs_only_where_replicas_above_one(defaults):
    pdbs = {o["metadata"]["name"] for o in defaults if o["kind"] == "PodDisruptionBudget"}
    assert pdbs == {"mtopt-episode-store", "mtopt-model-registry", "mtopt-success-detector", "mtopt-bellman"}
    assert not [o for o in defaults if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject", "NetworkPolicy", "ServiceMonitor")]


def test_defaults_dashboards_and_helm_test_pod(defaults):
    dashboards = [o for o in defaults if o["kind"] == "ConfigMap" and o["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert [d["metadata"]["name"] for d in dashboards] == ["mtopt-dashboard-fleet"]
    pod = find(defaults, "Pod", "mtopt-test-health")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["containers"][0]["args"] == [f"dns:///mtopt-{c}:{p}" for c, (_, _, p) in sorted(SERVICES.items())]


def test_external_s3():
    objects = render_scenario("external-s3")
    assert not [o for o in objects if o["metadata"]["name"].startswith("mtopt-minio")]
    for component in STORAGE:
        prefix = SERVICES[component][1]
        env = env_of(find(objects, "Deployment", f"mtopt-{component}"))
        assert env[f"{prefix}BACKEND"] == "s3"
        assert env[f"{prefix}S3_ENDPOINT"] == "s3.example.com:443"
        assert env[f"{prefix}S3_SECURE"] == "true"
        assert env[f"{prefix}S3_REGION"] == "eu-west-1"
        assert env["MTOPT_S3_ACCESS_KEY"] == {"secretKeyRef": {"name": "my-s3", "key": "access-key"}}
        assert env["MTOPT_S3_SECRET_KEY"] == {"secretKeyRef": {"name": "my-s3", "key": "secret-key"}}


def test_hpa_replaces_bellman_replicas():
    objects = render_scenario("hpa")
    hpa = find(objects, "HorizontalPodAutoscaler", "mtopt-bellman")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mtopt-bellman"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in find(objects, "Deployment", "mtopt-bellman")["spec"]
    assert find(objects, "Deployment", "mtopt-trainer")["spec"]["replicas"] == 1


def test_keda_scaled_object_on_trainer_starvation():
    objects = render_scenario("keda")
    scaled = find(objects, "ScaledObject", "mtopt-bellman")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "prometheus"
    assert "mtopt_trainer_starved_seconds_total" in trigger["metadata"]["query"]
    assert "replicas" not in find(objects, "Deployment", "mtopt-bellman")["spec"]
    assert not [o for o in objects if o["kind"] == "HorizontalPodAutoscaler"]


def test_gpu_trainer():
    objects = render_scenario("gpu-trainer")
    trainer = find(objects, "Deployment", "mtopt-trainer")
    spec = trainer["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert env_of(trainer)["MTOPT_TRAINER_DEVICE"] == "cuda"
    assert trainer["spec"]["strategy"]["type"] == "Recreate"
    # other services stay off the GPU
    assert "nvidia.com/gpu" not in find(objects, "Deployment", "mtopt-bellman")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    custom = render({"trainer.gpu.enabled": "true", "trainer.gpu.resourceName": "amd.com/gpu", "trainer.gpu.count": "2",
                     "trainer.gpu.nodeSelector.accelerator": "mi300"})
    spec = find(custom, "Deployment", "mtopt-trainer")["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"]["amd.com/gpu"] == "2"
    assert spec["nodeSelector"] == {"accelerator": "mi300"}


def test_sim_robots():
    objects = render_scenario("sim-robots")
    robots = find(objects, "Deployment", "mtopt-sim-robot")
    assert robots["spec"]["replicas"] == 3
    container = robots["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mtopt_agent"]
    assert container["image"].startswith("ghcr.io/mtopt/mtopt-robot-agent:")
    env = env_of(robots)
    assert env["MTOPT_AGENT_STORE_ADDRESS"] == "dns:///mtopt-episode-store:50051"
    assert env["MTOPT_AGENT_REGISTRY_ADDRESS"] == "dns:///mtopt-model-registry:50055"
    assert env["MTOPT_AGENT_ROBOT"] == "sim"


def test_continuous_labelling_runs_the_labeller_as_a_deployment():
    objects = render_scenario("continuous-labelling")
    assert not [o for o in objects if o["kind"] == "Job"]
    labeller = find(objects, "Deployment", "mtopt-sim-labeller")
    assert labeller["spec"]["replicas"] == 1 and labeller["spec"]["strategy"] == {"type": "Recreate"}
    assert labeller["spec"]["template"]["spec"]["restartPolicy"] == "Always"
    env = env_of(labeller)
    assert env["MTOPT_SIM_LABELLER_REFRESH_EVERY_S"] == "60" and env["MTOPT_SIM_LABELLER_REFRESH_LABELS_PER_TASK"] == "10"
    service = find(objects, "Service", "mtopt-sim-labeller")  # the ServiceMonitor scrapes its metrics
    assert service["metadata"]["labels"]["mtopt.io/metrics"] == "true" and service["spec"]["ports"][0]["name"] == "metrics"
    policy = find(objects, "NetworkPolicy", "mtopt-sim-labeller")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "sim-labeller"
    # without continuous labelling: the one-shot Job, no Service
    one_shot = render_scenario("sim-robots")
    assert [o["metadata"]["name"] for o in one_shot if o["kind"] == "Job"] == ["mtopt-sim-labeller-1"]
    assert not [o for o in one_shot if o["kind"] == "Service" and o["metadata"]["name"] == "mtopt-sim-labeller"]


def test_config_and_extra_env_reach_the_container():
    objects = render({"bellman.config.batch_size": "64", "bellman.extraEnv[0].name": "EXTRA", "bellman.extraEnv[0].value": "on-demand",
                      "bellman.config.port": "50054"})
    env = env_of(find(objects, "Deployment", "mtopt-bellman"))
    assert env["MTOPT_BELLMAN_BATCH_SIZE"] == "64"
    assert env["EXTRA"] == "on-demand"
    names = [e["name"] for e in find(objects, "Deployment", "mtopt-bellman")["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names)), "a config entry must override the generated variable, not duplicate it"


def test_disabled_service_renders_nothing():
    objects = render({"successDetector.enabled": "false"})
    assert not [o for o in objects if o["metadata"]["name"] == "mtopt-success-detector"]


def test_network_policies_follow_the_data_flow():
    objects = render_scenario("network-policies")
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    deny = policies["mtopt-default-deny"]
    assert deny["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in deny and "egress" not in deny

    def sources(policy, port="grpc"):
        rule = next(r for r in policies[policy]["ingress"] if r["ports"][0]["port"] == port)
        return None if "from" not in rule else sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"])

    def destinations(policy):
        return sorted((r["to"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"], r["ports"][0]["port"])
                      for r in policies[policy]["egress"] if "to" in r)

    assert sources("mtopt-log-replay") == ["bellman", "test"]
    assert sources("mtopt-trainer") == ["bellman", "test"]
    assert sources("mtopt-success-detector") == ["log-replay", "sim-labeller", "test"]
    assert sources("mtopt-bellman") == ["test"]
    assert sources("mtopt-episode-store") is None  # robots connect from outside the cluster
    assert sources("mtopt-minio", 9000) == ["episode-store", "log-replay", "model-registry", "success-detector", "trainer"]
    assert destinations("mtopt-bellman") == [("log-replay", 50053), ("model-registry", 50055), ("trainer", 50056)]
    assert destinations("mtopt-log-replay") == [("episode-store", 50051), ("minio", 9000), ("success-detector", 50052)]
    assert destinations("mtopt-sim-robot") == [("episode-store", 50051), ("model-registry", 50055)]
    assert destinations("mtopt-sim-labeller") == [("episode-store", 50051), ("success-detector", 50052)]
    assert destinations("mtopt-trainer") == [("minio", 9000), ("model-registry", 50055)]
    for name, spec in policies.items():
        if name != "mtopt-default-deny":
            assert {"port": 53, "protocol": "UDP"} in spec["egress"][0]["ports"], f"{name} lacks DNS egress"
    # only the robots' peers when given
    limited = render({"networkPolicy.enabled": "true", "networkPolicy.robotPeers[0].ipBlock.cidr": "10.20.0.0/16"})
    store = find(limited, "NetworkPolicy", "mtopt-episode-store")["spec"]["ingress"][0]["from"]
    assert {"ipBlock": {"cidr": "10.20.0.0/16"}} in store


def test_network_policies_external_s3_egress_port():
    objects = render_scenario("network-policies-external-s3")
    egress = find(objects, "NetworkPolicy", "mtopt-episode-store")["spec"]["egress"]
    assert {"ports": [{"port": 9000, "protocol": "TCP"}]} in egress


def test_monitoring_objects_need_the_capability():
    objects = render_scenario("monitoring")
    monitor = find(objects, "ServiceMonitor", "mtopt")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    rule = find(objects, "PrometheusRule", "mtopt")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"MtoptNoEpisodesStored", "MtoptRobotSpoolGrowing", "MtoptTrainerStarved", "MtoptBellmanErrorRate", "MtoptRobotModelStale",
            "MtoptSuccessDetectorFooled", "MtoptLabellerRoundsFailing"} <= alerts
    assert rule["spec"] == yaml.safe_load((CHART / "alerts" / "mtopt.rules.yaml").read_text())  # the rules file verbatim
    without = render({"serviceMonitor.enabled": "true", "prometheusRule.enabled": "true"})
    assert not [o for o in without if o["apiVersion"] == MONITORING]


@pytest.mark.parametrize("values, message", [
    ({"bellman.hpa.enabled": "true", "bellman.keda.enabled": "true"}, "enable only one of them"),
    ({"s3.endpoint": "s3.example.com:443"}, "set minio.enabled=false to use an external S3"),
    ({"minio.enabled": "false"}, "minio.enabled=false needs an external S3: set s3.endpoint"),
    ({"minio.enabled": "false", "s3.endpoint": "s3:9000"}, "s3.existingSecret is empty"),
    ({"bellman.replicas": "-1"}, "at '/bellman/replicas': minimum: got -1, want 0"),
    ({"trainer.replicas": "2"}, "at '/trainer/replicas': maximum: got 2, want 1"),
    ({"trainer.gpu.resourceName": "gpu"}, "at '/trainer/gpu/resourceName'"),
    ({"image.pullPolicy": "Sometimes"}, "at '/image/pullPolicy'"),
    ({"s3.endpoint": "https://s3.example.com"}, "at '/s3/endpoint'"),
    ({"bellman.extraEnv[0].name": "X", "bellman.extraEnv[0].value": "1"}, "at '/bellman/extraEnv/0/value'"),
    ({"bellmann.replicas": "3"}, "additional properties 'bellmann' not allowed"),
    ({"episodeStore.config.Bad-Name": "1"}, "invalid propertyName 'Bad-Name'"),
    ({"simLabeller.refreshEverySeconds": "-5"}, "at '/simLabeller/refreshEverySeconds': minimum: got -5, want 0"),
])
def test_bad_values_are_refused_with_a_message(values, message):
    proc = helm(*template_args(values, (KEDA,)), check=False)
    assert proc.returncode != 0, f"helm accepted {values}"
    assert message in proc.stderr, proc.stderr
