"""Shared by the example task files: Fashion-MNIST with a validation split, a plain SGD loop, a cached reference."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from deepshrink.experiments.data import Split, load_mnist_format

CACHE = Path(__file__).resolve().parent.parent / "runs" / "examples"

_data = load_mnist_format()  # Debian's Fashion-MNIST (apt-get install dataset-fashion-mnist)
TRAIN = Split(_data.train.images[:55000], _data.train.labels[:55000])
VALID = Split(_data.train.images[55000:], _data.train.labels[55000:])  # every decision is made here
TEST = _data.test  # reported only


def accuracy(model: nn.Module, split: Split, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> float:
    was = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(split), 1000):
            correct += int((model(prepare(split.images[i : i + 1000])).argmax(1) == split.labels[i : i + 1000]).sum())
    model.train(was)
    return correct / len(split)


def sgd_epochs(model: nn.Module, epochs: int, lr: float, prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
               seed: int = 0) -> None:
    """The user's own loop: SGD with momentum, a fresh optimizer each call (deepshrink never sees it)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(TRAIN), generator=g)
        for i in range(0, len(order), 128):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(prepare(TRAIN.images[idx])), TRAIN.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()


def cached_reference(name: str, build: Callable[[], nn.Module], fit: Callable[[nn.Module], None]) -> nn.Module:
    """The trained reference: trained once, then loaded (weights_only) so that a resumed run starts from the same model."""
    path = CACHE / f"{name}.pt"
    torch.manual_seed(0)
    model = build()
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
    else:
        fit(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()
