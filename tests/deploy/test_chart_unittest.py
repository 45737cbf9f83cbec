"""The helm-unittest suites of the chart (helm/mtopt/tests/*_test.yaml)."""

from __future__ import annotations

import subprocess

from deploy_helpers import CHART, tool


def test_helm_unittest_suites_pass():
    suites = sorted(p.name for p in (CHART / "tests").glob("*_test.yaml"))
    assert len(suites) >= 5, suites
    proc = subprocess.run([str(tool("helm-unittest")), "--color=false", str(CHART)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"Test Suites: {len(suites)} passed, {len(suites)} total" in proc.stdout, proc.stdout
