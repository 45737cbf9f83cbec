"""Fixtures for the robot agent tests: a real episode_store and a real model_registry in-process.

`mtopt_agent` lives in robot_agent/ and is not packaged yet, so this puts robot_agent/ on
sys.path (and tests/services/ for its store harness).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
for _path in (REPO / "robot_agent", REPO / "tests" / "services", Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from agent_harness import RegistryUnderTest, onnx_artifacts  # noqa: E402
from harness_factory import closing_factory  # noqa: E402
from store_harness import LoopThread, StoreHarness, store_config  # noqa: E402


@pytest.fixture(scope="session")
def aio_loop() -> LoopThread:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def make_store(aio_loop, tmp_path):
    """Factory: make_store(**config_overrides) -> a started local-directory episode_store."""

    def make(**overrides) -> StoreHarness:
        overrides.setdefault("image_shape", ())
        return StoreHarness(aio_loop, store_config(tmp_path, "local", None, **overrides), "local")

    with closing_factory(make) as factory:
        yield factory


@pytest.fixture
def store(make_store) -> StoreHarness:
    return make_store()


@pytest.fixture(scope="session")
def onnx_models() -> dict[int, dict[str, bytes]]:
    """Two different exported Q-networks ({seed: {file name: bytes}}), exported once."""
    return {seed: onnx_artifacts(seed) for seed in (1, 2)}


@pytest.fixture
def registry(aio_loop, tmp_path) -> RegistryUnderTest:
    """The real model_registry (local directory) on a free port."""
    r = RegistryUnderTest(aio_loop, tmp_path / "models")
    yield r
    r.close()
