from __future__ import annotations

import numpy as np
import pytest
import torch
from bounds import assert_conv2d_close, assert_linear_close
from torch import nn

import deepshrink as ds
from deepshrink.runtime import _kernels_jit
from deepshrink.runtime.kernels import CompressedConv2d, SparseCodebookMatrix

# Each implementation the machine has: the C inner loops (AVX2 bodies, and the portable ones) where the
# package was built with them, and the numba fallback always.
IMPLEMENTATIONS = (["c-simd", "c-portable"] if _kernels_jit.NATIVE else []) + ["numba"]


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request, monkeypatch):
    native = _kernels_jit.NATIVE
    monkeypatch.setattr(_kernels_jit, "NATIVE", request.param != "numba")
    _kernels_jit.use_simd(request.param == "c-simd")
    yield request.param
    _kernels_jit.use_simd(True)
    assert _kernels_jit.NATIVE == (request.param != "numba") and native is not None


def test_the_c_extension_is_built_where_a_compiler_is():
    """The build is optional (an install without a compiler still works), so a C error would pass silently."""
    import os
    import shutil
    import sysconfig

    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if os.environ.get("DEEPSHRINK_NATIVE", "1") == "0" or shutil.which(compiler) is None:
        pytest.skip("no C compiler here, or the C kernels turned off: the numba ones run")
    assert _kernels_jit.NATIVE, "deepshrink/runtime/_native.c did not build: run `pip install -v -e .` to see why"


@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("shape,density", [((50, 70), 0.1), ((7, 3), 1.0), ((5, 9), 0.0), ((3, 70000), 0.01), ((600, 5000), 0.05)])
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


def test_sparse_mode_rejects_bad_mode(tmp_path):
    m = nn.Sequential(nn.Linear(3, 3))
    ds.save(m, tmp_path / "m.dsz")
    target = nn.Sequential(nn.Linear(3, 3))
    before = target[0].weight.detach().clone()
    with pytest.raises(ds.ConfigError, match="mode"):
        ds.load(tmp_path / "m.dsz", into=target, mode="fast")
    assert torch.equal(target[0].weight, before)  # refused before anything was written


@pytest.mark.parametrize("k", [31, 32, 33, 200])
def test_long_gaps_and_both_layouts(k):
    w = torch.zeros(3, 10_000)
    w[0, [0, 5000, 9999]] = 0.5
    w[2, 7000] = -0.25
    codebook = np.linspace(-1, 1, k).astype(np.float32)
    codebook[np.argmin(np.abs(codebook - 0.5))] = 0.5
    codebook[np.argmin(np.abs(codebook + 0.25))] = -0.25
    m = SparseCodebookMatrix.from_dense(w, codebook)
    assert m.packed == (k <= 32)
    assert m.nbytes == m.ptr.nbytes + m.order.nbytes + 4 * k + 4 * (2 if k <= 32 else 3)  # 2 or 3 bytes per surviving weight
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(2, 10_000)
    assert_linear_close(m.matmul_t(x, None), x, w)
    assert_linear_close(m.matmul_t(x[:1], None), x[:1], w)


@pytest.mark.parametrize("batch", [1, 2, 33, 64])
@pytest.mark.parametrize("layout", ["packed", "bytes", "wide"])
@pytest.mark.parametrize("shape,density", [((40, 300), 0.3), ((9, 5000), 0.02), ((600, 70), 0.9), ((3, 5), 0.0)])
def test_every_layout_and_implementation_matches_dense(implementation, layout, batch, shape, density):
    g = torch.Generator().manual_seed(2)
    k = 31 if layout != "wide" else 200
    codebook = torch.linspace(-1, 1, k)
    w = codebook[torch.randint(0, k, shape, generator=g)] * (torch.rand(shape, generator=g) < density)
    w[0] = 0  # empty rows, first and last
    w[-1] = 0
    m = SparseCodebookMatrix.from_dense(w, codebook.numpy(), layout=layout)
    assert m.layout == layout
    assert torch.equal(m.to_dense(), w)
    x = torch.randn(batch, shape[1], generator=g)
    b = torch.randn(shape[0], generator=g)
    assert_linear_close(m.matmul_t(x, b), x, w, b)


def test_byte_layout_bytes_and_fillers():
    # One byte per surviving weight while gaps are at most 8 columns; each further 8 columns a filler.
    w = torch.zeros(2, 100)
    w[0, [0, 8, 16, 17]] = 1.0  # gaps 1, 8, 8, 1: no filler
    w[1, [9, 99]] = -1.0  # gaps 10 (one filler) and 90 (11 fillers)
    m = SparseCodebookMatrix.from_dense(w, np.array([-1.0, 1.0], np.float32), layout="bytes")
    assert m.bytes.size == 4 + 2 + 1 + 11
    assert m.nbytes == m.bytes.size + m.row_ptr.nbytes + 8
    assert torch.equal(m.to_dense(), w)
    x = torch.arange(100.0).unsqueeze(0)
    assert torch.equal(m.matmul_t(x, None), torch.tensor([[41.0, -108.0]]))


def test_layout_is_chosen_by_bytes_and_checked():
    g = torch.Generator().manual_seed(3)
    codebook = torch.linspace(-1, 1, 31)
    dense = codebook[torch.randint(0, 31, (200, 400), generator=g)] * (torch.rand(200, 400, generator=g) < 0.3)
    assert SparseCodebookMatrix.from_dense(dense, codebook.numpy()).layout == "bytes"
    sparse = dense * (torch.rand(200, 400, generator=g) < 0.1)
    assert SparseCodebookMatrix.from_dense(sparse, codebook.numpy()).layout == "packed"
    with pytest.raises(ds.ConfigError, match="wide"):
        SparseCodebookMatrix.from_dense(dense, np.linspace(-1, 1, 40).astype(np.float32), layout="bytes")
    with pytest.raises(ds.ConfigError, match="layout"):
        SparseCodebookMatrix.from_dense(dense, codebook.numpy(), layout="csr")


@pytest.mark.parametrize("conv", [
    nn.Conv2d(3, 8, 3),
    nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    nn.Conv2d(4, 6, 1, stride=3, bias=False),
    nn.Conv2d(2, 5, 4, stride=2, padding=3, dilation=2),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_compressed_conv_matches_dense_conv(conv, batch):
    g = torch.Generator().manual_seed(3)
    codebook = torch.linspace(-1, 1, 15)
    shape = conv.weight.shape
    w = codebook[torch.randint(0, 15, shape, generator=g)] * (torch.rand(shape, generator=g) < 0.4)
    w[0] = 0  # an output channel with no weights left gives its bias alone
    m = SparseCodebookMatrix.from_dense(w.reshape(shape[0], -1), codebook.numpy())
    bias = None if conv.bias is None else torch.randn(shape[0], generator=g)
    layer = CompressedConv2d(m, bias, conv)
    x = torch.randn(batch, shape[1], 300, 20, generator=g)  # tall: an image takes several bands of at most 4096 outputs
    y = layer(x)
    assert y.shape == conv(x).shape
    assert_conv2d_close(y, x, conv, w, bias)
    assert layer.nbytes == 4 * codebook.numel() + 8 * (shape[0] + 1) + 5 * int((w != 0).sum())
