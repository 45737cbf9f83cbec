"""k8s/ holds the chart rendered with default values by scripts/render_k8s.sh: this fails when
the two disagree (run `bash scripts/render_k8s.sh` after changing the chart)."""

from __future__ import annotations

import subprocess

from deploy_helpers import REPO, tool


def test_k8s_manifests_match_the_chart(tmp_path):
    out = tmp_path / "k8s"
    subprocess.run(["bash", str(REPO / "scripts" / "render_k8s.sh"), str(out)], check=True, capture_output=True, timeout=120,
                   env={"HELM": str(tool("helm")), "PATH": "/usr/bin:/bin"})
    committed = {p.name: p.read_text() for p in (REPO / "k8s").glob("*.yaml")}
    rendered = {p.name: p.read_text() for p in out.glob("*.yaml")}
    assert sorted(committed) == sorted(rendered), "k8s/ lists other files than the chart renders: run bash scripts/render_k8s.sh"
    stale = [name for name in rendered if committed[name] != rendered[name]]
    assert not stale, f"k8s/{stale} differ from the chart: run bash scripts/render_k8s.sh"
    assert "kind: Deployment" in rendered["deployment.yaml"]
