"""The Dockerfile's rules, read from the file (there is no Docker engine here): pinned base,
non-root users, a service target and a torch-free robot-agent target."""

from __future__ import annotations

import re

from deploy_helpers import REPO


def _stages():
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stages, current = {}, None
    for line in text.splitlines():
        m = re.match(r"FROM (\S+) AS (\S+)", line)
        if m:
            current = m.group(2)
            stages[current] = {"from": m.group(1), "lines": []}
        elif current:
            stages[current]["lines"].append(line)
    return args, stages


def test_base_image_is_pinned():
    args, stages = _stages()
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    for name, stage in stages.items():
        ref = stage["from"]
        assert ref == "${PYTHON_IMAGE}" or ref in stages, f"stage {name} starts from an unpinned {ref}"


def test_targets_are_non_root_and_robot_image_has_no_torch():
    _, stages = _stages()
    assert {"service", "robot-agent"} <= set(stages)
    assert list(stages)[-1] == "service", "the default target (last stage) is the service image"
    for target in ("service", "robot-agent"):
        users = [line.split()[1] for line in stages[target]["lines"] if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{target} must end as a non-root USER"
    robot = "\n".join(stages["robot-agent"]["lines"])
    assert "--from=build-robot" in robot and "build-server" not in robot
    build_robot = "\n".join(stages["build-robot"]["lines"])
    assert "'.[robot]'" in build_robot and "import torch" in build_robot  # the build fails if torch crept in
    assert "'.[server]'" in "\n".join(stages["build-server"]["lines"])


def test_image_user_matches_the_chart():
    import yaml

    values = yaml.safe_load((REPO / "helm" / "mtopt" / "values.yaml").read_text())
    _, stages = _stages()
    user = next(line.split()[1] for line in stages["service"]["lines"] if line.startswith("USER "))
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
