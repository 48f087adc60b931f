from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.transforms.pruning import PruningMask


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))


def test_per_layer_targets_are_met():
    m = _mlp()
    dens = ds.prune_(m, ds.PruneConfig(sparsity=0.5, layer_sparsity={"2": 0.9}))
    assert dens["0"] == pytest.approx(0.5, abs=1 / 600)
    assert dens["2"] == pytest.approx(0.1, abs=1 / 150)
    assert float((m[0].weight == 0).float().mean()) == pytest.approx(0.5, abs=1 / 600)


def test_pruned_smallest_magnitudes():
    m = _mlp()
    before = m[0].weight.detach().abs().clone()
    ds.prune_(m, ds.PruneConfig(sparsity=0.7))
    kept = m[0].weight.detach() != 0
    assert before[kept].min() > before[~kept].max()


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2),
    ],
)
def test_pruned_weights_stay_zero_through_training(make_opt):
    m = _mlp()
    opt = make_opt(m.parameters())  # made before pruning: the same parameter objects keep working
    x, y = torch.randn(64, 20), torch.randint(0, 5, (64,))
    for _ in range(3):  # momentum / Adam state exists before pruning
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    ds.prune_(m, ds.PruneConfig(sparsity=0.8))
    mask = m[0].weight.detach() == 0
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    assert (m[0].weight.detach()[mask] == 0).all()
    assert (m[0].weight.detach()[~mask] != 0).all()


def test_iterative_pruning_never_revives():
    m = _mlp()
    target = ds.PruneConfig(sparsity=0.9)
    schedule = ds.sparsity_schedule(target, 3)
    assert schedule[-1].sparsity == pytest.approx(0.9)
    assert [s.sparsity for s in schedule] == sorted(s.sparsity for s in schedule)
    prev = None
    for step in schedule:
        ds.prune_(m, step)
        zero = m[0].weight.detach() == 0
        if prev is not None:
            assert zero[prev].all()
        prev = zero
        with torch.no_grad():  # simulate retraining moving surviving weights
            m[0].parametrizations.weight.original.add_(torch.randn_like(m[0].weight) * 0.1)
    assert ds.density(m)["0"] == pytest.approx(0.1, abs=0.01)


def test_std_factor_rule():
    m = _mlp()
    w = m[0].weight.detach().clone()
    ds.prune_(m, ds.PruneConfig(std_factor=0.5))
    expected = w.abs() >= 0.5 * w.std()
    assert torch.equal(m[0].weight.detach() != 0, expected)


def test_filter_fn_and_unsupported_layer():
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    dens = ds.prune_(m, ds.PruneConfig(sparsity=0.5), filter_fn=lambda mod, name: name == "2")
    assert list(dens) == ["2"]
    with pytest.raises(ds.UnsupportedLayerError, match="LayerNorm.*supported types: .*Linear"):
        ds.prune_(m, ds.PruneConfig(layer_sparsity={"1": 0.5}))
    with pytest.raises(ds.ConfigError, match="'nope'"):
        ds.prune_(m, ds.PruneConfig(layer_sparsity={"nope": 0.5}))


@pytest.mark.parametrize("kwargs", [{}, {"sparsity": 1.5}, {"std_factor": -1.0}, {"sparsity": 0.5, "std_factor": 1.0}])
def test_config_validation(kwargs):
    with pytest.raises(ds.ConfigError):
        ds.PruneConfig(**kwargs)


def test_config_round_trip():
    cfg = ds.PruneConfig(sparsity=0.3, layer_sparsity={"a": 0.9})
    assert ds.PruneConfig.from_dict(cfg.to_dict()) == cfg


def test_state_dict_deepcopy_and_restore():
    m = _mlp()
    ds.prune_(m, ds.PruneConfig(sparsity=0.6))
    clone = copy.deepcopy(m)
    assert torch.equal(clone[0].weight, m[0].weight)
    fresh = _mlp()
    ds.restore_(fresh, m.state_dict())
    assert isinstance(fresh[0].parametrizations.weight[0], PruningMask)
    assert torch.equal(fresh[0].weight, m[0].weight)


def test_register_layer_makes_a_custom_module_compressible(tmp_path):
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(50))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.weight

    m = nn.Sequential(Scale())
    with pytest.raises(ds.UnsupportedLayerError, match="Scale"):
        ds.prune_(m, ds.PruneConfig(layer_sparsity={"0": 0.5}))
    ds.register_layer(Scale, param="weight", kind="fc")
    try:
        assert "Scale" in ds.supported_types()
        ds.prune_(m, ds.PruneConfig(layer_sparsity={"0": 0.5}))
        ds.share_weights_(m, ds.ShareConfig(fc_bits=2))
        ds.save(m, tmp_path / "s.dsz")
        fresh = nn.Sequential(Scale())
        ds.load(tmp_path / "s.dsz", into=fresh)
        assert torch.equal(fresh[0].weight, m[0].weight) and int((fresh[0].weight == 0).sum()) == 25
    finally:
        from deepshrink.layers.registry import _REGISTRY

        _REGISTRY.pop(Scale)
