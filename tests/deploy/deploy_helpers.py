"""Helpers of the deployment tests: the pinned tools (installed by scripts/install_tools.sh),
`helm template` into Python objects, and the values scenarios every chart test runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "mtopt"
K8S_VERSION = "1.37.0"
"""Kubernetes version the rendered objects are validated against (kubernetes-validate)."""

MONITORING = "monitoring.coreos.com/v1"
KEDA = "keda.sh/v1alpha1"

# name -> (helm --set values, extra --api-versions)
SCENARIOS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "defaults": ({}, ()),
    "external-s3": ({"minio.enabled": "false", "s3.endpoint": "s3.example.com:443", "s3.secure": "true",
                     "s3.region": "eu-west-1", "s3.existingSecret": "my-s3"}, ()),
    "hpa": ({"bellman.hpa.enabled": "true"}, ()),
    "keda": ({"bellman.keda.enabled": "true"}, (KEDA,)),
    "network-policies": ({"networkPolicy.enabled": "true", "simRobots.enabled": "true"}, ()),
    "network-policies-external-s3": ({"networkPolicy.enabled": "true", "minio.enabled": "false",
                                      "s3.endpoint": "minio.storage:9000", "s3.existingSecret": "s3"}, ()),
    "gpu-trainer": ({"trainer.gpu.enabled": "true"}, ()),
    "sim-robots": ({"simRobots.enabled": "true", "simRobots.replicas": "3"}, ()),
    "continuous-labelling": ({"simRobots.enabled": "true", "simLabeller.refreshEverySeconds": "60", "networkPolicy.enabled": "true"}, ()),
    "monitoring": ({"serviceMonitor.enabled": "true", "prometheusRule.enabled": "true"}, (MONITORING,)),
}


def tool(name: str) -> Path:
    """Path of a pinned tool; fails the test (never skips) when it is missing."""
    path = Path(os.environ.get("MTOPT_TOOLS_BIN", REPO / ".tools" / "bin")) / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path} is missing: run `bash scripts/install_tools.sh` (bash scripts/test.sh does)")
    return path


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(tool("helm")), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/mtopt-helm/cache",
                               "HELM_CONFIG_HOME": "/tmp/mtopt-helm/config", "HELM_DATA_HOME": "/tmp/mtopt-helm/data"})
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template_args(values: dict[str, str] | None = None, api_versions: tuple[str, ...] = ()) -> list[str]:
    args = ["template", "mtopt", str(CHART), "--namespace", "mtopt"]
    for key, value in (values or {}).items():
        args += ["--set", f"{key}={value}"]
    for api in api_versions:
        args += ["--api-versions", api]
    return args


def render(values: dict[str, str] | None = None, api_versions: tuple[str, ...] = ()) -> list[dict]:
    """Every object `helm template` renders (hooks included), as dicts."""
    out = helm(*template_args(values, api_versions)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_scenario(name: str) -> list[dict]:
    values, apis = SCENARIOS[name]
    return render(values, apis)


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def env_of(deployment: dict) -> dict[str, object]:
    """The first container's env: name -> value (or the valueFrom mapping)."""
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def to_model(obj: dict, type_name: str):
    """A dict (as the API server would send it) as a `kubernetes.client` model, e.g. "V1Pod",
    through ApiClient.deserialize (whose signature changed between client versions)."""
    import inspect
    import json

    from kubernetes.client import ApiClient

    client = ApiClient()
    if "content_type" in inspect.signature(client.deserialize).parameters:
        return client.deserialize(json.dumps(obj), type_name, "application/json")

    class _Response:
        data = json.dumps(obj)

    return client.deserialize(_Response(), type_name)
