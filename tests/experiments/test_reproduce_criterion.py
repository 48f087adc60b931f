"""The recipe's decision criterion (the whole run is in tests/integration/test_reproduce.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from splits import random_split

from deepshrink.errors import ConfigError
from deepshrink.experiments.models import build
from deepshrink.experiments.reproduce import RECIPES, _criterion, _fidelity
from deepshrink.experiments.train import evaluate, loss


def test_the_loss_criterion_is_minus_the_loss_over_the_references():
    split, recipe = random_split(200), replace(RECIPES["lenet-300-100"], criterion="loss")
    torch.manual_seed(0)
    reference, blank = build("lenet-300-100"), build("lenet-300-100")
    measure = _criterion(recipe, reference, split)
    assert measure(reference) == -1.0
    for p in blank.parameters():
        torch.nn.init.zeros_(p)  # uniform outputs: a loss of ln 10 whatever the labels
    assert math.isclose(loss(blank, split), math.log(10), rel_tol=1e-6)
    assert math.isclose(measure(blank), -math.log(10) / loss(reference, split), rel_tol=1e-6)
    # The accuracy criterion is the accuracy itself.
    assert _criterion(replace(recipe, criterion="accuracy"), reference, split)(blank) == evaluate(blank, split)
    # The fidelity criterion is the fidelity to the reference, whatever the labels.
    fidelity = _criterion(replace(recipe, criterion="fidelity"), reference, split)
    assert fidelity(blank) == _fidelity(reference, split)(blank) < fidelity(reference)


def test_an_unknown_criterion_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="'accuracy', 'loss' or 'fidelity'"):
        replace(RECIPES["lenet-5"], criterion="error")


def test_an_empty_validation_split_is_refused_naming_the_sizes():
    with pytest.raises(ConfigError, match="val_size is 0"):
        replace(RECIPES["lenet-5"], val_size=0)
    with pytest.raises(ConfigError, match="holdout_size -1"):
        replace(RECIPES["lenet-5"], holdout_size=-1)


def test_the_fidelity_is_minus_one_on_the_reference_and_lower_the_further_the_outputs_move():
    split = random_split(200)
    torch.manual_seed(0)
    reference = build("lenet-300-100")
    measure = _fidelity(reference, split)
    assert math.isclose(measure(reference), -1.0, rel_tol=1e-6)
    near, far = build("lenet-300-100"), build("lenet-300-100")
    near.load_state_dict(reference.state_dict())
    far.load_state_dict(reference.state_dict())
    with torch.no_grad():
        for m, scale in ((near, 0.01), (far, 0.3)):
            for p in m.parameters():
                p.add_(scale * torch.randn_like(p))
    assert -1.0 > measure(near) > measure(far)
    with pytest.raises(ConfigError, match="'fidelity' or None"):
        replace(RECIPES["lenet-5"], share_criterion="kl")
