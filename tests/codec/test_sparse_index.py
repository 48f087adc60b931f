from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec import _jit
from deepshrink.codec.sparse_index import build_entries, choose_index_bits, gap_stats


def _decode(entries, codebook, numel):
    out = np.zeros(numel, np.float32)
    status = _jit.scatter_entries(entries.wsym, entries.isym, codebook, codebook.size, out)
    assert status == _jit.OK
    return out


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 3000), st.floats(0.0, 1.0), st.integers(2, 8), st.integers(0, 2**31))
def test_entries_round_trip(numel, dens, bits, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random(numel) < dens
    codes = rng.integers(0, 16, numel).astype(np.uint8)
    codebook = np.linspace(-1, 1, 16).astype(np.float32) + 0.01
    e = build_entries(mask, codes, 16, bits)
    assert e.nnz == int(mask.sum())
    assert int((e.wsym != 16).sum()) == e.nnz
    assert (e.isym < (1 << bits)).all()
    expected = np.where(mask, codebook[codes], 0).astype(np.float32)
    assert np.array_equal(_decode(e, codebook, numel), expected)
    w_hist, i_hist = gap_stats(mask, codes, 16).histograms(bits)
    assert np.array_equal(w_hist, np.bincount(e.wsym, minlength=17))
    assert np.array_equal(i_hist, np.bincount(e.isym, minlength=1 << bits))


def test_paper_figure_2_filler():
    # 3-bit indices: a gap of 8 fits, a gap of 9 needs one filler (paper Fig. 2 uses 3 bits).
    mask = np.zeros(20, bool)
    mask[[1, 4, 13]] = True
    e = build_entries(mask, np.ones(20, np.uint8), 4, 3)
    assert e.isym.tolist() == [1, 2, 7, 0]
    assert e.wsym.tolist() == [1, 1, 4, 1]


def test_scatter_rejects_out_of_range():
    out = np.zeros(10, np.float32)
    cb = np.ones(2, np.float32)
    assert _jit.scatter_entries(np.array([0], np.uint16), np.array([10], np.uint16), cb, 2, out) == _jit.OUT_OF_RANGE
    assert _jit.scatter_entries(np.array([2], np.uint16), np.array([0], np.uint16), cb, 2, out) == _jit.BAD_CODE
    # A weight symbol that is neither a centroid nor the filler, at a position inside the tensor.
    assert _jit.scatter_entries(np.array([0, 3], np.uint16), np.array([0, 1], np.uint16), cb, 2, out) == _jit.OUT_OF_RANGE
    # The stream ends on a filler only: the filler path, not the range checks.
    assert _jit.scatter_entries(np.array([0, 2], np.uint16), np.array([0, 1], np.uint16), cb, 2, out) == _jit.BAD_CODE


@pytest.mark.parametrize("density,low,high", [(0.04, 5, 8), (0.5, 2, 4)])
def test_choose_index_bits_follows_density(density, low, high):
    rng = np.random.default_rng(0)
    mask = rng.random(200_000) < density
    codes = rng.integers(0, 32, mask.size).astype(np.uint8)
    assert low <= choose_index_bits(gap_stats(mask, codes, 32), 32, None) <= high
