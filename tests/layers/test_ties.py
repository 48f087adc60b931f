"""Tied weights (one tensor held by several modules) stay tied through every step, in memory and on disk."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.format.reader import read_header


class TinyLM(nn.Module):
    """Token embedding tied to the output projection, as most language models do."""

    def __init__(self, tie: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.body = nn.Linear(16, 16)
        self.head = nn.Linear(16, 50, bias=False)
        if tie:
            self.head.weight = self.emb.weight

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(self.emb(t))))


class SharedLinear(nn.Module):
    """Two registered layers holding one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 12)
        self.b = nn.Linear(12, 12)
        self.b.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


TOKENS = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0))


def _step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def _compressed(seed: int = 0) -> TinyLM:
    torch.manual_seed(seed)
    m = TinyLM()
    ds.prune_(m, ds.PruneConfig(sparsity=0.8))
    _step(m, TOKENS)
    # The tied tensor is compressed once, as its first registered holder, the embedding: embedding bits.
    ds.share_weights_(m, ds.ShareConfig(fc_bits=4, kind_bits={"embedding": 4}))
    _step(m, TOKENS)
    return m


def test_pruning_masks_every_holder_and_survives_training():
    torch.manual_seed(0)
    m = TinyLM()
    ds.prune_(m, ds.PruneConfig(sparsity=0.8))
    _step(m, TOKENS)
    assert torch.equal(m.emb.weight, m.head.weight)
    assert float((m.emb.weight == 0).float().mean()) == pytest.approx(0.8, abs=1 / 800)
    # One trainable tensor for the group: the optimizer sees it once.
    assert sum(p.numel() for p in m.parameters()) == 50 * 16 + 16 * 16 + 16


def test_sharing_gives_the_group_one_codebook():
    m = _compressed()
    assert torch.equal(m.emb.weight, m.head.weight)
    assert m.emb.parametrizations.weight.original is m.head.parametrizations.weight.original
    assert torch.unique(m.emb.weight[m.emb.weight != 0]).numel() <= 15
    assert sum(p.numel() for p in m.parameters()) == 15 + m.body.parametrizations.weight.original.numel() + 16


def test_file_stores_a_tied_tensor_once_and_load_restores_the_tie(tmp_path):
    m = _compressed()
    ds.save(m, tmp_path / "lm.dsz")
    tensors = read_header(tmp_path / "lm.dsz").tensors
    assert [(t.name, t.aliases) for t in tensors if t.aliases] == [("emb.weight", ("head.weight",))]
    assert ds.report(tmp_path / "lm.dsz").dense_bytes == 4 * (50 * 16 + 16 * 16 + 16)
    fresh = ds.load(tmp_path / "lm.dsz", into=TinyLM())
    assert fresh.head.weight is fresh.emb.weight
    m.eval()
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS), m(TOKENS))


def test_tie_mismatch_is_a_clear_error(tmp_path):
    ds.save(_compressed(), tmp_path / "tied.dsz")
    with pytest.raises(ds.ModelMismatchError, match="ties"):
        ds.load(tmp_path / "tied.dsz", into=TinyLM(tie=False))
    untied = TinyLM(tie=False)
    ds.prune_(untied, ds.PruneConfig(sparsity=0.5))
    ds.share_weights_(untied)
    ds.save(untied, tmp_path / "untied.dsz")
    with pytest.raises(ds.ModelMismatchError, match="ties it to 'emb.weight'"):
        ds.load(tmp_path / "untied.dsz", into=TinyLM())


def test_restore_strip_and_deepcopy_keep_the_tie():
    m = _compressed()
    fresh = ds.restore_(TinyLM(), m.state_dict())
    assert fresh.emb.parametrizations.weight.original is fresh.head.parametrizations.weight.original
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS), m(TOKENS))
    clone = copy.deepcopy(m)
    ds.strip_(clone)
    assert clone.head.weight is clone.emb.weight
    with torch.no_grad():
        assert torch.equal(clone(TOKENS), m(TOKENS))
    assert torch.equal(m.emb.weight, m.head.weight)  # the copy's strip left the original intact
    pruned = TinyLM()
    ds.prune_(pruned, ds.PruneConfig(sparsity=0.5))
    again = ds.restore_(TinyLM(), pruned.state_dict())
    assert again.emb.parametrizations.weight.original is again.head.parametrizations.weight.original


def test_two_registered_layers_sharing_a_weight(tmp_path):
    torch.manual_seed(1)
    m = SharedLinear()
    x = torch.randn(5, 12)
    ds.prune_(m, ds.PruneConfig(sparsity=0.6))
    _step(m, x)
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    _step(m, x)
    assert torch.equal(m.a.weight, m.b.weight)
    ds.save(m, tmp_path / "s.dsz")
    fresh = ds.load(tmp_path / "s.dsz", into=SharedLinear())
    assert fresh.a.weight is fresh.b.weight
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    sparse = ds.load(tmp_path / "s.dsz", into=SharedLinear(), mode="sparse")
    assert isinstance(sparse.a, nn.Linear)  # a tied tensor stays dense in sparse mode


def test_config_naming_an_alias_is_refused():
    with pytest.raises(ds.ConfigError, match="tied to 'a'"):
        ds.prune_(SharedLinear(), ds.PruneConfig(layer_sparsity={"b": 0.5}))
