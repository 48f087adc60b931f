from __future__ import annotations

import pytest
import torch

from deepshrink.data import Dataset, load_mnist_format

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def fashion() -> Dataset:
    """Real Fashion-MNIST (Debian's package), loaded once per test session."""
    return load_mnist_format()


@pytest.fixture(scope="session")
def small_fashion(fashion: Dataset) -> Dataset:
    """A small real subset: 6,000 training and 2,000 test images."""
    return Dataset(fashion.train.subset(6000), fashion.test.subset(2000), fashion.source)
