from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.kernels import CompressedConv2d, CompressedLinear, SparseCodebookMatrix
from deepshrink.models import LeNet5
from deepshrink.train import evaluate


@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("shape,density", [((50, 70), 0.1), ((7, 3), 1.0), ((5, 9), 0.0), ((3, 70000), 0.01)])
def test_matrix_matches_dense(batch, shape, density):
    g = torch.Generator().manual_seed(0)
    codebook = torch.linspace(-1, 1, 15)
    codes = torch.randint(0, 15, shape, generator=g)
    w = codebook[codes] * (torch.rand(shape, generator=g) < density)
    m = SparseCodebookMatrix.from_dense(w, codebook.numpy())
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(batch, shape[1], generator=g)
    b = torch.randn(shape[0], generator=g)
    assert torch.allclose(m.matmul_t(x, b), x @ w.T + b, rtol=1e-5, atol=1e-5)


def _compressed_lenet5(tmp_path, small_fashion):
    torch.manual_seed(0)
    model = LeNet5()
    from deepshrink.train import train_epochs

    train_epochs(model, small_fashion.train, 1, 1e-3, progress=False)
    ds.prune_(model, ds.PruneConfig(layer_sparsity={"conv1": 0.3, "conv2": 0.8, "ip1": 0.92, "ip2": 0.8}))
    ds.share_weights_(model)
    ds.save(model, tmp_path / "l5.dsz")
    return model


def test_sparse_mode_lenet5_same_accuracy(tmp_path, small_fashion):
    _compressed_lenet5(tmp_path, small_fashion)
    dense = ds.load(tmp_path / "l5.dsz", into=LeNet5())
    sparse = ds.load(tmp_path / "l5.dsz", into=LeNet5(), mode="sparse")
    assert isinstance(sparse.ip1, CompressedLinear) and isinstance(sparse.conv2, CompressedConv2d)
    x = small_fashion.test.images[:50]
    with torch.no_grad():
        yd, ys = dense(x), sparse(x)
    assert torch.allclose(ys, yd, rtol=1e-5, atol=1e-5 * float(yd.abs().max()))
    assert evaluate(sparse, small_fashion.test) == evaluate(dense, small_fashion.test)
    held = sum(m.matrix.nbytes for m in sparse.modules() if isinstance(m, (CompressedLinear, CompressedConv2d)))
    assert held < 431_080 * 4 / 8


def test_sparse_mode_rejects_bad_mode(tmp_path):
    m = nn.Sequential(nn.Linear(3, 3))
    ds.save(m, tmp_path / "m.dsz")
    with pytest.raises(ds.ConfigError, match="mode"):
        ds.load(tmp_path / "m.dsz", into=m, mode="fast")
    assert np.isfinite(m[0].weight.detach().numpy()).all()


@pytest.mark.parametrize("k", [31, 200])
def test_long_gaps_use_fillers_in_the_packed_layout(k):
    w = torch.zeros(3, 10_000)
    w[0, [0, 5000, 9999]] = 0.5
    w[2, 7000] = -0.25
    codebook = np.linspace(-1, 1, k).astype(np.float32)
    codebook[np.argmin(np.abs(codebook - 0.5))] = 0.5
    codebook[np.argmin(np.abs(codebook + 0.25))] = -0.25
    m = SparseCodebookMatrix.from_dense(w, codebook)
    assert (m.packed is not None) == (k <= 31)
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(2, 10_000)
    assert torch.allclose(m.matmul_t(x, None), x @ w.T, atol=1e-5)
    assert torch.allclose(m.matmul_t(x[:1], None), x[:1] @ w.T, atol=1e-5)
