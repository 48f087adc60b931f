"""Every kind of file the library writes decodes, in a reader written from docs/format.md alone, to the same tensors."""

from __future__ import annotations

import numpy as np
import pytest
import spec_reader
import torch
from torch import nn

import deepshrink as ds
from deepshrink.testing import Small


def _check(model: nn.Module, path, fresh: nn.Module) -> None:
    decoded = spec_reader.read(path.read_bytes())
    loaded = ds.load(path, into=fresh).state_dict()
    assert sorted(decoded) == sorted(loaded)
    for name, t in loaded.items():
        mine = decoded[name]
        if t.dtype == torch.bfloat16:
            assert np.array_equal(mine, t.view(torch.uint16).numpy()), name
        else:
            assert np.array_equal(mine, t.numpy()), name


def _small() -> nn.Module:
    torch.manual_seed(0)
    m = Small()
    ds.prune_(m, ds.PruneConfig(sparsity=0.6, layer_sparsity={"conv": 0.5, "fc": 0.9, "out": 0.7}))
    ds.share_weights_(m, ds.ShareConfig(conv_bits=8, fc_bits=4, layer_bits={"out": 2}))
    return m


@pytest.mark.parametrize("coder", list(ds.CoderChoice))
def test_every_coder_matches_the_spec(tmp_path, coder):
    m = _small()
    ds.save(m, tmp_path / "m.dsz", ds.EncodeConfig(coder=coder), metadata={"coder": coder.value})
    _check(m, tmp_path / "m.dsz", Small())


def test_edge_cases_match_the_spec(tmp_path):
    class Edge(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.empty = nn.Linear(16, 8)  # fully pruned: one centroid, no non-zero
            self.f16 = nn.Linear(16, 8)  # centroids exactly representable in float16
            self.bf16 = nn.Linear(4, 4)  # in bfloat16
            self.register_buffer("scalar", torch.tensor(3.5))
            self.register_buffer("flags", torch.tensor([True, False, True]))
            self.register_buffer("b16", torch.randn(5).to(torch.bfloat16))

    torch.manual_seed(1)
    m = Edge()
    with torch.no_grad():
        m.f16.weight.copy_(torch.randn(8, 16).half().float())
        m.bf16.weight.copy_((torch.randn(4, 4) * 1e6).bfloat16().float())  # beyond float16
    ds.prune_(m, ds.PruneConfig(layer_sparsity={"empty": 1.0, "f16": 0.5, "bf16": 0.0}))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=8))
    for coder in ("auto", "ctx"):
        ds.save(m, tmp_path / f"{coder}.dsz", ds.EncodeConfig(coder=coder))
        _check(m, tmp_path / f"{coder}.dsz", Edge())

    from deepshrink.format.reader import Reader

    reader = Reader.open(tmp_path / "ctx.dsz")
    stored = {}
    for t in reader.header.tensors:
        if hasattr(t, "codebook_dtype"):  # a delta-coded codebook names its base dtype in its first byte
            delta = t.codebook_dtype == "delta"
            stored[t.name] = ("float32", "float16", "bfloat16")[reader.chunk(t.codebook)[0] & 3] if delta else t.codebook_dtype
    assert stored == {"f16.weight": "float16", "bf16.weight": "bfloat16", "empty.weight": "float16"}
    assert ds.report(tmp_path / "ctx.dsz").layers[0].nnz == 0


def test_golden_version_2_files_match_the_spec():
    from pathlib import Path

    from golden.make_golden import cnn, mlp

    for path in sorted((Path(__file__).resolve().parents[1] / "golden").glob("v2*.dsz")):
        _check(None, path, (cnn if "cnn" in path.name else mlp)())


@pytest.mark.parametrize("swapped", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
@pytest.mark.parametrize("value_ctx", [False, True])
def test_each_ctx_model_matches_the_spec(mixed, value_ctx, swapped):
    import zlib

    from deepshrink.codec import context
    from deepshrink.format.binary import encode_header
    from deepshrink.format.entries import CtxEntry, Section
    from deepshrink.format.reader import Reader
    from deepshrink.format.spec import MAGIC, PREAMBLE_V2

    rng = np.random.default_rng(3)
    shape, k = (12, 5, 8), 13
    positions = np.sort(rng.choice(480, 90, replace=False))
    codes = rng.integers(0, k, 90).astype(np.uint8)
    codebook = np.linspace(-1, 1.5, k).astype(np.float32)
    payload = context.encode(positions, codes, codebook < 0, shape, value_ctx, 6, mixed=mixed, swapped=swapped)
    cb = codebook.astype("<f4").tobytes()
    entry = CtxEntry("w", shape, "float32", 90, k, "float32", value_ctx, 6, Section(0, len(cb)), Section(len(cb), len(payload)),
                     mixed=mixed, swapped=swapped)
    header = encode_header([entry], {})
    data = PREAMBLE_V2.pack(MAGIC, 2, zlib.crc32(header + cb + payload)) + header + cb + payload
    expected = np.zeros(480, np.float32)
    expected[positions] = codebook[codes]
    assert np.array_equal(spec_reader.read(data)["w"].ravel(), expected)
    reader = Reader(data, "crafted")
    assert reader.header.tensors[0].mixed is mixed and reader.header.tensors[0].swapped is swapped
    got_positions, got_codes = reader.ctx(reader.header.tensors[0])[1:]
    assert np.array_equal(got_positions, positions) and np.array_equal(got_codes, codes)
