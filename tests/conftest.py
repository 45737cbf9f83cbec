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
