from __future__ import annotations

import numpy as np
import pytest
import torch
from bounds import assert_conv2d_close, assert_linear_close
from torch import nn

import deepshrink as ds
from deepshrink.experiments.models import LeNet5
from deepshrink.runtime.kernels import CompressedConv2d, CompressedLinear, SparseCodebookMatrix


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
    y = m.matmul_t(x, b)
    assert_linear_close(y, x, w, b)
    assert_linear_close(x @ w.T + b, x, w, b)  # torch's own fp32 result obeys the same bound


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_matrix_is_exact_on_integer_values(batch):
    # Small integers: every product and partial sum is an integer below 2**24, so any summation order
    # gives the exact result and the comparison needs no tolerance at all.
    g = torch.Generator().manual_seed(1)
    shape = (40, 3000)
    codebook = torch.arange(-7, 8, dtype=torch.float32)
    w = codebook[torch.randint(0, 15, shape, generator=g)] * (torch.rand(shape, generator=g) < 0.2)
    m = SparseCodebookMatrix.from_dense(w, codebook.numpy())
    x = torch.randint(-8, 9, (batch, shape[1]), generator=g).float()
    b = torch.randint(-100, 100, (shape[0],), generator=g).float()
    exact = (x.double() @ w.double().T + b.double()).float()
    assert torch.equal(m.matmul_t(x, b), exact)


def _compressed_lenet5(tmp_path, small_fashion):
    torch.manual_seed(0)
    model = LeNet5()
    from deepshrink.experiments.train import train_epochs

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
    x = small_fashion.test.images
    # Each compressed layer, fed what it was fed in the sparse model, matches its dense float64 reference.
    seen: list[str] = []

    def check(name: str):
        def hook(mod, inputs, out):
            ref = dict(dense.named_modules())[name]
            if isinstance(mod, CompressedConv2d):
                assert_conv2d_close(out, inputs[0], ref, ref.weight, ref.bias)
            else:
                assert_linear_close(out, inputs[0], ref.weight, ref.bias)
            seen.append(name)
        return hook

    for name, mod in sparse.named_modules():
        if isinstance(mod, (CompressedLinear, CompressedConv2d)):
            mod.register_forward_hook(check(name))
    with torch.no_grad():
        yd, ys = dense(x), sparse(x)
    assert sorted(seen) == ["conv1", "conv2", "ip1", "ip2"]
    # End to end, predictions may differ only where the dense top-2 margin is within the logit difference.
    d = float((ys - yd).abs().max())
    top2 = yd.topk(2, dim=1).values
    differs = ys.argmax(1) != yd.argmax(1)
    assert bool((top2[differs, 0] - top2[differs, 1] <= 2 * d).all())
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
    assert_linear_close(m.matmul_t(x, None), x, w)
    assert_linear_close(m.matmul_t(x[:1], None), x[:1], w)
