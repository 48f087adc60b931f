"""Delta-coded codebooks: exact round trips in every base dtype, and only FormatError on any other bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import deepshrink as ds
from deepshrink.codec import codebook as cbc

_F16 = st.floats(width=16, allow_nan=False, allow_infinity=False)
_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def _bf16(values: list[float]) -> np.ndarray:
    return ((np.array(values, np.float32).view(np.uint32) >> 16) << 16).view(np.float32)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.tuples(st.just("float16"), st.lists(_F16, min_size=1, max_size=256)),
                 st.tuples(st.just("float32"), st.lists(_F32, min_size=1, max_size=256)),
                 st.tuples(st.just("bfloat16"), st.lists(_F32, min_size=1, max_size=256))))
def test_round_trip_is_bit_exact_and_sorted(case):
    dtype, values = case
    cb = _bf16(values) if dtype == "bfloat16" else np.array(values, np.float32)
    order, section = cbc.encode(cb, dtype)
    back = cbc.decode(section, cb.size, "t")
    assert np.array_equal(back.view(np.uint32), cb[order].view(np.uint32))  # -0.0 and +0.0 kept apart
    assert sorted(order.tolist()) == list(range(cb.size))
    assert (np.diff(cbc.keys(back, dtype).astype(np.int64)) >= 0).all()


def test_a_fine_tuned_looking_codebook_takes_about_half_its_float16_bytes():
    cb = np.sort(np.random.default_rng(0).normal(0, 0.05, 127)).astype(np.float16).astype(np.float32)
    _, section = cbc.encode(cb, "float16")
    assert len(section) < 0.6 * 2 * cb.size


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 256))
def test_any_bytes_decode_or_raise_format_error(data, k):
    try:
        out = cbc.decode(data, k, "t")
    except ds.FormatError:
        return
    assert out.shape == (k,) and out.dtype == np.float32


@pytest.mark.parametrize(("section", "k", "match"), [
    (b"", 1, "empty"),
    (bytes([0x03, 0, 0]), 1, "base dtype"),
    (bytes([0x80, 0, 0]), 1, "base dtype"),
    (bytes([0x01 | 17 << 2, 0, 0]), 1, "order"),
    (bytes([0x01, 0x3C]), 1, "truncated"),
    (bytes([0x01, 0x3C, 0x00, 0x00]), 1, "padding"),
    (bytes([0x01, 0x3C, 0x00, 0x01]), 1, "padding"),
    (bytes([0x01, 0xFF, 0xFF, 0x40]), 2, "key range"),  # key 0xFFFF plus a gap of 1
    (bytes([0x01, 0x3C, 0x00, 0x00, 0x00, 0x00]), 2, "prefix"),
])
def test_malformed_sections_say_what_is_wrong(section, k, match):
    with pytest.raises(ds.FormatError, match=match):
        cbc.decode(section, k, "t")
