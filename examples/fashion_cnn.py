"""Task file: a small CNN with BatchNorm on Fashion-MNIST.

    deepshrink compress examples/fashion_cnn.py --out runs/examples/fashion_cnn.dsz
    deepshrink export runs/examples/fashion_cnn.dsz --task examples/fashion_cnn.py --to onnx runs/examples/fashion_cnn.onnx
"""

from __future__ import annotations

import torch
from _common import TEST, TRAIN, VALID, accuracy, cached_reference, sgd_epochs
from torch import nn


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
    )


def model() -> nn.Module:
    return cached_reference("fashion_cnn", build, lambda m: sgd_epochs(m, 4, 0.05))


def train(model: nn.Module, epochs: int) -> None:
    sgd_epochs(model, epochs, 0.01)


def validate(model: nn.Module) -> float:
    return accuracy(model, VALID)


def evaluate(model: nn.Module) -> float:
    return accuracy(model, TEST)


def example_input() -> tuple[torch.Tensor]:
    return (TRAIN.images[:4],)
