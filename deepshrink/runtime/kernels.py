"""Inference straight from the compressed form: sparse, codebook-indexed Linear and Conv2d.

A layer is held in one of three layouts, whichever takes fewer bytes:

* **packed** (codebooks of at most 32 centroids, i.e. layers shared at 5 bits or fewer): the columns
  are cut into panels of 2,048, the entries of each (panel, row) pair are contiguous, all of panel 0
  first, with one int32 pointer per (panel, row) and the rows of each block of 512 in the panel ordered
  longest first (an int32 each); an entry is one uint16, ``code << 11 | column within
  the panel``: 2 bytes per surviving weight, no fillers, no running column sum;
* **bytes** (at most 31 centroids, for denser layers, where gaps between survivors are short): per row,
  one byte per entry, ``(gap - 1) << 5 | code``, the column advancing by the gap (1..8); a longer gap
  takes filler bytes (code 31, whose centroid is zero) of 8 columns each: about 1.1 bytes per weight
  at 25% density (a filler multiplies its zero centroid by the input it lands on, so a non-finite input
  spreads to the output as it does in the dense product, which multiplies every zero weight);
* **wide** (up to 256 centroids): panels as for packed, the column within the panel (uint16) and the
  code (uint8): 3 bytes;

plus the pointers and the fp32 codebook, against 4 bytes per weight, surviving or not, for dense fp32.
The forward pass looks each weight up in the codebook as it goes (the "indirect lookup" the paper
names as missing from BLAS libraries), in loops parallel over blocks of rows that keep the input's
panel in cache while every row of the block reads it (``_kernels_jit``: C inner loops where the package
was built with them, numba otherwise). Conv2d is a direct sparse convolution: each weight adds its
strided slice of the input into its output channel (``CompressedConv2d``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..errors import ConfigError, UnsupportedLayerError

__all__ = ["CompressedConv2d", "CompressedLinear", "SparseCodebookMatrix"]

PANEL_BITS = 11
PANEL = 1 << PANEL_BITS
PACKED_MAX_CLUSTERS = 32
ROW_BLOCK = 512  # rows per parallel task in every kernel; a panel's rows are reordered only within one
BYTES_MAX_CLUSTERS = 31  # code 31 is the byte layout's filler
BYTES_WORTH = 0.75
LAYOUTS = ("packed", "bytes", "wide")
_FILLER = 0xFF  # gap 8, code 31


class SparseCodebookMatrix:
    """A (rows x cols) matrix in the panel layout with codebook-indexed values (module docstring)."""

    def __init__(self, shape: tuple[int, int], row_ptr: np.ndarray, cols: np.ndarray, codes: np.ndarray, codebook: np.ndarray,
                 layout: str | None = None):
        """From CSR over the rows (``row_ptr``, column indices ``cols`` sorted within each row, cluster ``codes``) and the codebook.

        ``layout``: "packed", "bytes" or "wide"; by default the byte layout where the codebook allows it
        and it takes at most ``BYTES_WORTH`` of the packed layout's bytes (its fillers cost time as well
        as bytes, so a small saving is not worth them), else packed, else wide.
        """
        if layout not in (None, *LAYOUTS):
            raise ConfigError(f"layout {layout!r}: expected one of {', '.join(LAYOUTS)}")
        k = int(np.asarray(codebook).size)
        most = {"bytes": BYTES_MAX_CLUSTERS, "packed": PACKED_MAX_CLUSTERS}.get(layout or "", 256)
        if k > most:
            raise ConfigError(f"the {layout} layout holds at most {most} centroids, not {k}; use layout='wide'")
        rows, n_cols = int(shape[0]), int(shape[1])
        self.shape = (rows, n_cols)
        self.codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        counts: np.ndarray = np.diff(np.asarray(row_ptr, np.int64))
        cols = np.asarray(cols, np.int64)
        self.entries, self.cols, self.codes = np.zeros(0, np.uint16), np.zeros(0, np.uint16), np.zeros(0, np.uint8)
        self.row_ptr, self.bytes = np.zeros(0, np.int32), np.zeros(0, np.uint8)
        self.ptr, self.order = np.zeros((0, rows + 1), np.int32), np.zeros((0, rows), np.int32)
        self.codebook_padded = np.zeros(max(PACKED_MAX_CLUSTERS, self.codebook.size), np.float32)
        self.codebook_padded[: self.codebook.size] = self.codebook
        n_panels = max(1, -(-n_cols // PANEL))
        if layout in (None, "bytes") and k <= BYTES_MAX_CLUSTERS:
            row_ptr_b, ent = _byte_layout(counts, cols, np.asarray(codes, np.int64))
            packed_bytes = 2 * cols.size + 4 * n_panels * (rows + 1)  # entries and panel pointers, not built unless taken
            if layout == "bytes" or ent.nbytes + row_ptr_b.nbytes <= BYTES_WORTH * packed_bytes:
                self.layout = "bytes"
                self.row_ptr, self.bytes = row_ptr_b, ent
                return
        row_of = np.repeat(np.arange(rows, dtype=np.int64), counts)
        group = (cols >> PANEL_BITS) * rows + row_of  # (panel, row) of each entry
        per = np.bincount(group, minlength=n_panels * rows).reshape(n_panels, rows)
        # Within each block of ROW_BLOCK rows, a panel's rows go longest first: consecutive rows then have
        # (nearly) equal lengths, so the kernels' loop counts repeat and the branch predictor learns them
        # (on random lengths its misses cost about a fifth of the batch-1 time at 4% density).
        block = np.broadcast_to(np.arange(rows) // ROW_BLOCK, (n_panels, rows))
        rows_at = np.lexsort((-per, block), axis=-1)  # stable: ties keep row order
        self.order = rows_at.astype(np.int32)
        ptr = np.zeros((n_panels, rows + 1), np.int64)
        flat = np.cumsum(np.take_along_axis(per, rows_at, axis=1))
        ptr[:, 1:] = flat.reshape(n_panels, rows)
        ptr[1:, 0] = ptr[:-1, -1]
        if flat.size and flat[-1] >= 2**31:
            raise ConfigError(f"a {rows}x{n_cols} layer with {flat[-1]:,} entries is beyond the int32 panel pointers")
        self.ptr = ptr.astype(np.int32)
        # Each (panel, row) run of entries moves as a whole: in the CSR input a row's entries are in column
        # order, so its run in panel p starts after its runs in the earlier panels.
        position = np.empty_like(rows_at)
        np.put_along_axis(position, rows_at, np.broadcast_to(np.arange(rows), (n_panels, rows)), axis=1)
        to_start = np.take_along_axis(ptr[:, :-1], position, axis=1)
        from_start = np.concatenate([[0], np.cumsum(counts)[:-1]])[None, :] + (np.cumsum(per, axis=0) - per)
        dest = np.arange(cols.size) + (to_start - from_start).reshape(-1)[group]
        in_panel = np.empty(cols.size, np.uint16)
        in_panel[dest] = cols & (PANEL - 1)
        sorted_codes = np.empty(cols.size, np.uint8)
        sorted_codes[dest] = codes
        if layout in (None, "packed") and k <= PACKED_MAX_CLUSTERS:
            self.layout = "packed"
            self.entries = ((sorted_codes.astype(np.uint16) << PANEL_BITS) | in_panel).astype(np.uint16)
        else:
            self.layout = "wide"
            self.cols, self.codes = in_panel, sorted_codes.astype(np.uint8)

    @property
    def packed(self) -> bool:
        """Whether entries are one uint16 each (the packed layout)."""
        return self.layout == "packed"

    @classmethod
    def from_positions(cls, shape: tuple[int, int], positions: np.ndarray, codes: np.ndarray, codebook: np.ndarray,
                       layout: str | None = None) -> SparseCodebookMatrix:
        """From sorted flat row-major positions of the non-zeros and their cluster codes."""
        rows = positions // shape[1]
        row_ptr = np.zeros(shape[0] + 1, np.int64)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=row_ptr[1:])
        return cls(shape, row_ptr, positions % shape[1], codes, codebook, layout)

    @classmethod
    def from_dense(cls, weight: Tensor, codebook: np.ndarray | None = None, layout: str | None = None) -> SparseCodebookMatrix:
        """From a dense weight whose non-zero values all appear in ``codebook`` (default: its unique values)."""
        w = weight.detach().reshape(weight.shape[0], -1).float().numpy()
        pos = np.flatnonzero(w)
        vals = w.reshape(-1)[pos]
        cb = np.unique(vals) if codebook is None else np.asarray(codebook, np.float32)
        if cb.size > 256:
            raise ConfigError(f"{cb.size} distinct values; a codebook holds at most 256")
        codes = np.searchsorted(cb, vals)
        return cls.from_positions(w.shape, pos, codes, cb, layout)

    @property
    def nbytes(self) -> int:
        parts = (self.ptr, self.order, self.entries, self.cols, self.codes, self.row_ptr, self.bytes)
        return sum(a.nbytes for a in parts) + self.codebook.nbytes

    def _entries_in_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, column, code) of every surviving weight, in storage order."""
        if self.layout == "bytes":
            rows = self.shape[0]
            per_row: np.ndarray = np.diff(self.row_ptr.astype(np.int64))
            row = np.repeat(np.arange(rows), per_row)
            step = (self.bytes >> 5).astype(np.int64) + 1
            within = np.cumsum(step)
            starts = np.zeros(rows, np.int64)
            ends = self.row_ptr[1:].astype(np.int64)
            has = ends > self.row_ptr[:-1]
            starts[has] = within[self.row_ptr[:-1][has]] - step[self.row_ptr[:-1][has]]
            col = within - 1 - starts[row]
            code = (self.bytes & 31).astype(np.int64)
            real = code != 31
            return row[real], col[real], code[real]
        n_panels = self.ptr.shape[0]
        counts: np.ndarray = np.diff(self.ptr.astype(np.int64), axis=1)
        row = self.order.reshape(-1).astype(np.int64).repeat(counts.reshape(-1))
        panel = np.repeat(np.arange(n_panels), counts.sum(axis=1))
        if self.entries.size:
            in_panel = (self.entries & (PANEL - 1)).astype(np.int64)
            code = (self.entries >> PANEL_BITS).astype(np.int64)
        else:
            in_panel, code = self.cols.astype(np.int64), self.codes.astype(np.int64)
        return row, panel * PANEL + in_panel, code

    def to_dense(self) -> Tensor:
        out = np.zeros(self.shape, np.float32)
        row, col, code = self._entries_in_order()
        out[row, col] = self.codebook[code]
        return torch.from_numpy(out)

    def matmul_t(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """``x @ W.T + bias`` for x of shape (batch, cols)."""
        from . import _kernels_jit as k

        xn = x.detach().float().contiguous().numpy()
        b = bias.detach().float().numpy() if bias is not None else np.zeros(self.shape[0], np.float32)
        native = k.NATIVE
        if self.layout == "bytes":
            if xn.shape[0] == 1:
                y = np.empty(self.shape[0], np.float32)
                (k.spmv_bytes_native if native else k.spmv_bytes)(self.row_ptr, self.bytes, self.codebook_padded, xn[0], b, y)
                return torch.from_numpy(y).unsqueeze(0)
            out = np.empty((xn.shape[0], self.shape[0]), np.float32)
            (k.spmm_bytes_native if native else k.spmm_bytes)(self.row_ptr, self.bytes, self.codebook_padded, xn, b, out)
            return torch.from_numpy(out)
        if xn.shape[0] == 1:
            y = np.empty(self.shape[0], np.float32)
            spmv = k.spmv_native if native else k.spmv
            spmv(self.ptr, self.order, self.entries, self.cols, self.codes, self.codebook_padded, xn[0], b, y)
            return torch.from_numpy(y).unsqueeze(0)
        if native:
            out = np.empty((xn.shape[0], self.shape[0]), np.float32)
            k.spmm_native(self.ptr, self.order, self.entries, self.cols, self.codes, self.codebook_padded, xn, b, out)
            return torch.from_numpy(out)
        xt = np.ascontiguousarray(xn.T)
        yt = np.empty((self.shape[0], xn.shape[0]), np.float32)
        k.spmm_t(self.ptr, self.order, self.entries, self.cols, self.codes, self.codebook_padded, xt, b, yt)
        return torch.from_numpy(yt.T.copy())

def _byte_layout(counts: np.ndarray, cols: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row pointers and bytes of the byte layout, from CSR (entries per row, columns sorted within rows, codes)."""
    rows = counts.size
    starts = np.zeros(rows + 1, np.int64)
    np.cumsum(counts, out=starts[1:])
    prev = np.empty_like(cols)
    prev[1:] = cols[:-1]
    first = starts[:-1][counts > 0]
    prev[first] = -1  # every row's column starts at -1
    gap = cols - prev
    fillers = (gap - 1) >> 3
    last = gap - 8 * fillers  # 1..8
    at = np.arange(cols.size) + np.cumsum(fillers)  # where each surviving weight's byte goes
    ent = np.full(cols.size + int(fillers.sum()), _FILLER, np.uint8)
    ent[at] = ((last - 1) << 5 | codes).astype(np.uint8)
    row_of = np.repeat(np.arange(rows), counts)
    per_row = np.bincount(row_of, weights=fillers, minlength=rows).astype(np.int64) + counts
    row_ptr = np.zeros(rows + 1, np.int64)
    np.cumsum(per_row, out=row_ptr[1:])
    if row_ptr[-1] >= 2**31:
        raise ConfigError(f"a layer with {row_ptr[-1]:,} bytes of entries is beyond the int32 row pointers")
    return row_ptr.astype(np.int32), ent


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

    @property
    def nbytes(self) -> int:
        """Bytes held: the matrix's layout."""
        return self.matrix.nbytes

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bytes={self.nbytes}"


class CompressedConv2d(nn.Module):
    """Inference replacement for ``nn.Conv2d`` (groups=1): a direct sparse convolution, each weight one multiply-add over the output.

    A convolution's matrix is small and its "batch" (every output position of every image) large, the opposite of
    an fc layer: im2col and the panel kernels would unfold the input (at batch 64 that alone cost more than dense
    conv2d on LeNet-5), cut the patches into chunks and transpose twice. So the weights are held output channel by
    output channel instead (a column and a code per weight: 8 bytes per channel plus 5 per weight, and the codebook)
    and each adds its strided slice of the input into the output (``conv_direct``; any stride, dilation, padding).
    """

    bias: Tensor | None

    def __init__(self, matrix: SparseCodebookMatrix, bias: Tensor | None, conv: nn.Conv2d) -> None:
        super().__init__()
        if not supports(conv):
            raise UnsupportedLayerError(
                f"CompressedConv2d replaces nn.Conv2d with groups=1 and numeric zero padding, not {conv}; keep it dense"
            )
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size: tuple[int, int] = conv.kernel_size  # type: ignore[assignment]
        self.stride: tuple[int, int] = conv.stride  # type: ignore[assignment]
        self.padding: tuple[int, int] = conv.padding  # type: ignore[assignment]
        self.dilation: tuple[int, int] = conv.dilation  # type: ignore[assignment]
        self.register_buffer("bias", None if bias is None else bias.detach().clone().float())
        row, col, code = matrix._entries_in_order()
        by_row = np.lexsort((col, row))
        self._row_ptr = np.zeros(matrix.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(row, minlength=matrix.shape[0]), out=self._row_ptr[1:])
        self._cols = col[by_row].astype(np.int32)
        self._codes = code[by_row].astype(np.uint8)
        self._codebook = matrix.codebook

    @property
    def nbytes(self) -> int:
        """Bytes held: the entries channel by channel and the codebook."""
        return self._row_ptr.nbytes + self._cols.nbytes + self._codes.nbytes + self._codebook.nbytes

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bytes={self.nbytes}")

    def forward(self, x: Tensor) -> Tensor:
        from . import _kernels_jit as k

        ph, pw = self.padding
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        n, _, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        oh, ow = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
        b = self.bias.numpy() if self.bias is not None else np.zeros(self.out_channels, np.float32)
        y = np.empty((n, self.out_channels, oh, ow), np.float32)
        k.conv_direct(self._row_ptr, self._cols, self._codes, self._codebook,
                      x.detach().float().contiguous().numpy(), b, y, kh, kw, sh, sw, dh, dw)
        return torch.from_numpy(y)
