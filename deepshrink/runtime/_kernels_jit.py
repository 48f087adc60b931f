"""Compiled sparse, codebook-indexed matrix kernels over the panel layout (numba, parallel over row blocks).

Layout (see ``kernels.py``): columns in panels of ``PANEL`` = 2048; the entries of panel ``p``, row ``r``
are ``entries[ptr[p, r]:ptr[p, r + 1]]``, all of panel 0 first. An entry is ``code << 11 | column in
panel`` (uint16) when the codebook has at most 32 centroids; otherwise the column in panel (uint16)
and the code (uint8) sit in two arrays. Every index a kernel computes is unsigned, so numba emits no
negative-index wraparound; a panel of x (8 KB at batch 1, 256 KB as 32 columns of the transposed x
at batch 64) stays in cache while every row of a block reads it.

No fastmath: the sums are written out with eight accumulators by hand (LLVM may not reassociate
them itself, and on one machine letting it do so produced gathers that ran slower than scalar loads).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

PANEL_BITS = 11
PANEL = 1 << PANEL_BITS
COL_MASK = PANEL - 1
ROW_BLOCK = 512
CHUNK = 32


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
def spmv(ptr, entries, cols, codes, cb, x, bias, y):
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
                        y[r] += _dot_packed(entries, lo, hi, cb, x, base)
                    else:
                        y[r] += _dot_wide(cols, codes, lo, hi, cb, x, base)


@njit(parallel=True, cache=True, nogil=True)
def spmm_t(ptr, entries, cols, codes, cb, xt, bias, yt):
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
        acc = np.zeros((r1 - r0, CHUNK), np.float32)
        for p in range(n_panels):
            base = np.uint64(p * PANEL)
            for r in range(r0, r1):
                row = acc[r - r0]
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
