"""Compiled loops of the context-adaptive coder (``docs/format.md``, "ctx"). Imported lazily.

A binary range coder (LZMA's carry handling) codes every position of a weight matrix: a flag per row
(does it hold any weight?), then per position of a non-empty row a significance bit, then for each
non-zero its cluster code as a binary tree of bits. Each bit has an adaptive probability chosen by a
context: the density of its column in the rows above, its left neighbour, the sign of the previous
weight in the row. The decoder mirrors the encoder bit for bit; both are written so that a C
implementation of the spec produces the same bytes.

Kernels never raise: they return a status code (0 = ok) that the caller turns into a FormatError.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._jit import BAD_CODE, OK, OUT_OF_RANGE, TRAILING

# Each context holds the probability of a 1 bit in units of 2^-28 and the number of bits it has seen,
# n; after each bit it moves 2^-shift of the way to it, shift = min(max_shift, 1 + bitlen(n + 1)):
# a quick start, then as steady as the tensor's max_shift asks. Bits are coded at 16-bit precision.
# The mixed model (params bit 6) also keeps a fast twin (shift at most FAST_SHIFT) and codes with the
# mean of the two, which follows drifting statistics without giving up the steady estimate.
P_BITS = 28
P_INIT = 1 << (P_BITS - 1)
FAST_SHIFT = 4
# Code trees: 0 before a row's first non-zero, then by the previous non-zero's centroid: its sign (plain
# model) or which quarter of the sorted codebook it lies in (mixed model).
TREES = 5
N_CAP = 1 << 12
TOP = 1 << 24
# Column-density buckets: the column holds (a + 1/2) / (n + 1) of the non-empty rows above in
# [0, 1/256), [1/256, 1/64), [1/64, 1/16), [1/16, 1/4), [1/4, 1].
THRESHOLDS = np.array([1, 4, 16, 64], dtype=np.int64)
ROW_CTX = 2
SIG_CTX = 5 * 2
ROW_BASE = 0
SIG_BASE = ROW_BASE + ROW_CTX
VAL_BASE = SIG_BASE + SIG_CTX


def shift_table(max_shift: int) -> np.ndarray:
    n = np.arange(N_CAP + 1, dtype=np.int64)
    bitlen = np.floor(np.log2(n + 1)).astype(np.int64) + 1
    return np.minimum(max_shift, 1 + bitlen)


@njit(cache=True, nogil=True, inline="always")
def _prob(p, f, mixed, c):
    """The 16-bit coding probability of a 1 in context ``c``: never 0, so either bit stays codable."""
    q = ((p[c] + f[c]) >> 1) >> 12 if mixed else p[c] >> 12
    return q if q > 0 else 1


@njit(cache=True, nogil=True, inline="always")
def _adapt(p, f, mixed, n, shifts, c, bit):
    s = shifts[n[c]]
    if bit:
        p[c] += ((1 << P_BITS) - p[c]) >> s
    else:
        p[c] -= p[c] >> s
    if mixed:  # the fast twin is read only by the mixed model
        t = s if s < FAST_SHIFT else FAST_SHIFT
        if bit:
            f[c] += ((1 << P_BITS) - f[c]) >> t
        else:
            f[c] -= f[c] >> t
    if n[c] < N_CAP:
        n[c] += 1


@njit(cache=True, nogil=True, inline="always")
def _tree_after(s, neg, clusters, mixed):
    """The code tree for the non-zero after one with code ``s``."""
    if mixed:
        return 1 + (4 * s) // clusters
    return 1 if neg[s] else 2


@njit(cache=True, nogil=True, inline="always")
def _bucket(colcnt, rows_seen, limits):
    if rows_seen == 0:
        return 0
    v = 256 * (2 * colcnt + 1)
    return (v >= limits[0]) + (v >= limits[1]) + (v >= limits[2]) + (v >= limits[3])


@njit(cache=True, nogil=True, inline="always")
def _shift_low(low, cache, pending, w, out):
    """LZMA's carry-propagating byte output: ``pending`` bytes (the cached one, then 0xFF ones) wait for a carry."""
    if low < np.uint64(0xFF000000) or low >= np.uint64(1 << 32):
        carry = low >> np.uint64(32)
        temp = cache
        while True:
            out[w] = np.uint8((temp + carry) & np.uint64(0xFF))
            w += 1
            temp = np.uint64(0xFF)
            pending -= 1
            if pending == 0:
                break
        cache = (low >> np.uint64(24)) & np.uint64(0xFF)
    return (low & np.uint64(0x00FFFFFF)) << np.uint64(8), cache, pending + 1, w


@njit(cache=True, nogil=True, inline="always")
def _encode_bit(low, rng, cache, pending, w, out, p, f, mixed, n, shifts, c, bit, costs, slot):
    q = _prob(p, f, mixed, c)
    if costs is not None:
        costs[slot] += -np.log2((q if bit else 65536 - q) / 65536.0)
    bound = (rng >> np.uint64(16)) * np.uint64(q)
    if bit:
        rng = bound
    else:
        low += bound
        rng -= bound
    _adapt(p, f, mixed, n, shifts, c, bit)
    while rng < np.uint64(TOP):
        rng = (rng << np.uint64(8)) & np.uint64(0xFFFFFFFF)
        low, cache, pending, w = _shift_low(low, cache, pending, w, out)
    return low, rng, cache, pending, w


@njit(cache=True, nogil=True)
def ctx_encode(positions, codes, neg, rows, cols, depth, value_ctx, mixed, shifts, out, costs):
    """Code the non-zeros at sorted flat ``positions`` with cluster ``codes``; return the bytes written to ``out``.

    ``costs`` (None, or 3 floats) accumulates the ideal bits spent on row flags, significance bits and code bits.

    ``out[0]`` is the range coder's first byte, always 0, which the format leaves out; trailing zero
    bytes are not counted. ``neg[s]`` is 1 where centroid ``s`` is negative. ``out`` must be large
    enough (the caller sizes it from the number of bits coded).
    """
    nctx = VAL_BASE + TREES * (1 << depth)
    p = np.full(nctx, P_INIT, np.uint32)
    f = np.full(nctx, P_INIT, np.uint32)
    n = np.zeros(nctx, np.int64)
    colcnt = np.zeros(cols, np.int64)
    limits = np.zeros(4, np.int64)
    clusters = neg.size
    low, rng, cache, pending, w = np.uint64(0), np.uint64(0xFFFFFFFF), np.uint64(0), 1, 0
    nnz = positions.size
    j = 0
    rows_seen = 0
    prev_nonempty = 1
    for r in range(rows):
        start = j
        while j < nnz and positions[j] < (r + 1) * cols:
            j += 1
        nonempty = 1 if j > start else 0
        c = ROW_BASE + prev_nonempty
        low, rng, cache, pending, w = _encode_bit(low, rng, cache, pending, w, out, p, f, mixed, n, shifts, c, nonempty, costs, 0)
        prev_nonempty = nonempty
        if not nonempty:
            continue
        for t in range(4):
            limits[t] = THRESHOLDS[t] * (2 * rows_seen + 2)
        left = 0
        prevtree = 0
        k = start
        base = r * cols
        for col in range(cols):
            bit = 1 if (k < j and positions[k] == base + col) else 0
            c = SIG_BASE + 2 * _bucket(colcnt[col], rows_seen, limits) + left
            low, rng, cache, pending, w = _encode_bit(low, rng, cache, pending, w, out, p, f, mixed, n, shifts, c, bit, costs, 1)
            left = bit
            if not bit:
                continue
            s = np.int64(codes[k])
            tree = prevtree if value_ctx else 0
            node = 1
            for i in range(depth - 1, -1, -1):
                b = (s >> i) & 1
                c = VAL_BASE + tree * (1 << depth) + node
                low, rng, cache, pending, w = _encode_bit(low, rng, cache, pending, w, out, p, f, mixed, n, shifts, c, b, costs, 2)
                node = 2 * node + b
            colcnt[col] += 1
            prevtree = _tree_after(s, neg, clusters, mixed)
            k += 1
        rows_seen += 1
    # Any value in [low, low + range) ends the stream; the multiple of 2^24 in it leaves only zero
    # bytes after its first, which are dropped (a reader reads zeros past the end).
    low = (low + np.uint64(0xFFFFFF)) & ~np.uint64(0xFFFFFF)
    for _ in range(5):
        low, cache, pending, w = _shift_low(low, cache, pending, w, out)
    while w > 1 and out[w - 1] == 0:
        w -= 1
    return w


@njit(cache=True, nogil=True, inline="always")
def _decode_bit(data, pos, rng, code, p, f, mixed, n, shifts, c):
    """One bit in context ``c``; bytes past the end of ``data`` read as zero."""
    q = _prob(p, f, mixed, c)
    bound = (rng >> np.uint64(16)) * np.uint64(q)
    if code < bound:
        rng = bound
        bit = 1
    else:
        code -= bound
        rng -= bound
        bit = 0
    _adapt(p, f, mixed, n, shifts, c, bit)
    while rng < np.uint64(TOP):
        rng = (rng << np.uint64(8)) & np.uint64(0xFFFFFFFF)
        nxt = np.uint64(data[pos]) if pos < data.size else np.uint64(0)
        code = ((code << np.uint64(8)) | nxt) & np.uint64(0xFFFFFFFF)
        pos += 1
    return bit, pos, rng, code


@njit(cache=True, nogil=True, inline="always")
def _decode_code(data, pos, rng, code, p, f, mixed, n, shifts, base, depth):
    node = 1
    for _ in range(depth):
        b, pos, rng, code = _decode_bit(data, pos, rng, code, p, f, mixed, n, shifts, base + node)
        node = 2 * node + b
    return node - (1 << depth), pos, rng, code


@njit(cache=True, nogil=True)
def ctx_decode(data, rows, cols, depth, clusters, neg, value_ctx, mixed, shifts, nnz, positions, codes):
    """Decode into ``positions`` / ``codes`` (each ``nnz`` long). Returns a status code."""
    nctx = VAL_BASE + TREES * (1 << depth)
    p = np.full(nctx, P_INIT, np.uint32)
    f = np.full(nctx, P_INIT, np.uint32)
    n = np.zeros(nctx, np.int64)
    colcnt = np.zeros(cols, np.int64)
    limits = np.zeros(4, np.int64)
    rng = np.uint64(0xFFFFFFFF)
    code = np.uint64(0)
    pos = 0
    for _ in range(4):
        code = (code << np.uint64(8)) | (np.uint64(data[pos]) if pos < data.size else np.uint64(0))
        pos += 1
    if code >= rng:
        return BAD_CODE
    found = 0
    rows_seen = 0
    nonempty = 1
    for r in range(rows):
        nonempty, pos, rng, code = _decode_bit(data, pos, rng, code, p, f, mixed, n, shifts, ROW_BASE + nonempty)
        if not nonempty:
            continue
        for t in range(4):
            limits[t] = THRESHOLDS[t] * (2 * rows_seen + 2)
        left = 0
        prevtree = 0
        row_found = found
        for col in range(cols):
            c = SIG_BASE + 2 * _bucket(colcnt[col], rows_seen, limits) + left
            left, pos, rng, code = _decode_bit(data, pos, rng, code, p, f, mixed, n, shifts, c)
            if not left:
                continue
            base = VAL_BASE + (prevtree if value_ctx else 0) * (1 << depth)
            s, pos, rng, code = _decode_code(data, pos, rng, code, p, f, mixed, n, shifts, base, depth)
            if s >= clusters or found >= nnz:
                return OUT_OF_RANGE
            positions[found] = r * cols + col
            codes[found] = s
            found += 1
            colcnt[col] += 1
            prevtree = _tree_after(s, neg, clusters, mixed)
        if found == row_found:
            return BAD_CODE  # a row flagged non-empty holds no weight: no writer makes that
        rows_seen += 1
    if found != nnz:
        return OUT_OF_RANGE
    return TRAILING if pos < data.size else OK
