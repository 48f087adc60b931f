"""Inference straight from the compressed form: sparse, codebook-indexed Linear and Conv2d.

A layer is held as CSR over its output rows, in one of two layouts:

* packed (codebooks of at most 31 centroids, i.e. layers shared at 5 bits or fewer): one uint16 per
  entry, ``(code << 11) | (column step - 1)``, where code 31 is a zero-valued filler that bridges steps
  longer than 2,048 columns: 2 bytes per surviving weight;
* wide (up to 256 centroids): ``cols`` (uint16 when the input has at most 65,536 features, else
  int32) and ``codes`` (uint8): 3 bytes per surviving weight;

plus ``row_ptr`` and the fp32 codebook, against 4 bytes per weight, surviving or not, for dense fp32.
The forward pass looks each weight up in the codebook as it goes
(the "indirect lookup" the paper names as missing from BLAS libraries), in compiled loops parallel
over output rows. Conv2d uses im2col (``unfold``) and the same kernel: direct sparse convolution
needs a kernel per stride/padding/dilation combination, while im2col reuses one well-tested path,
and LeNet/VGG convolutions are a small share of the compressed bytes anyway.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, UnsupportedLayerError

__all__ = ["CompressedConv2d", "CompressedLinear", "SparseCodebookMatrix"]


class SparseCodebookMatrix:
    """A (rows x cols) matrix stored as CSR with codebook-indexed values."""

    FILLER = 31
    STEP_BITS = 11
    STEP_MASK = (1 << STEP_BITS) - 1

    def __init__(self, shape: tuple[int, int], row_ptr: np.ndarray, cols: np.ndarray, codes: np.ndarray, codebook: np.ndarray):
        self.shape = shape
        self.codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        self.packed: np.ndarray | None = None
        if self.codebook.size <= self.FILLER:
            self.row_ptr, self.packed = _pack(shape, np.asarray(row_ptr, np.int64), np.asarray(cols, np.int64),
                                              np.asarray(codes, np.uint16))
            self.cols = np.zeros(0, np.uint16)
            self.codes = np.zeros(0, np.uint8)
            self.codebook32 = np.zeros(self.FILLER + 1, np.float32)
            self.codebook32[: self.codebook.size] = self.codebook
        else:
            self.row_ptr = np.ascontiguousarray(row_ptr, dtype=np.int64)
            self.cols = np.ascontiguousarray(cols, dtype=np.uint16 if shape[1] <= 65536 else np.int32)
            self.codes = np.ascontiguousarray(codes, dtype=np.uint8)

    @classmethod
    def from_positions(cls, shape: tuple[int, int], positions: np.ndarray, codes: np.ndarray, codebook: np.ndarray) -> SparseCodebookMatrix:
        """From sorted flat row-major positions of the non-zeros and their cluster codes."""
        rows = positions // shape[1]
        row_ptr = np.zeros(shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=row_ptr[1:])
        return cls(shape, row_ptr, positions % shape[1], codes, codebook)

    @classmethod
    def from_dense(cls, weight: Tensor, codebook: np.ndarray | None = None) -> SparseCodebookMatrix:
        """From a dense weight whose non-zero values all appear in ``codebook`` (default: its unique values)."""
        w = weight.detach().reshape(weight.shape[0], -1).float().numpy()
        pos = np.flatnonzero(w)
        vals = w.reshape(-1)[pos]
        cb = np.unique(vals) if codebook is None else np.asarray(codebook, np.float32)
        if cb.size > 256:
            raise ConfigError(f"{cb.size} distinct values; a codebook holds at most 256")
        codes = np.searchsorted(cb, vals)
        return cls.from_positions(w.shape, pos, codes, cb)

    @property
    def nbytes(self) -> int:
        packed = self.packed.nbytes if self.packed is not None else 0
        return self.row_ptr.nbytes + self.cols.nbytes + self.codes.nbytes + self.codebook.nbytes + packed

    def to_dense(self) -> Tensor:
        out = np.zeros(self.shape, np.float32)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.row_ptr))
        if self.packed is None:
            out[rows, self.cols.astype(np.int64)] = self.codebook[self.codes]
            return torch.from_numpy(out)
        steps = (self.packed & self.STEP_MASK).astype(np.int64) + 1
        total = np.cumsum(steps)
        before_row = np.concatenate([[0], total])[self.row_ptr[:-1]]
        cols = total - np.repeat(before_row, np.diff(self.row_ptr)) - 1
        codes = self.packed >> self.STEP_BITS
        real = codes != self.FILLER
        out[rows[real], cols[real]] = self.codebook[codes[real]]
        return torch.from_numpy(out)

    def matmul_t(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ W.T + bias`` for x of shape (batch, cols)."""
        from . import _kernels_jit as k

        xn = x.detach().float().contiguous().numpy()
        b = bias.detach().float().numpy() if bias is not None else np.zeros(self.shape[0], np.float32)
        if xn.shape[0] == 1:
            y = np.empty(self.shape[0], np.float32)
            if self.packed is not None:
                k.spmv_packed(self.row_ptr, self.packed, self.codebook32, xn[0], b, y)
            else:
                k.spmv(self.row_ptr, self.cols, self.codes, self.codebook, xn[0], b, y)
            return torch.from_numpy(y).unsqueeze(0)
        xt = np.ascontiguousarray(xn.T)
        yt = np.empty((self.shape[0], xn.shape[0]), np.float32)
        if self.packed is not None:
            k.spmm_t_packed(self.row_ptr, self.packed, self.codebook32, xt, b, yt)
        else:
            k.spmm_t(self.row_ptr, self.cols, self.codes, self.codebook, xt, b, yt)
        return torch.from_numpy(yt.T.copy())


def _pack(shape: tuple[int, int], row_ptr: np.ndarray, cols: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (row_ptr, cols, codes) -> (row_ptr, uint16 entries) of the packed layout, fillers included."""
    counts = np.diff(row_ptr)
    rows = np.repeat(np.arange(shape[0]), counts)
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    prev[row_ptr[:-1][counts > 0]] = -1
    step = cols - prev
    m = SparseCodebookMatrix
    n_fill = (step - 1) >> m.STEP_BITS
    per_entry = n_fill + 1
    starts = np.cumsum(per_entry) - per_entry
    packed = np.full(int(per_entry.sum()), (m.FILLER << m.STEP_BITS) | m.STEP_MASK, np.uint16)
    packed[starts + n_fill] = (codes << m.STEP_BITS) | (step - 1 - (n_fill << m.STEP_BITS)).astype(np.uint16)
    new_ptr = np.zeros(shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, weights=per_entry, minlength=shape[0]).astype(np.int64), out=new_ptr[1:])
    ptr_dtype = np.int32 if new_ptr[-1] < 2**31 else np.int64
    return new_ptr.astype(ptr_dtype), packed


def supports(module: nn.Module) -> bool:
    """Whether ``module`` can be replaced by a compressed layer in ``load(..., mode="sparse")``."""
    if type(module) is nn.Linear:
        return True
    # Exact types: a subclass may have its own forward, which the replacement would silently drop.
    return (type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


class CompressedLinear(nn.Module):
    """Drop-in inference replacement for ``nn.Linear`` holding a :class:`SparseCodebookMatrix`."""

    bias: Tensor | None

    def __init__(self, matrix: SparseCodebookMatrix, bias: Tensor | None) -> None:
        super().__init__()
        self.matrix = matrix
        self.out_features, self.in_features = matrix.shape
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = self.matrix.matmul_t(x.reshape(-1, self.in_features), self.bias)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bytes={self.matrix.nbytes}"


class CompressedConv2d(nn.Module):
    """Inference replacement for ``nn.Conv2d`` (groups=1): im2col, then the sparse codebook kernel."""

    bias: Tensor | None

    def __init__(self, matrix: SparseCodebookMatrix, bias: Tensor | None, conv: nn.Conv2d) -> None:
        super().__init__()
        if not supports(conv):
            raise UnsupportedLayerError(
                f"CompressedConv2d replaces nn.Conv2d with groups=1 and numeric zero padding, not {conv}; keep it dense"
            )
        self.matrix = matrix
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size: tuple[int, int] = conv.kernel_size  # type: ignore[assignment]
        self.stride: tuple[int, int] = conv.stride  # type: ignore[assignment]
        self.padding: tuple[int, int] = conv.padding  # type: ignore[assignment]
        self.dilation: tuple[int, int] = conv.dilation  # type: ignore[assignment]
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, dilation=self.dilation, padding=self.padding, stride=self.stride)
        kh, kw = self.kernel_size
        oh = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        patches = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        y = self.matrix.matmul_t(patches, self.bias)
        return y.reshape(n, oh * ow, self.out_channels).transpose(1, 2).reshape(n, self.out_channels, oh, ow)
