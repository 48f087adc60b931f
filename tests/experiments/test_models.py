from __future__ import annotations

import pytest
import torch

from deepshrink.experiments.models import build, paper_layer_names


@pytest.mark.parametrize("name,weights", [("lenet-300-100", 266_200), ("lenet-5", 430_500)])
def test_lenet_weight_counts_match_the_paper(name, weights):
    m = build(name)
    assert sum(mod.weight.numel() for mod in m.modules() if isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d))) == weights
    assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("arch,count,params", [("alexnet", 8, 61_100_840), ("vgg16", 16, 138_357_544)])
def test_big_models_have_torchvision_shapes(arch, count, params):
    names = paper_layer_names(arch)
    assert len(names) == count and list(names.values())[-1] == "fc8"
    with torch.device("meta"):
        m = build(arch)
    assert sum(p.numel() for p in m.parameters()) == params
