"""Every object of every values scenario validated strictly against the Kubernetes schemas
(kubernetes-validate, offline), and read into the `kubernetes` client's typed models to check
probes and pod security."""

from __future__ import annotations

import functools

import kubernetes_validate
import pytest
from deploy_helpers import K8S_VERSION, SCENARIOS, render_scenario, to_model

# Custom resources have no schema in kubernetes-validate (it ships the core API only); the
# tests in test_chart_render.py check their fields instead.
CUSTOM_RESOURCES = {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}

TYPED = {"Deployment": "V1Deployment", "Pod": "V1Pod"}


@functools.cache
def scenario_objects(name: str) -> list[dict]:
    return render_scenario(name)


def typed(obj: dict):
    """The object as the `kubernetes` client's model (V1Deployment, V1Pod), exactly as the client
    reads API responses."""
    return to_model(obj, TYPED[obj["kind"]])


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_kubernetes(scenario):
    objects = scenario_objects(scenario)
    assert objects
    checked = 0
    for obj in objects:
        if obj["apiVersion"] in CUSTOM_RESOURCES:
            assert obj["metadata"]["name"] and obj["spec"], obj
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError(f"{obj['kind']} {obj['metadata']['name']} ({scenario}): {e.message} at {list(e.path)}") from None
        checked += 1
    assert checked >= 20


def test_validation_catches_a_bad_object():
    deployment = next(o for o in scenario_objects("defaults") if o["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    unknown = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


@pytest.mark.parametrize("scenario", ["defaults", "sim-robots", "gpu-trainer", "continuous-labelling"])
def test_pods_run_restricted(scenario):
    for obj in scenario_objects(scenario):
        if obj["kind"] not in TYPED:
            continue
        model = typed(obj)
        pod_spec = model.spec.template.spec if obj["kind"] == "Deployment" else model.spec
        name = obj["metadata"]["name"]
        assert pod_spec.security_context.run_as_non_root is True, name
        assert pod_spec.security_context.seccomp_profile.type == "RuntimeDefault", name
        assert pod_spec.automount_service_account_token is False, name
        mounts_of = {}
        for container in pod_spec.containers:
            sc = container.security_context
            assert sc.allow_privilege_escalation is False, name
            assert sc.read_only_root_filesystem is True, name
            assert sc.capabilities.drop == ["ALL"], name
            assert not sc.capabilities.add, name
            assert container.resources.requests and container.resources.limits, f"{name} needs requests and limits"
            assert {"cpu", "memory"} <= set(container.resources.limits), name
            mounts_of[container.name] = {m.mount_path for m in container.volume_mounts}
            assert "/tmp" in mounts_of[container.name], f"{name}: /tmp must be an emptyDir (read-only root)"
        volumes = {v.name: v for v in pod_spec.volumes}
        assert volumes["tmp"].empty_dir is not None


def test_services_have_native_grpc_probes():
    deployments = [o for o in scenario_objects("defaults") if o["kind"] == "Deployment" and o["metadata"]["name"] != "mtopt-minio"]
    assert len(deployments) == 6
    for obj in deployments:
        container = typed(obj).spec.template.spec.containers[0]
        grpc_port = next(p.container_port for p in container.ports if p.name == "grpc")
        assert container.readiness_probe.grpc.port == grpc_port
        assert container.readiness_probe.grpc.service in (None, "")  # overall health: dependencies answer
        for probe in (container.liveness_probe, container.startup_probe):
            assert probe.grpc.port == grpc_port
            assert probe.grpc.service == "liveness"  # the process runs; see GrpcService
        mounts = {m.mount_path: m for m in container.volume_mounts}
        assert mounts["/etc/mtopt/tasks"].read_only is True
        assert "/data" in mounts
