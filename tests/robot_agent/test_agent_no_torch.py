"""The robot side runs without torch: subprocesses in which ``import torch`` fails.

Both upload to a real episode_store in this (test) process; the second also follows the real
model_registry here. The ONNX models they run were exported here, with torch, as the trainer does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from agent_harness import wait_until

REPO = Path(__file__).resolve().parents[2]

BLOCK_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"torch is blocked: the robot agent must not import {name}")
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def _env(**agent_vars) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTOPT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "robot_agent"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({f"MTOPT_AGENT_{k.upper()}": str(v) for k, v in agent_vars.items()})
    return env


def _write_model(directory, artifacts, version: int) -> None:
    directory.mkdir()
    for name, data in artifacts.items():
        (directory / name).write_bytes(data)
    (directory / "version").write_text(str(version))


def test_agent_runs_scripted_and_onnx_episodes_without_torch(store, tmp_path, onnx_models):
    model_dir = tmp_path / "model"
    _write_model(model_dir, onnx_models[1], version=4)
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import dataclasses, json
        from pathlib import Path
        from mtopt_agent.config import load_config
        from mtopt_agent.runtime import AgentRuntime

        config = load_config(robot_id="sim-9", store_address="127.0.0.1:{store.store.port}", metrics_port=-1,
                             spool_dir=Path({str(tmp_path / "spool")!r}), spool_fsync=False, seed=1)
        out = []
        with AgentRuntime(config) as runtime:                       # no model: the scripted bootstrap
            runtime.agent.run(runtime.stop_event, 3, on_episode=out.append)
            assert runtime.spool.wait_until_empty(30)
        config = dataclasses.replace(config, model_dir=Path({str(model_dir)!r}), scripted_fraction=0.0,
                                     cem_samples=16, cem_elites=4)
        with AgentRuntime(config) as runtime:                       # CEM on ONNX Runtime
            runtime.agent.run(runtime.stop_event, 2, on_episode=out.append)
            assert runtime.spool.wait_until_empty(30)
        heavy = sorted(m for m in sys.modules if m.split(".")[0] == "torch" or m.startswith("mtopt.core"))
        print(json.dumps({{"episodes": [dataclasses.asdict(r) for r in out], "heavy_modules": heavy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy_modules"] == []
    episodes = result["episodes"]
    assert [(e["policy"], e["policy_version"]) for e in episodes] == [("scripted", 0)] * 3 + [("cem", 4)] * 2
    stored = {s.episode_id: s for s in store.list_all()}
    assert set(stored) == {e["episode_id"] for e in episodes}
    assert {s.robot_id for s in stored.values()} == {"sim-9"}


def test_python_m_mtopt_agent_follows_the_registry_and_stops_cleanly_on_sigterm(store, registry, tmp_path, onnx_models):
    version = registry.publish(onnx_models[1])
    spool = tmp_path / "spool"
    runner = BLOCK_TORCH + "import runpy\nrunpy.run_module('mtopt_agent', run_name='__main__', alter_sys=True)\n"
    env = _env(robot_id="sim-5", store_address=f"127.0.0.1:{store.store.port}", registry_address=registry.address,
               spool_dir=spool, spool_fsync="false", metrics_port=0, seed=2, max_episodes=0, cem_samples=16, cem_elites=4)
    proc = subprocess.Popen([sys.executable, "-c", runner], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def cem_episodes_stored() -> int:
        return sum(1 for s in store.list_all() if s.policy_name == "cem" and s.policy_version == version)

    try:
        wait_until(lambda: cem_episodes_stored() >= 3 or proc.poll() is not None, what="episodes of the registry's version")
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output[-3000:]
    m = re.search(r"robot sim-5 stopped after (\d+) episodes; spool empty", output)
    assert m, output[-3000:]
    assert "ModuleNotFoundError" not in output and f"now runs version {version}" in output
    summaries = store.list_all()
    ids = [s.episode_id for s in summaries]
    assert len(ids) == len(set(ids)) == int(m.group(1))  # the last episode was finished and uploaded too
    assert {(s.policy_name, s.policy_version) for s in summaries} <= {("scripted", 0), ("cem", version)}
    assert list(spool.glob("*.episode")) == [] and list((spool / "rejected").iterdir()) == []
