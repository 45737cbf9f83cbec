import os

import numpy as np
import pytest
import torch

from mtopt.tasks import TaskCatalogue

torch.set_num_threads(int(os.environ.get("MTOPT_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def catalogue() -> TaskCatalogue:
    return TaskCatalogue.load()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _torch_threads():
    """Every test starts with the suite's torch thread count (tiny networks: one thread is fastest
    on a busy 2-core machine) and whatever a test sets is undone afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("MTOPT_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(previous)
