"""Compiled inner loops (numba). Imported lazily so ``import deepshrink`` stays light.

Kernels never raise: they return a status code (0 = ok) that the caller turns into a FormatError
naming the section, because a numba exception carries no context and must not escape as itself.
"""

from __future__ import annotations

import numpy as np
from numba import njit

OK = 0
TRUNCATED = 1
BAD_CODE = 2
BAD_STATE = 3
OUT_OF_RANGE = 4
TRAILING = 5
BAD_PADDING = 6

RANS_SCALE_BITS = 15
RANS_L = 1 << 16


@njit(cache=True, nogil=True)
def huffman_encode(symbols, codes, lengths, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    for i in range(symbols.size):
        s = symbols[i]
        ln = lengths[s]
        acc = (acc << np.uint64(ln)) | np.uint64(codes[s])
        nacc += ln
        while nacc >= 8:
            nacc -= 8
            out[pos] = np.uint8((acc >> np.uint64(nacc)) & np.uint64(0xFF))
            pos += 1
    if nacc > 0:
        out[pos] = np.uint8((acc << np.uint64(8 - nacc)) & np.uint64(0xFF))
        pos += 1
    return pos


@njit(cache=True, nogil=True)
def huffman_decode(data, count, table_sym, table_len, max_len, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    nbytes = data.size
    mask = np.uint64((1 << max_len) - 1)
    consumed = 0
    for i in range(count):
        while nacc < max_len:
            b = np.uint64(data[pos]) if pos < nbytes else np.uint64(0)
            pos += 1
            acc = ((acc << np.uint64(8)) | b) & np.uint64(0xFFFFFFFFFFFF)
            nacc += 8
        peek = (acc >> np.uint64(nacc - max_len)) & mask
        ln = table_len[peek]
        if ln == 0:
            return BAD_CODE
        out[i] = table_sym[peek]
        nacc -= ln
        consumed += ln
    if consumed > 8 * nbytes:
        return TRUNCATED
    if (consumed + 7) // 8 != nbytes:
        return TRAILING
    return _padding_status(data, 8 * nbytes - consumed)


@njit(cache=True, nogil=True)
def rans_encode(symbols, freq, cum, out):
    """Encode in reverse; ``out`` receives 16-bit words in emission order (caller reverses)."""
    x = np.uint64(RANS_L)
    n = 0
    for i in range(symbols.size - 1, -1, -1):
        s = symbols[i]
        f = np.uint64(freq[s])
        if x >= (f << np.uint64(17)):
            out[n] = np.uint16(x & np.uint64(0xFFFF))
            n += 1
            x >>= np.uint64(16)
        x = ((x // f) << np.uint64(RANS_SCALE_BITS)) + (x % f) + np.uint64(cum[s])
    return n, x


@njit(cache=True, nogil=True)
def rans_decode(words, state, count, freq, cum, slot_sym, out):
    x = np.uint64(state)
    mask = np.uint64((1 << RANS_SCALE_BITS) - 1)
    ptr = 0
    nwords = words.size
    for i in range(count):
        slot = x & mask
        s = slot_sym[slot]
        out[i] = s
        x = np.uint64(freq[s]) * (x >> np.uint64(RANS_SCALE_BITS)) + slot - np.uint64(cum[s])
        if x < np.uint64(RANS_L):
            if ptr >= nwords:
                return TRUNCATED
            x = (x << np.uint64(16)) | np.uint64(words[ptr])
            ptr += 1
    if ptr != nwords:
        return TRAILING
    if x != np.uint64(RANS_L):
        return BAD_STATE
    return OK


@njit(cache=True, nogil=True)
def _padding_status(data, pad_bits):
    """The last byte's ``pad_bits`` low bits (after the last code) must be zero: one file, one encoding."""
    if pad_bits > 0 and (data[data.size - 1] & ((1 << pad_bits) - 1)) != 0:
        return BAD_PADDING
    return OK


@njit(cache=True, nogil=True)
def unpack_bits(data, width, count, alphabet, out):
    acc = np.uint64(0)
    nacc = 0
    pos = 0
    mask = np.uint64((1 << width) - 1)
    for i in range(count):
        while nacc < width:
            acc = ((acc << np.uint64(8)) | np.uint64(data[pos])) & np.uint64(0xFFFFFFFF)
            pos += 1
            nacc += 8
        nacc -= width
        s = (acc >> np.uint64(nacc)) & mask
        if s >= alphabet:
            return BAD_CODE
        out[i] = s
    return _padding_status(data, 8 * data.size - count * width)


@njit(cache=True, nogil=True)
def zero_fill(dest):
    for i in range(dest.size):
        dest[i] = 0


@njit(cache=True, nogil=True)
def scatter_entries(wsym, isym, codebook, filler, dest):
    """Walk the relative-index entries and write ``codebook[w]`` at each real (non-filler) position.

    ``dest`` must already hold zeros. Returns OUT_OF_RANGE if a position leaves the tensor or a
    weight symbol is not a codebook index, BAD_CODE if the stream ends on a filler.
    """
    pos = -1
    n = dest.size
    k = codebook.size
    last_filler = False
    for e in range(wsym.size):
        pos += np.int64(isym[e]) + 1
        if pos >= n:
            return OUT_OF_RANGE
        w = wsym[e]
        if w == filler:
            last_filler = True
            continue
        if w >= k:
            return OUT_OF_RANGE
        last_filler = False
        dest[pos] = codebook[w]
    if last_filler:
        return BAD_CODE
    return OK


@njit(cache=True, nogil=True)
def entries_from_positions(positions, codes, index_bits, filler, wsym, isym):
    """Fill entry arrays from sorted flat positions and their codes; returns the entry count."""
    span = 1 << index_bits
    e = 0
    last = -1
    for j in range(positions.size):
        gap = positions[j] - last
        while gap > span:
            wsym[e] = filler
            isym[e] = span - 1
            e += 1
            gap -= span
        wsym[e] = codes[j]
        isym[e] = gap - 1
        e += 1
        last = positions[j]
    return e


@njit(cache=True, nogil=True)
def gap_stats(flat_mask, codes, max_code):
    """One pass over a layer: code histogram, and for each index width b in 0..8 the histogram of index
    symbols ``(gap - 1) mod 2**b`` and the number of fillers ``(gap - 1) >> b`` (rows b < 2 unused)."""
    idx_hist = np.zeros((9, 256), np.int64)
    fillers = np.zeros(9, np.int64)
    code_hist = np.zeros(max_code + 1, np.int64)
    last = -1
    for p in range(flat_mask.size):
        if flat_mask[p]:
            g = p - last - 1
            for b in range(2, 9):
                idx_hist[b, g & ((1 << b) - 1)] += 1
                fillers[b] += g >> b
            code_hist[codes[p]] += 1
            last = p
    return idx_hist, fillers, code_hist


def warm_up() -> None:
    """Resolve every decoder now (from numba's on-disk cache after the first run), not at the first ``load``.

    Nothing calls this implicitly: a server that wants its first load fast, or a benchmark timing the
    steady state, calls it once; everyone else pays numba's type inference and cache lookup on first use.
    """
    u16 = np.zeros(1, np.uint16)
    u8 = np.zeros(1, np.uint8)
    ro = np.frombuffer(bytes(1), dtype=np.uint8)  # file payloads arrive as read-only views
    f32 = np.zeros(1, np.float32)
    rans_decode(u16[:0], np.uint64(RANS_L), 0, np.full(1, 1 << RANS_SCALE_BITS, np.uint32), np.zeros(1, np.uint32), u16, u16)
    huffman_decode(ro, 0, u16, u8, 1, u16)
    unpack_bits(ro, 1, 0, 1, u16)
    zero_fill(f32)
    scatter_entries(u16[:0], u16[:0], f32, 1, f32)
