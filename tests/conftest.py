from __future__ import annotations

import os

import pytest
import torch

from deepshrink.errors import DeepShrinkError
from deepshrink.experiments.data import Dataset, default_data_dir, load_mnist_format

# Two threads, as on the project's machines, unless the run asks for fewer: OMP_NUM_THREADS=1 must
# reach torch's single-threaded paths too (torch.set_num_threads overrides the variable otherwise).
torch.set_num_threads(min(2, int(os.environ.get("OMP_NUM_THREADS", "2"))))


@pytest.fixture(scope="session")
def fashion() -> Dataset:
    """Real Fashion-MNIST (Debian's package), loaded once per test session; skipped where it is absent."""
    try:
        return load_mnist_format()
    except DeepShrinkError as exc:
        pytest.skip(f"Fashion-MNIST not found in {default_data_dir()} ({exc}); apt-get install dataset-fashion-mnist")


@pytest.fixture(scope="session")
def small_fashion(fashion: Dataset) -> Dataset:
    """A small real subset: 6,000 training and 2,000 test images."""
    return Dataset(fashion.train.subset(6000), fashion.test.subset(2000), fashion.source)
