"""The one cost model: how many bytes each coder makes of a stream with a given histogram.

``save``'s ``auto`` choice, the index-width choice, the report and the planner all call these, so a
prediction and a written stream can never disagree by construction. Packed and Huffman sizes are exact
(tables included); rANS's depends on the symbol order, not only the histogram, and is estimated within
a few bytes (``RANS_SLACK_BYTES``), which is why ``auto`` codes rANS and Huffman both when rANS wins.
"""

from __future__ import annotations

import math

import numpy as np

from .entropy import Coder, entropy_bits, fixed_width, huffman_lengths

__all__ = ["RANS_SLACK_BYTES", "best_coder", "cheapest_bits", "predicted_bytes", "stream_bits"]

# rANS: the estimate below against the written size, measured over the property tests' streams.
RANS_SLACK_BYTES = 16


def stream_bits(counts: np.ndarray, alphabet: int, coder: Coder) -> float:
    """Bits of the coded stream, tables included (exact for packed and Huffman)."""
    counts = np.asarray(counts, dtype=np.int64)
    n = int(counts.sum())
    if coder is Coder.PACKED:
        return float(n * fixed_width(alphabet))
    if coder is Coder.HUFFMAN:
        return float((counts * huffman_lengths(counts).astype(np.int64)).sum() + 8 * alphabet)
    return entropy_bits(counts) * 1.0005 + 12.0 * int((counts > 0).sum()) + 8 * alphabet + 48


def predicted_bytes(counts: np.ndarray, alphabet: int, coder: Coder) -> int:
    """Bytes of the coded stream: exact for packed and Huffman, within ``RANS_SLACK_BYTES`` for rANS."""
    return math.ceil(stream_bits(counts, alphabet, coder) / 8)


def best_coder(counts: np.ndarray, alphabet: int) -> Coder:
    """The coder predicted to make this stream smallest."""
    return min(Coder, key=lambda c: stream_bits(counts, alphabet, c))


def cheapest_bits(counts: np.ndarray, alphabet: int, coder: Coder | None) -> float:
    """Bits with ``coder``, or with the best coder when ``None``."""
    if coder is not None:
        return stream_bits(counts, alphabet, coder)
    return min(stream_bits(counts, alphabet, c) for c in Coder)
