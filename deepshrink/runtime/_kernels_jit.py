"""Compiled sparse, codebook-indexed matrix kernels over the panel layout (parallel over row blocks).

Layout (see ``kernels.py``): columns in panels of ``PANEL`` = 2048; the entries of panel ``p``, position ``r``
(row ``order[p, r]``; positions permute rows only within blocks of ``ROW_BLOCK``, the unit of every parallel loop)
are ``entries[ptr[p, r]:ptr[p, r + 1]]``, all of panel 0 first. An entry is ``code << 11 | column in
panel`` (uint16) when the codebook has at most 32 centroids; otherwise the column in panel (uint16)
and the code (uint8) sit in two arrays. A panel of x (8 KB at batch 1, 256 KB as 32 inputs at batch
64) stays in cache while every row of a block reads it.

Two implementations of the inner loops: C (``_native.c``, built with the package where a compiler is
available; AVX2, FMA and BMI where the CPU has them) called from numba's parallel loops by symbol, and pure numba, the
fallback (``DEEPSHRINK_NATIVE=0`` forces it). ``NATIVE`` says which one runs. Every index the numba
loops compute is unsigned, so numba emits no negative-index wraparound.

No fastmath: the sums are written out with eight accumulators by hand (LLVM may not reassociate
them itself, and on one machine letting it do so produced gathers that ran slower than scalar loads).
"""

from __future__ import annotations

import ctypes
import logging
import os
from typing import Any

import numpy as np
from numba import njit, prange, types

from .kernels import ROW_BLOCK

PANEL_BITS = 11
PANEL = 1 << PANEL_BITS
COL_MASK = PANEL - 1
CHUNK = 32
COL_BLOCK = 256  # columns per task when x is cut into chunks

_log = logging.getLogger(__name__)

# The C functions by name. Pointers are passed as intp (numba has no pointer from an array in
# nopython mode but ``arr.ctypes.data``): the same register on every 64-bit ABI numba supports.
_P, _I = types.intp, types.int64
_SIGNATURES = {
    "ds_spmv_packed": (_P, _P, _I, _I, _P, _P, _P, _P, _P, _I, _I),
    "ds_spmv_wide": (_P, _P, _I, _I, _P, _P, _P, _P, _P, _P, _I, _I),
    "ds_chunk_x": (_P, _I, _I, _P, _I, _I, _I),
    "ds_spmm_packed": (_P, _P, _I, _I, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _P),
    "ds_spmm_wide": (_P, _P, _I, _I, _P, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _P),
    "ds_spmv_bytes": (_P, _P, _P, _P, _P, _P, _I, _I),
    "ds_spmm_bytes": (_P, _P, _P, _P, _I, _P, _P, _I, _I, _I, _I, _I, _P, _P),
    "ds_use_simd": (_I,),
}


def _load_native() -> ctypes.CDLL | None:
    """The C library, its functions' addresses registered with LLVM so that compiled (and cached) code can call them."""
    if os.environ.get("DEEPSHRINK_NATIVE", "1") == "0":
        return None
    try:
        from . import _native  # type: ignore[attr-defined]
    except ImportError:
        _log.info("deepshrink.runtime._native is not built; the sparse kernels run their numba versions")
        return None
    import llvmlite.binding as llvm

    lib = ctypes.CDLL(_native.__file__)
    for name in _SIGNATURES:
        llvm.add_symbol(name, ctypes.cast(getattr(lib, name), ctypes.c_void_p).value)
    return lib


_LIB = _load_native()
NATIVE = _LIB is not None
_spmv_packed_c = types.ExternalFunction("ds_spmv_packed", types.void(*_SIGNATURES["ds_spmv_packed"]))
_spmv_wide_c = types.ExternalFunction("ds_spmv_wide", types.void(*_SIGNATURES["ds_spmv_wide"]))
_chunk_x_c = types.ExternalFunction("ds_chunk_x", types.void(*_SIGNATURES["ds_chunk_x"]))
_spmm_packed_c = types.ExternalFunction("ds_spmm_packed", types.void(*_SIGNATURES["ds_spmm_packed"]))
_spmm_wide_c = types.ExternalFunction("ds_spmm_wide", types.void(*_SIGNATURES["ds_spmm_wide"]))
_spmv_bytes_c = types.ExternalFunction("ds_spmv_bytes", types.void(*_SIGNATURES["ds_spmv_bytes"]))
_spmm_bytes_c = types.ExternalFunction("ds_spmm_bytes", types.void(*_SIGNATURES["ds_spmm_bytes"]))


def _c_function(name: str) -> Any:
    fn = getattr(_LIB, name)
    fn.argtypes, fn.restype = [ctypes.c_int64] * len(_SIGNATURES.get(name, ())), ctypes.c_int64
    return fn


def use_simd(on: bool) -> None:
    """Turn the C kernels' AVX2 bodies off (tests of the portable ones) or back on where the CPU has them."""
    if _LIB is not None:
        _c_function("ds_use_simd")(int(on))


def implementation() -> str:
    """Which inner loops run: "C, AVX2+FMA+BMI", "C, portable" or "numba"."""
    if not NATIVE:
        return "numba"
    return "C, AVX2+FMA+BMI" if _c_function("ds_simd")() else "C, portable"


@njit(cache=True, nogil=True)
def _aligned_empty(n):
    """``np.empty(n, float32)`` starting on a 64-byte boundary: numpy aligns to 16 or 32 only, and a 128-byte row of a
    chunk that straddles three cache lines instead of two cost a third of the batch-64 kernels' time."""
    buf = np.empty(n + 16, np.float32)
    off = ((64 - buf.ctypes.data % 64) % 64) // 4
    return buf[off:off + n]


@njit(cache=True, nogil=True)
def _chunked(x, n_chunks):
    """x (batch, cols) cut into ``n_chunks`` chunks of ``CHUNK`` inputs, each column's values contiguous, zero past the batch."""
    batch, n_cols = x.shape
    xc = _aligned_empty(n_chunks * n_cols * CHUNK).reshape((n_chunks, n_cols, CHUNK))
    xc[:] = 0.0
    for t in range(batch):
        k, lane = t // CHUNK, t % CHUNK
        for col in range(n_cols):
            xc[k, col, lane] = x[t, col]
    return xc


@njit(parallel=True, cache=True, nogil=True)
def _chunked_native(x, n_chunks):
    """``_chunked`` by the C loop, over blocks of columns in parallel (only when ``NATIVE``)."""
    batch, n_cols = x.shape
    xc = _aligned_empty(n_chunks * n_cols * CHUNK).reshape((n_chunks, n_cols, CHUNK))
    n_col_blocks = (n_cols + COL_BLOCK - 1) // COL_BLOCK
    for task in prange(n_chunks * n_col_blocks):
        k, c0 = task // n_col_blocks, (task % n_col_blocks) * COL_BLOCK
        _chunk_x_c(x.ctypes.data, batch, n_cols, xc.ctypes.data, k, c0, min(n_cols, c0 + COL_BLOCK))
    return xc


@njit(parallel=True, cache=True, nogil=True)
def spmv_native(ptr, order, entries, cols, codes, cb, x, bias, y):
    """``spmv`` with the C inner loop (only when ``NATIVE``)."""
    n_panels, rows1 = ptr.shape
    rows = rows1 - 1
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    packed = entries.size > 0
    for b in prange(n_blocks):
        r0 = b * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        if packed:
            _spmv_packed_c(ptr.ctypes.data, order.ctypes.data, n_panels, rows, entries.ctypes.data, cb.ctypes.data, x.ctypes.data,
                           bias.ctypes.data, y.ctypes.data, r0, r1)
        else:
            _spmv_wide_c(ptr.ctypes.data, order.ctypes.data, n_panels, rows, cols.ctypes.data, codes.ctypes.data, cb.ctypes.data,
                         x.ctypes.data, bias.ctypes.data, y.ctypes.data, r0, r1)


@njit(parallel=True, cache=True, nogil=True)
def spmm_native(ptr, order, entries, cols, codes, cb, x, bias, y):
    """y = x W^T + bias for ``x`` (batch, cols) and ``y`` (batch, rows), both contiguous, with the C inner loops.

    x is first cut into chunks of ``CHUNK`` inputs, each column's 32 values contiguous (so one entry's
    update reads 128 contiguous bytes); then every (row block, chunk) pair is a task.
    """
    n_panels, rows1 = ptr.shape
    rows = rows1 - 1
    batch, n_cols = x.shape
    n_chunks = (batch + CHUNK - 1) // CHUNK
    xc = _chunked_native(x, n_chunks)
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    packed = entries.size > 0
    for task in prange(n_blocks * n_chunks):
        b, k = task // n_chunks, task % n_chunks
        r0 = b * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        a = _aligned_empty((r1 - r0) * CHUNK)  # the block's sums: one allocation per task, not per row
        if packed:
            _spmm_packed_c(ptr.ctypes.data, order.ctypes.data, n_panels, rows, entries.ctypes.data, cb.ctypes.data, xc.ctypes.data, n_cols,
                           bias.ctypes.data, y.ctypes.data, r0, r1, k, batch, a.ctypes.data)
        else:
            _spmm_wide_c(ptr.ctypes.data, order.ctypes.data, n_panels, rows, cols.ctypes.data, codes.ctypes.data, cb.ctypes.data,
                         xc.ctypes.data, n_cols, bias.ctypes.data, y.ctypes.data, r0, r1, k, batch, a.ctypes.data)


@njit(cache=True, nogil=True, inline="always")
def _dot_packed(entries, lo, hi, cb, x, base):
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
    j = lo
    m = np.uint64(COL_MASK)
    s = np.uint64(PANEL_BITS)
    while j + 8 <= hi:
        v0 = np.uint64(entries[j])
        v1 = np.uint64(entries[j + 1])
        v2 = np.uint64(entries[j + 2])
        v3 = np.uint64(entries[j + 3])
        v4 = np.uint64(entries[j + 4])
        v5 = np.uint64(entries[j + 5])
        v6 = np.uint64(entries[j + 6])
        v7 = np.uint64(entries[j + 7])
        a0 += cb[v0 >> s] * x[base + (v0 & m)]
        a1 += cb[v1 >> s] * x[base + (v1 & m)]
        a2 += cb[v2 >> s] * x[base + (v2 & m)]
        a3 += cb[v3 >> s] * x[base + (v3 & m)]
        a4 += cb[v4 >> s] * x[base + (v4 & m)]
        a5 += cb[v5 >> s] * x[base + (v5 & m)]
        a6 += cb[v6 >> s] * x[base + (v6 & m)]
        a7 += cb[v7 >> s] * x[base + (v7 & m)]
        j += 8
    while j < hi:
        v = np.uint64(entries[j])
        a0 += cb[v >> s] * x[base + (v & m)]
        j += 1
    return ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))


@njit(cache=True, nogil=True, inline="always")
def _dot_wide(cols, codes, lo, hi, cb, x, base):
    a0 = a1 = a2 = a3 = np.float32(0.0)
    j = lo
    while j + 4 <= hi:
        a0 += cb[np.uint64(codes[j])] * x[base + np.uint64(cols[j])]
        a1 += cb[np.uint64(codes[j + 1])] * x[base + np.uint64(cols[j + 1])]
        a2 += cb[np.uint64(codes[j + 2])] * x[base + np.uint64(cols[j + 2])]
        a3 += cb[np.uint64(codes[j + 3])] * x[base + np.uint64(cols[j + 3])]
        j += 4
    while j < hi:
        a0 += cb[np.uint64(codes[j])] * x[base + np.uint64(cols[j])]
        j += 1
    return (a0 + a1) + (a2 + a3)


@njit(parallel=True, cache=True, nogil=True)
def spmv(ptr, order, entries, cols, codes, cb, x, bias, y):
    """y = W x + bias at batch 1; ``entries`` (packed) or ``cols``/``codes`` (wide) hold the layout, the other is empty."""
    n_panels, rows1 = ptr.shape
    rows = rows1 - 1
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    packed = entries.size > 0
    for b in prange(n_blocks):
        r0 = b * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        for r in range(r0, r1):
            y[r] = bias[r]
        for p in range(n_panels):
            base = np.uint64(p * PANEL)
            for r in range(r0, r1):
                lo, hi = ptr[p, r], ptr[p, r + 1]
                if hi > lo:
                    if packed:
                        y[order[p, r]] += _dot_packed(entries, lo, hi, cb, x, base)
                    else:
                        y[order[p, r]] += _dot_wide(cols, codes, lo, hi, cb, x, base)


@njit(parallel=True, cache=True, nogil=True)
def spmm_t(ptr, order, entries, cols, codes, cb, xt, bias, yt):
    """yt = W xt + bias for ``xt`` of shape (cols, batch), contiguous; ``yt`` is (rows, batch).

    The batch goes in chunks of ``CHUNK`` columns of ``xt``, rows in blocks of ``ROW_BLOCK``: a block's
    partial sums for one chunk (64 KB) and one panel of ``xt`` (256 KB) stay in cache while it is read.
    """
    n_panels, rows1 = ptr.shape
    rows = rows1 - 1
    batch = xt.shape[1]
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    n_chunks = (batch + CHUNK - 1) // CHUNK
    packed = entries.size > 0
    m = np.uint64(COL_MASK)
    s = np.uint64(PANEL_BITS)
    for task in prange(n_blocks * n_chunks):
        b, c = task // n_chunks, task % n_chunks
        r0 = b * ROW_BLOCK
        r1 = min(rows, r0 + ROW_BLOCK)
        t0 = c * CHUNK
        width = min(CHUNK, batch - t0)
        acc = _aligned_empty((r1 - r0) * CHUNK).reshape((r1 - r0, CHUNK))
        acc[:] = 0.0
        for p in range(n_panels):
            base = np.uint64(p * PANEL)
            for r in range(r0, r1):
                row = acc[order[p, r] - r0]
                for j in range(ptr[p, r], ptr[p, r + 1]):
                    if packed:
                        v = np.uint64(entries[j])
                        w = cb[v >> s]
                        col = base + (v & m)
                    else:
                        w = cb[np.uint64(codes[j])]
                        col = base + np.uint64(cols[j])
                    xrow = xt[col]
                    for t in range(width):
                        row[t] += w * xrow[t0 + t]
        for r in range(r0, r1):
            for t in range(width):
                yt[r, t0 + t] = acc[r - r0, t] + bias[r]


# The byte layout (``kernels.py``): per row, one byte per entry, (gap - 1) << 5 | code; code 31 is a
# filler whose centroid is 0, so the column can always advance by the gap without a branch.


@njit(parallel=True, cache=True, nogil=True)
def spmv_bytes(row_ptr, ent, cb, x, bias, y):
    """y = W x + bias for the byte layout (numba)."""
    rows = row_ptr.size - 1
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(n_blocks):
        for r in range(b * ROW_BLOCK, min(rows, (b + 1) * ROW_BLOCK)):
            a0 = a1 = np.float32(0.0)
            c = np.uint64(0)
            j = row_ptr[r]
            hi = row_ptr[r + 1]
            while j + 2 <= hi:
                e0, e1 = np.uint64(ent[j]), np.uint64(ent[j + 1])
                c0 = c + (e0 >> np.uint64(5))
                c = c0 + (e1 >> np.uint64(5)) + np.uint64(1)
                a0 += cb[e0 & np.uint64(31)] * x[c0]
                a1 += cb[e1 & np.uint64(31)] * x[c]
                c += np.uint64(1)
                j += 2
            if j < hi:
                e = np.uint64(ent[j])
                a0 += cb[e & np.uint64(31)] * x[c + (e >> np.uint64(5))]
            y[r] = bias[r] + (a0 + a1)


@njit(parallel=True, cache=True, nogil=True)
def spmm_bytes(row_ptr, ent, cb, x, bias, y):
    """y = x W^T + bias for ``x`` (batch, cols), ``y`` (batch, rows), the byte layout (numba)."""
    rows = row_ptr.size - 1
    batch = x.shape[0]
    n_chunks = (batch + CHUNK - 1) // CHUNK
    xc = _chunked(x, n_chunks)
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    for task in prange(n_blocks * n_chunks):
        b, k = task // n_chunks, task % n_chunks
        xk = xc[k]
        acc = np.zeros(CHUNK, np.float32)
        for r in range(b * ROW_BLOCK, min(rows, (b + 1) * ROW_BLOCK)):
            acc[:] = 0.0
            c = np.uint64(0)
            for j in range(row_ptr[r], row_ptr[r + 1]):
                e = np.uint64(ent[j])
                c += (e >> np.uint64(5)) + np.uint64(1)
                w = cb[e & np.uint64(31)]
                xr = xk[c - np.uint64(1)]
                for t in range(CHUNK):
                    acc[t] += w * xr[t]
            for t in range(min(CHUNK, batch - k * CHUNK)):
                y[k * CHUNK + t, r] = acc[t] + bias[r]


@njit(parallel=True, cache=True, nogil=True)
def spmv_bytes_native(row_ptr, ent, cb, x, bias, y):
    """``spmv_bytes`` with the C inner loop (only when ``NATIVE``)."""
    rows = row_ptr.size - 1
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    for b in prange(n_blocks):
        _spmv_bytes_c(row_ptr.ctypes.data, ent.ctypes.data, cb.ctypes.data, x.ctypes.data, bias.ctypes.data, y.ctypes.data,
                      b * ROW_BLOCK, min(rows, (b + 1) * ROW_BLOCK))


@njit(parallel=True, cache=True, nogil=True)
def spmm_bytes_native(row_ptr, ent, cb, x, bias, y):
    """``spmm_bytes`` with the C inner loops (only when ``NATIVE``)."""
    rows = row_ptr.size - 1
    batch, n_cols = x.shape
    n_chunks = (batch + CHUNK - 1) // CHUNK
    xc = _chunked_native(x, n_chunks)
    n_blocks = (rows + ROW_BLOCK - 1) // ROW_BLOCK
    for task in prange(n_blocks * n_chunks):
        b, k = task // n_chunks, task % n_chunks
        r0, r1 = b * ROW_BLOCK, min(rows, (b + 1) * ROW_BLOCK)
        a = _aligned_empty((r1 - r0) * CHUNK)  # the block's sums and walk state: allocated per task, not per row
        state = np.empty(2 * (r1 - r0), np.uint32)
        _spmm_bytes_c(row_ptr.ctypes.data, ent.ctypes.data, cb.ctypes.data, xc.ctypes.data, n_cols, bias.ctypes.data, y.ctypes.data,
                      rows, r0, r1, k, batch, a.ctypes.data, state.ctypes.data)


CONV_TILE = 4096  # output values per task of conv_direct (16 KB of partial sums, in L1)


@njit(parallel=True, cache=True, nogil=True)
def conv_direct(row_ptr, cols, codes, cb, x, bias, y, kh, kw, sh, sw, dh, dw):
    """A direct sparse convolution: for every weight of output channel r, at input channel c and kernel offset (a, b)
    (its column in unfold's order, ``(c * kh + a) * kw + b``), ``y[i, r] += cb[code] * x[i, c, a*dh :: sh, b*dw :: sw]``
    over the output positions, then the bias.

    ``x`` is the (already padded) input, ``y`` (n, rows, oh, ow) the output. No im2col: at batch 64 unfolding
    LeNet-5's input cost more than the whole product. Tasks are (image, band of output rows) pairs; a band's
    partial sums (``CONV_TILE`` values at most) stay in L1 while every weight of a channel adds into them.
    """
    n, rows, oh, ow = y.shape
    band = max(1, min(oh, CONV_TILE // ow))
    n_bands = (oh + band - 1) // band
    for task in prange(n * n_bands):
        i, o0 = task // n_bands, (task % n_bands) * band
        o1 = min(oh, o0 + band)
        acc = np.empty((o1 - o0, ow), np.float32)
        for r in range(rows):
            acc[:, :] = bias[r]
            for j in range(row_ptr[r], row_ptr[r + 1]):
                w = cb[codes[j]]
                col = cols[j]
                c, rest = col // (kh * kw), col % (kh * kw)
                a, b = rest // kw, rest % kw
                for o in range(o1 - o0):
                    src = x[i, c, (o0 + o) * sh + a * dh]
                    dst = acc[o]
                    for t in range(ow):
                        dst[t] += w * src[b * dw + t * sw]
            y[i, r, o0:o1] = acc
