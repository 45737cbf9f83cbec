"""The environment each chart Deployment sets is accepted by that service's own config loader
(`mtopt.<service>.config.load_config`), and every MTOPT_<SERVICE>_* variable the chart sets
names a real setting. Secrets are replaced by placeholders and the task catalogue path by the
chart's catalogue file. (Starting the processes as the chart configures them is the wiring
test's job.)"""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from deploy_helpers import CHART, render_scenario



def _env(container: dict) -> dict[str, str]:
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # secretKeyRef: a placeholder credential
            env[item["name"]] = "placeholder-" + item["name"].lower()
    if "MTOPT_TASKS" in env:
        env["MTOPT_TASKS"] = str(CHART / "files" / "tasks.yaml")
    return env


@pytest.mark.parametrize("scenario", ["defaults", "external-s3", "gpu-trainer", "sim-robots", "continuous-labelling"])
def test_chart_env_is_a_valid_config(scenario):
    checked = 0
    for obj in render_scenario(scenario):
        if obj["kind"] != "Deployment" or obj["metadata"]["name"].endswith("-minio"):
            continue
        container = obj["spec"]["template"]["spec"]["containers"][0]
        module = container["command"][2]
        # a service package's config module, or the module itself (mtopt.sim_labeller)
        config_module = importlib.import_module(module if module == "mtopt.sim_labeller" else f"{module}.config")
        env = _env(container)
        config = config_module.load_config(env)
        prefix = config_module.PREFIX
        fields = {f.name for f in dataclasses.fields(config)}
        unknown = [k for k in env if k.startswith(prefix) and k[len(prefix):].lower() not in fields]
        assert not unknown, f"{module}: the chart sets variables {module} does not read: {unknown}"
        port = next(p["containerPort"] for p in container["ports"] if p["name"] in ("grpc", "metrics"))
        if hasattr(config, "backend"):
            assert config.backend == "s3", module
        if "grpc" in {p["name"] for p in container["ports"]}:
            assert config.port == port and config.metrics_port == 9090, module
        if scenario == "gpu-trainer" and module == "mtopt.trainer":
            assert config.device == "cuda"
        if module == "mtopt.sim_labeller":
            assert config.refresh_every_s == 60 and config.refresh_labels_per_task == 10
            assert config.refresh_focus_share == 0.5
        checked += 1
    assert checked >= 6
