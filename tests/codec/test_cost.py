"""The cost model predicts every coded stream's size: exactly for packed and Huffman, within its slack for rANS."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import deepshrink as ds
from deepshrink.codec.cost import RANS_SLACK_BYTES, best_coder, predicted_bytes
from deepshrink.codec.entropy import Coder, encode_stream
from deepshrink.format.reader import Reader


@st.composite
def streams(draw):
    alphabet = draw(st.integers(1, 257))
    n = draw(st.integers(0, 3000))
    skew = draw(st.floats(0.0, 3.0))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    p = np.exp(-skew * np.arange(alphabet))
    return rng.choice(alphabet, size=n, p=p / p.sum()).astype(np.uint16), alphabet


@settings(max_examples=200, deadline=None)
@given(streams(), st.sampled_from(list(Coder)))
def test_predicted_size_is_the_written_size(stream, coder):
    symbols, alphabet = stream
    counts = np.bincount(symbols, minlength=alphabet)
    written = len(encode_stream(symbols, alphabet, coder))
    if coder is Coder.RANS:
        assert abs(written - predicted_bytes(counts, alphabet, coder)) <= RANS_SLACK_BYTES
    else:
        assert written == predicted_bytes(counts, alphabet, coder)


def test_every_stream_of_a_saved_file_is_predicted(tmp_path):
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    ds.prune_(m, ds.PruneConfig(layer_sparsity={"0": 0.9, "2": 0.5}))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=5))
    ds.save(m, tmp_path / "m.dsz", ds.EncodeConfig(version=1))  # version 1: every layer in entry-wise streams
    reader = Reader.open(tmp_path / "m.dsz")
    checked = 0
    for t in reader.header.tensors:
        for key, s in (("weights", getattr(t, "weights", None)), ("index", getattr(t, "index", None))):
            if s is None:
                continue
            counts = np.bincount(reader.stream(t, key), minlength=s.alphabet)
            predicted = predicted_bytes(counts, s.alphabet, s.coder)
            slack = RANS_SLACK_BYTES if s.coder is Coder.RANS else 0
            assert abs(s.section.length - predicted) <= slack, (t.name, key, s.coder)
            # auto wrote the coder the model predicts best, or Huffman where rANS was predicted and lost.
            assert s.coder is best_coder(counts, s.alphabet) or (s.coder is Coder.HUFFMAN and best_coder(counts, s.alphabet) is Coder.RANS)
            checked += 1
    assert checked == 4
