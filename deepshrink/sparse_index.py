"""Relative sparse indices with filler entries (paper section 2, Fig. 2).

A layer's non-zero positions, in row-major order of the flattened weight, are stored as gaps: entry
``e`` sits ``isym[e] + 1`` positions after the previous entry (the first after position -1). A gap
longer than ``2**index_bits`` is bridged by filler entries, each advancing exactly ``2**index_bits``
and carrying the reserved weight symbol ``filler`` (= number of centroids), which decodes to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .entropy import Coder, entropy_bits, fixed_width, huffman_lengths

__all__ = ["Entries", "build_entries", "index_histograms", "choose_index_bits", "coded_bits_estimate"]

INDEX_BITS_CHOICES = range(2, 9)


@dataclass
class Entries:
    wsym: np.ndarray
    isym: np.ndarray
    index_bits: int
    nnz: int

    @property
    def count(self) -> int:
        return int(self.wsym.size)


def _gaps(flat_mask: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(flat_mask)
    return np.diff(pos, prepend=-1)


def build_entries(flat_mask: np.ndarray, flat_codes: np.ndarray, filler: int, index_bits: int) -> Entries:
    from . import _jit

    gaps = _gaps(flat_mask)
    n_fill = int(((gaps - 1) >> index_bits).sum()) if gaps.size else 0
    total = gaps.size + n_fill
    wsym = np.empty(total, np.uint16)
    isym = np.empty(total, np.uint16)
    written = _jit.relative_entries(
        np.ascontiguousarray(flat_mask, dtype=np.bool_), np.ascontiguousarray(flat_codes, dtype=np.uint8),
        index_bits, filler, wsym, isym,
    )
    assert written == total
    return Entries(wsym, isym, index_bits, int(gaps.size))


def index_histograms(gaps: np.ndarray, code_counts: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbol counts of the weight and index streams for ``index_bits``, without building the streams."""
    span = 1 << index_bits
    n_fill = (gaps - 1) >> index_bits
    idx = np.bincount(((gaps - 1) & (span - 1)).astype(np.int64), minlength=span)
    idx[span - 1] += int(n_fill.sum())
    w = np.concatenate([code_counts, [int(n_fill.sum())]])
    return w, idx


def coded_bits_estimate(counts: np.ndarray, alphabet: int, coder: Coder | None) -> float:
    """Bits the stream will take with ``coder`` (None: the best of all), tables included."""
    n = int(counts.sum())
    costs = {
        Coder.PACKED: float(n * fixed_width(alphabet)),
        Coder.HUFFMAN: float((counts * huffman_lengths(counts).astype(np.int64)).sum() + 8 * alphabet),
        Coder.RANS: entropy_bits(counts) * 1.0005 + 12.0 * int((counts > 0).sum()) + 8 * alphabet + 48,
    }
    return costs[coder] if coder is not None else min(costs.values())


def choose_index_bits(flat_mask: np.ndarray, flat_codes: np.ndarray, k: int, coder: Coder | None) -> int:
    """The index width in 2..8 that makes this layer's two coded streams smallest."""
    gaps = _gaps(flat_mask)
    if gaps.size == 0:
        return 4
    code_counts = np.bincount(flat_codes[flat_mask].astype(np.int64), minlength=k)
    best, best_bits = 4, float("inf")
    for b in INDEX_BITS_CHOICES:
        w, idx = index_histograms(gaps, code_counts, b)
        bits = coded_bits_estimate(w, k + 1, coder) + coded_bits_estimate(idx, 1 << b, coder)
        if bits < best_bits:
            best, best_bits = b, bits
    return best
