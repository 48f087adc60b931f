"""The reproduction's training loop: distillation from a teacher module or from its logits, computed once."""

from __future__ import annotations

import copy

import pytest
import torch
from splits import random_split

from deepshrink.errors import ConfigError
from deepshrink.experiments.models import build
from deepshrink.experiments.train import logits, train_epochs


def test_distilling_from_cached_logits_trains_as_the_teacher_itself_does():
    split = random_split(300)
    torch.manual_seed(0)
    teacher, student = build("lenet-300-100").eval(), build("lenet-300-100")
    twin = copy.deepcopy(student)
    kw = dict(epochs=2, lr=0.05, optimizer="sgd", seed=3, progress=False, distill=0.5, batch_size=64)
    train_epochs(student, split, teacher=teacher, **kw)
    train_epochs(twin, split, teacher=logits(teacher, split), **kw)
    for a, b in zip(student.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # And the teacher did matter: without it the same steps end elsewhere.
    torch.manual_seed(0)
    alone = build("lenet-300-100")
    train_epochs(alone, split, **(kw | {"distill": 0.0}))
    assert not torch.allclose(next(alone.parameters()), next(twin.parameters()))


def test_teacher_logits_for_another_split_are_refused():
    split = random_split(50)
    with pytest.raises(ConfigError, match="50"):
        train_epochs(build("lenet-300-100"), split, 1, 0.1, teacher=torch.zeros(40, 10), distill=0.5, progress=False)
