from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepshrink.codec.entropy import Coder, decode_stream, encode_stream, entropy_bits
from deepshrink.errors import FormatError


@st.composite
def streams(draw):
    alphabet = draw(st.integers(1, 257))
    n = draw(st.integers(0, 400))
    skew = draw(st.floats(0.0, 3.0))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    p = np.exp(-skew * np.arange(alphabet))
    p /= p.sum()
    return rng.choice(alphabet, size=n, p=p).astype(np.uint16), alphabet


@settings(max_examples=150, deadline=None)
@given(streams(), st.sampled_from(list(Coder)))
def test_round_trip(stream, coder):
    symbols, alphabet = stream
    data = encode_stream(symbols, alphabet, coder)
    assert np.array_equal(decode_stream(data, symbols.size, alphabet, coder, "t"), symbols)


@pytest.mark.parametrize("alphabet", [2, 33, 257])
def test_rans_near_entropy_and_huffman_within_a_bit(alphabet):
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.25, 300_000) - 1, alphabet - 1).astype(np.uint16)
    bound = entropy_bits(np.bincount(symbols, minlength=alphabet)) / 8
    rans = len(encode_stream(symbols, alphabet, Coder.RANS))
    huff = len(encode_stream(symbols, alphabet, Coder.HUFFMAN))
    assert bound <= rans <= 1.005 * bound + 600
    assert rans <= huff <= bound + symbols.size / 8 + alphabet


@pytest.mark.parametrize("coder", list(Coder))
def test_damage_raises_format_error(coder):
    rng = np.random.default_rng(3)
    symbols = rng.integers(0, 40, 5000).astype(np.uint16)
    data = bytearray(encode_stream(symbols, 40, coder))
    with pytest.raises(FormatError, match="what"):
        decode_stream(bytes(data[:-3]), symbols.size, 40, coder, "what")
    with pytest.raises(FormatError, match="what"):
        decode_stream(bytes(data) + b"\0\0", symbols.size, 40, coder, "what")
    with pytest.raises(FormatError):
        decode_stream(bytes(data), symbols.size + 7, 40, coder, "what")


def test_rans_detects_payload_corruption():
    rng = np.random.default_rng(4)
    symbols = rng.integers(0, 30, 20000).astype(np.uint16)
    data = bytearray(encode_stream(symbols, 30, Coder.RANS))
    data[len(data) // 2] ^= 0x10
    with pytest.raises(FormatError):
        decode_stream(bytes(data), symbols.size, 30, Coder.RANS, "w")
