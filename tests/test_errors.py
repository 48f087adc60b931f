"""Each bad input raises its documented DeepShrinkError subclass; no builtin error escapes the public API."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import deepshrink as ds
from deepshrink.compressed import CompressedTensor
from deepshrink.experiments.data import load_mnist_format
from deepshrink.experiments.models import build
from deepshrink.runtime.kernels import CompressedConv2d, SparseCodebookMatrix


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_config_errors():
    with pytest.raises(ds.ConfigError, match="sparsity"):
        ds.PruneConfig(sparsity=1.5)
    with pytest.raises(ds.ConfigError, match="bits"):
        ds.ShareConfig(fc_bits=9)
    with pytest.raises(ds.ConfigError, match="layer 'nope'"):
        ds.prune_(_mlp(), ds.PruneConfig(layer_sparsity={"nope": 0.5}))
    with pytest.raises(ds.ConfigError, match="unknown model"):
        build("resnet-1000")
    with pytest.raises(ds.ConfigError, match="exactly one"):
        CompressedTensor("x", (1,), "float32")
    with pytest.raises(ds.ConfigError, match="at most 256"):
        SparseCodebookMatrix.from_dense(torch.arange(300, dtype=torch.float32).reshape(3, 100))
    with pytest.raises(ds.ConfigError, match="no 'train-images"):
        load_mnist_format("/nonexistent")


def test_unsupported_layers():
    with pytest.raises(ds.UnsupportedLayerError, match="ReLU"):
        ds.prune_(_mlp(), ds.PruneConfig(layer_sparsity={"1": 0.5}))
    with pytest.raises(ds.UnsupportedLayerError, match="groups=1"):
        CompressedConv2d(SparseCodebookMatrix.from_dense(torch.zeros(4, 2)), None, nn.Conv2d(4, 4, 1, groups=2))


@pytest.mark.parametrize("where", ["share", "save"])
def test_nan_weights_are_an_invalid_model(tmp_path, where):
    m = _mlp()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan") if where == "share" else 0.0
        m[2].bias[0] = float("nan") if where == "save" else 0.0
    with pytest.raises(ds.InvalidModelError, match="NaN"):
        if where == "share":
            ds.share_weights_(m)
        else:
            ds.save(m, tmp_path / "m.dsz")


def test_foreign_parametrization_is_an_invalid_model():
    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    m = _mlp()
    parametrize.register_parametrization(m[0], "weight", Double())
    with pytest.raises(ds.InvalidModelError, match="did not install"):
        ds.share_weights_(m)


def test_mismatches(tmp_path):
    m = _mlp()
    ds.prune_(m, ds.PruneConfig(sparsity=0.5))
    ds.share_weights_(m)
    ds.save(m, tmp_path / "m.dsz")
    with pytest.raises(ds.ModelMismatchError, match="file has float32"):
        ds.load(tmp_path / "m.dsz", into=nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)))
    with pytest.raises(ds.ModelMismatchError, match="parametrized"):
        ds.load(tmp_path / "m.dsz", into=m)
    with pytest.raises(ds.ModelMismatchError, match="same architecture"):
        ds.restore_(nn.Sequential(nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 3)), m.state_dict())
    with pytest.raises(ds.FormatError, match="cannot read"):
        ds.load(tmp_path / "missing.dsz", into=_mlp())


def test_missing_optional_dependency(monkeypatch, tmp_path):
    from deepshrink.reporting.plot import plot_report

    m = _mlp()
    ds.save(m, tmp_path / "m.dsz")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ds.MissingDependencyError, match=r"pip install 'deepshrink\[plot\]'"):
        plot_report(ds.report(tmp_path / "m.dsz"), tmp_path / "m.png")
