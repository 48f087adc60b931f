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

__all__ = ["Entries", "GapStats", "build_entries", "choose_index_bits", "coded_bits_estimate", "gap_stats"]

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


@dataclass
class GapStats:
    """Histograms of a layer's streams for every index width, from one pass over its mask."""

    idx_hist: np.ndarray
    fillers: np.ndarray
    code_hist: np.ndarray
    nnz: int

    def histograms(self, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
        """Symbol counts of the weight stream (codes, then filler) and the index stream."""
        span = 1 << index_bits
        idx = self.idx_hist[index_bits, :span].copy()
        idx[span - 1] += self.fillers[index_bits]
        return np.concatenate([self.code_hist, [self.fillers[index_bits]]]), idx


def gap_stats(flat_mask: np.ndarray, flat_codes: np.ndarray, k: int) -> GapStats:
    from . import _jit

    idx, fill, codes = _jit.gap_stats(np.ascontiguousarray(flat_mask, dtype=np.bool_),
                                      np.ascontiguousarray(flat_codes, dtype=np.uint8), max(k - 1, 255))
    return GapStats(idx, fill, codes[:k], int(codes.sum()))


def build_entries(flat_mask: np.ndarray, flat_codes: np.ndarray, filler: int, index_bits: int,
                  stats: GapStats | None = None) -> Entries:
    from . import _jit

    stats = stats or gap_stats(flat_mask, flat_codes, filler)
    total = stats.nnz + int(stats.fillers[index_bits])
    wsym = np.empty(total, np.uint16)
    isym = np.empty(total, np.uint16)
    written = _jit.relative_entries(
        np.ascontiguousarray(flat_mask, dtype=np.bool_), np.ascontiguousarray(flat_codes, dtype=np.uint8),
        index_bits, filler, wsym, isym,
    )
    if written != total:
        raise AssertionError(f"relative index: wrote {written} entries, expected {total}")
    return Entries(wsym, isym, index_bits, stats.nnz)


def coded_bits_estimate(counts: np.ndarray, alphabet: int, coder: Coder | None) -> float:
    """Bits the stream will take with ``coder`` (None: the best of all), tables included."""
    n = int(counts.sum())
    costs = {
        Coder.PACKED: float(n * fixed_width(alphabet)),
        Coder.HUFFMAN: float((counts * huffman_lengths(counts).astype(np.int64)).sum() + 8 * alphabet),
        Coder.RANS: entropy_bits(counts) * 1.0005 + 12.0 * int((counts > 0).sum()) + 8 * alphabet + 48,
    }
    return costs[coder] if coder is not None else min(costs.values())


def choose_index_bits(stats: GapStats, k: int, coder: Coder | None) -> int:
    """The index width in 2..8 that makes this layer's two coded streams smallest."""
    if stats.nnz == 0:
        return 4
    best, best_bits = 4, float("inf")
    for b in INDEX_BITS_CHOICES:
        w, idx = stats.histograms(b)
        bits = coded_bits_estimate(w, k + 1, coder) + coded_bits_estimate(idx, 1 << b, coder)
        if bits < best_bits:
            best, best_bits = b, bits
    return best
