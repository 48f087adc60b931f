"""Relative sparse indices with filler entries (paper section 2, Fig. 2).

A layer's non-zero positions, in row-major order of the flattened weight, are stored as gaps: entry
``e`` sits ``isym[e] + 1`` positions after the previous entry (the first after position -1). A gap
longer than ``2**index_bits`` is bridged by filler entries, each advancing exactly ``2**index_bits``
and carrying the reserved weight symbol ``filler`` (= number of centroids), which decodes to zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cost import cheapest_bits
from .entropy import Coder

__all__ = ["Entries", "GapStats", "build_entries", "choose_index_bits", "gap_stats"]

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
    positions = np.flatnonzero(flat_mask)
    written = _jit.entries_from_positions(positions, np.ascontiguousarray(np.asarray(flat_codes)[positions], dtype=np.uint8),
                                          index_bits, filler, wsym, isym)
    if written != total:  # the histogram pass and the writing pass disagree: a bug in deepshrink, never bad input
        raise RuntimeError(f"relative index: wrote {written} entries, expected {total}")
    return Entries(wsym, isym, index_bits, stats.nnz)


def choose_index_bits(stats: GapStats, k: int, coder: Coder | None) -> int:
    """The index width in 2..8 that makes this layer's two coded streams smallest."""
    if stats.nnz == 0:
        return 4
    best, best_bits = 4, float("inf")
    for b in INDEX_BITS_CHOICES:
        w, idx = stats.histograms(b)
        bits = cheapest_bits(w, k + 1, coder) + cheapest_bits(idx, 1 << b, coder)
        if bits < best_bits:
            best, best_bits = b, bits
    return best
