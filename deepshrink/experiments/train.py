"""Plain training and evaluation loops used by ``deepshrink reproduce`` and the tests.

Nothing here is needed to compress a model: users keep their own loops. These exist so a newcomer
can reproduce the paper's MNIST-family experiments with one command.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..errors import ConfigError
from .data import Split

__all__ = ["batches", "correct", "evaluate", "logits", "loss", "paired_drop", "train_epochs"]


def _indices(n: int, batch_size: int, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for i in range(0, n, batch_size):
        yield order[i : i + batch_size]


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for idx in _indices(len(split), batch_size, generator):
        yield split.images[idx], split.labels[idx]


def train_epochs(
    model: nn.Module,
    split: Split,
    epochs: int,
    lr: float,
    *,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    optimizer: str = "adam",
    seed: int = 0,
    desc: str = "train",
    progress: bool = True,
    teacher: nn.Module | torch.Tensor | None = None,
    distill: float = 0.0,
    temperature: float = 4.0,
) -> float:
    """Adam, or SGD with Nesterov momentum 0.9 (``optimizer="sgd"``), with a cosine learning-rate
    schedule over ``epochs``; returns the last epoch's mean loss.

    The optimizer is created here, over ``model.parameters()`` as they are now, which is the
    pattern for each stage: after ``prune_`` the same parameters; after ``share_weights_`` the codebooks.
    With a ``teacher`` (the dense model) and ``distill`` in (0, 1], the loss mixes in that much of the
    distillation loss of Hinton et al. (2015): KL divergence to the teacher's outputs at ``temperature``.
    ``teacher`` may also be its logits for every image of ``split`` (``logits(teacher, split)``): a fixed teacher
    then costs one forward pass for the whole run instead of one a batch.
    """
    if epochs <= 0:
        return float("nan")
    if isinstance(teacher, torch.Tensor) and teacher.shape[0] != len(split):
        raise ConfigError(f"train_epochs: teacher logits for {teacher.shape[0]} images, the split has {len(split)}")
    g = torch.Generator().manual_seed(seed)
    if optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    elif optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    else:
        raise ConfigError(f"train_epochs: optimizer must be 'adam' or 'sgd', not {optimizer!r}")
    steps = epochs * math.ceil(len(split) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step")
    loss_sum, n = 0.0, 0
    for _ in range(epochs):
        loss_sum, n = 0.0, 0
        for idx in _indices(len(split), batch_size, g):
            x, y = split.images[idx], split.labels[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            if teacher is not None and distill > 0:
                with torch.no_grad():
                    taught = teacher[idx] if isinstance(teacher, torch.Tensor) else teacher(x)
                    soft = F.log_softmax(taught / temperature, dim=1)
                kd = F.kl_div(F.log_softmax(out / temperature, dim=1), soft, log_target=True, reduction="batchmean")
                loss = (1 - distill) * loss + distill * temperature**2 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(y)
            n += len(y)
            bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / max(n, 1):.4f}")
    bar.close()
    return loss_sum / max(n, 1)


@torch.no_grad()
def correct(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """Whether the model's top-1 prediction is right, for every image of ``split`` in its order."""
    model.eval()
    return torch.cat([model(x).argmax(1) == y for x, y in batches(split, batch_size)])


def evaluate(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Top-1 accuracy on ``split``."""
    return int(correct(model, split, batch_size).sum()) / max(len(split), 1)


def paired_drop(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """How much accuracy fell from ``before`` to ``after`` (``correct``'s outputs on the same images), in points, with
    its standard error as a paired difference (McNemar's): only the images on which the two disagree carry it.

    Two models that disagree on a few percent of 10,000 images differ in accuracy by a tenth of a point or two by
    chance alone, so a drop is read against this, not against zero."""
    n = max(len(before), 1)
    lost, gained = int((before & ~after).sum()), int((~before & after).sum())
    d = (lost - gained) / n
    return {"drop_points": 100 * d, "se_points": 100 * max((lost + gained) / n - d * d, 0.0) ** 0.5 / n**0.5,
            "discordant": lost + gained}


@torch.no_grad()
def logits(model: nn.Module, split: Split, batch_size: int = 1000) -> torch.Tensor:
    """The model's outputs for every image of ``split``, in its order (a fixed teacher's, computed once)."""
    model.eval()
    return torch.cat([model(x) for x, _ in batches(split, batch_size)])


@torch.no_grad()
def loss(model: nn.Module, split: Split, batch_size: int = 1000) -> float:
    """Mean cross-entropy on ``split``: a smoother measure than accuracy, which moves one image at a time."""
    model.eval()
    total = 0.0
    for x, y in batches(split, batch_size):
        total += float(F.cross_entropy(model(x), y, reduction="sum"))
    return total / max(len(split), 1)
