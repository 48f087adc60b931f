"""The reproduction's training loop: distillation from a teacher module or from its logits, computed once."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from splits import random_split

from deepshrink.errors import ConfigError
from deepshrink.experiments.models import build
from deepshrink.experiments.train import correct, evaluate, logits, paired_drop, train_epochs


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


def test_paired_drop_counts_the_images_the_two_judge_differently():
    before = torch.tensor([True, True, False, False, True])
    after = torch.tensor([True, False, True, False, False])
    p = paired_drop(before, after)
    # Two lost (images 1 and 4), one gained: a fifth of the images net, and the disagreements carry the error.
    assert p["discordant"] == 3 and p["drop_points"] == pytest.approx(20.0)
    assert p["se_points"] == pytest.approx(100 * ((3 / 5 - 0.2**2) / 5) ** 0.5)
    assert paired_drop(before, before) == {"drop_points": 0.0, "se_points": 0.0, "discordant": 0}


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=200))
def test_paired_drop_is_the_mean_and_standard_error_of_the_per_image_differences(pairs):
    before, after = (torch.tensor([p[i] for p in pairs]) for i in (0, 1))
    diff = before.double() - after.double()
    p = paired_drop(before, after)
    assert p["drop_points"] == pytest.approx(100 * float(diff.mean()), abs=1e-9)
    assert p["se_points"] == pytest.approx(100 * float(diff.std(correction=0)) / len(pairs) ** 0.5, abs=1e-9)


def test_correct_is_what_evaluate_counts():
    split = random_split(250)
    torch.manual_seed(1)
    model = build("lenet-300-100")
    right = correct(model, split, batch_size=64)
    assert right.shape == (250,) and right.dtype == torch.bool
    assert evaluate(model, split) == int(right.sum()) / 250
    assert torch.equal(right, model(split.images).argmax(1) == split.labels)
