"""Random images and labels of MNIST's shape, for the tests that need a split but no data set."""

from __future__ import annotations

import torch

from deepshrink.experiments.data import Split


def random_split(n: int) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))
