"""Task file: a sequence model with an embedding, self-attention and an LSTM, reading Fashion-MNIST row by row.

Each image is a sequence of 28 rows (28 pixels each): a linear projection of the row plus a learned
embedding of its position, one multi-head self-attention block, an LSTM, and a classifier on its last state.

    deepshrink compress examples/fashion_sequence.py --out runs/examples/fashion_sequence.dsz
"""

from __future__ import annotations

import torch
from _common import TEST, TRAIN, VALID, accuracy, cached_reference, sgd_epochs
from torch import nn


class RowReader(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.rows = nn.Linear(28, width)
        self.position = nn.Embedding(28, width)
        self.attention = nn.MultiheadAttention(width, 4, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.reshape(images.shape[0], 28, 28)
        h = self.rows(x) + self.position.weight
        h = self.norm(h + self.attention(h, h, h, need_weights=False)[0])
        return self.head(self.lstm(h)[0][:, -1])


def model() -> nn.Module:
    return cached_reference("fashion_sequence", RowReader, lambda m: sgd_epochs(m, 4, 0.05))


def train(model: nn.Module, epochs: int) -> None:
    sgd_epochs(model, epochs, 0.01)


def validate(model: nn.Module) -> float:
    return accuracy(model, VALID)


def evaluate(model: nn.Module) -> float:
    return accuracy(model, TEST)


def example_input() -> tuple[torch.Tensor]:
    return (TRAIN.images[:4],)
