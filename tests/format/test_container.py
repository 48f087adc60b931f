from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import deepshrink as ds
from deepshrink.format.spec import MAGIC, PREAMBLE
from deepshrink.serialize import saved_size


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6 * 6 * 6, 10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(self.bn(self.conv(x)).flatten(1))))


def compressed_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    m = Net()
    m.train()
    m(torch.randn(8, 1, 8, 8))  # non-trivial BatchNorm statistics
    ds.prune_(m, ds.PruneConfig(sparsity=0.8, layer_sparsity={"head": 0.0}), filter_fn=lambda mod, n: n != "head")
    ds.share_weights_(m, ds.ShareConfig(conv_bits=6, fc_bits=4), filter_fn=lambda mod, n: n != "head")
    return m.eval()


@pytest.mark.parametrize("coder", list(ds.CoderChoice))
@pytest.mark.parametrize("index_bits", [None, 2, 5])
def test_round_trip_is_bit_exact(tmp_path, coder, index_bits):
    m = compressed_net()
    path = tmp_path / "m.dsz"
    size = ds.save(m, path, ds.EncodeConfig(coder=coder, index_bits=index_bits))
    assert size == path.stat().st_size
    fresh = ds.load(path, into=Net().eval())
    plain = ds.strip_(compressed_net())
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, plain.state_dict()[k]), k
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(fresh(x), m(x))


def test_file_is_small_and_loads_with_pickle_disabled(tmp_path, monkeypatch):
    import pickle

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1000, 400))
    ds.prune_(m, ds.PruneConfig(sparsity=0.95))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=4))
    path = tmp_path / "m.dsz"
    ds.save(m, path)
    dense = 1000 * 400 * 4 + 400 * 4
    assert path.stat().st_size < dense / 20
    assert path.read_bytes().startswith(MAGIC)

    def refuse(*args, **kwargs):
        raise AssertionError("load used pickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh = ds.load(path, into=nn.Sequential(nn.Linear(1000, 400)))
    assert torch.equal(fresh[0].weight, m[0].weight)


def test_mismatched_model_raises_before_touching_it(tmp_path):
    m = compressed_net()
    ds.save(m, tmp_path / "m.dsz")
    other = nn.Sequential(nn.Linear(3, 3))
    before = other[0].weight.detach().clone()
    with pytest.raises(ds.ModelMismatchError, match="not in the model"):
        ds.load(tmp_path / "m.dsz", into=other)
    assert torch.equal(other[0].weight, before)
    wrong = Net()
    wrong.fc = nn.Linear(6 * 6 * 6, 11)
    with pytest.raises(ds.ModelMismatchError, match="fc.weight"):
        ds.load(tmp_path / "m.dsz", into=wrong)
    with pytest.raises(ds.ModelMismatchError, match="strip_"):
        ds.load(tmp_path / "m.dsz", into=compressed_net())


def _rewrite_header(path, mutate):
    raw = path.read_bytes()
    _, version, hlen, _ = PREAMBLE.unpack_from(raw)
    header = json.loads(raw[PREAMBLE.size : PREAMBLE.size + hlen])
    mutate(header)
    hb = json.dumps(header).encode()
    path.write_bytes(PREAMBLE.pack(MAGIC, version, len(hb), zlib.crc32(hb)) + hb + raw[PREAMBLE.size + hlen :])


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda h: h["tensors"][1].update(nnz=10**9), "nnz"),
        (lambda h: h["tensors"][1].update(shape=[-1, 3]), "shape"),
        (lambda h: h["tensors"][1]["weights"].update(coder="zip"), "coder"),
        (lambda h: h["tensors"][1]["codebook"].__setitem__(0, 10**12), "offset"),
        (lambda h: h.update(data_bytes=h["data_bytes"] + 1), "describes"),
        (lambda h: h["tensors"][0].update(encoding="pickle"), "unknown encoding"),
        (lambda h: h["tensors"][1].update(clusters=1000), "clusters"),
    ],
)
def test_bad_header_fields_raise_format_error(tmp_path, mutate, match):
    path = tmp_path / "m.dsz"
    ds.save(compressed_net(), path, ds.EncodeConfig(version=1))
    _rewrite_header(path, mutate)
    with pytest.raises(ds.FormatError, match=match):
        ds.load(path, into=Net())


def test_damage_and_truncation_raise_format_error(tmp_path):
    path = tmp_path / "m.dsz"
    ds.save(compressed_net(), path)
    raw = path.read_bytes()
    for cut in (0, 5, PREAMBLE.size, PREAMBLE.size + 10, len(raw) - 1):
        path.write_bytes(raw[:cut])
        with pytest.raises(ds.FormatError):
            ds.load(path, into=Net())
    flipped = bytearray(raw)
    flipped[-20] ^= 0xFF
    path.write_bytes(bytes(flipped))
    with pytest.raises(ds.FormatError, match="checksum"):
        ds.load(path, into=Net())
    path.write_bytes(b"\x89DSZ\r\n\x1a\n" + struct.pack("<III", 3, 0, 0))
    with pytest.raises(ds.FormatError, match="version 3"):
        ds.load(path, into=Net())
    with pytest.raises(ds.FormatError, match="cannot read"):
        ds.load(tmp_path / "missing.dsz", into=Net())


def test_atomic_save_survives_a_kill(tmp_path):
    path = tmp_path / "m.dsz"
    ds.save(compressed_net(), path)
    good = path.read_bytes()
    # A child process starts saving a large model and is killed while writing.
    script = f"""
import os, signal, torch, deepshrink as ds, deepshrink.format.writer as w
from torch import nn
real_write = w.atomic_write
def slow(path, chunks):
    orig_open = os.fdopen
    def fdopen(fd, mode):
        f = orig_open(fd, mode)
        w = f.write
        def write(b):
            w(b[: len(b) // 2]); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        f.write = write
        return f
    os.fdopen = fdopen
    real_write(path, chunks)
w.atomic_write = slow
m = nn.Sequential(nn.Linear(500, 500))
ds.save(m, {str(path)!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["m.dsz"]


def test_raw_dtypes_round_trip(tmp_path):
    class Buffers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for i, dt in enumerate([torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool, torch.uint8]):
                self.register_buffer(f"b{i}", (torch.arange(6).reshape(2, 3) % 2).to(dt))
            self.register_buffer("scalar", torch.tensor(3.5))

    m = Buffers()
    ds.save(m, tmp_path / "b.dsz")
    fresh = Buffers()
    for b in fresh.buffers():
        b.zero_()
    ds.load(tmp_path / "b.dsz", into=fresh)
    for (k, a), (_, b) in zip(m.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), k


@st.composite
def layer_cases(draw):
    dims = draw(st.lists(st.integers(0, 9), min_size=1, max_size=4))
    kind = draw(st.sampled_from(["random", "empty_mask", "dense", "one"]))
    bits = draw(st.integers(1, 8))
    coder = draw(st.sampled_from(list(ds.CoderChoice)))
    index_bits = draw(st.sampled_from([None, 2, 3, 8]))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**31))
    return dims, kind, bits, coder, index_bits, density, seed


class Holder(nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.layer = nn.Linear(1, 1, bias=False)
        self.layer.weight = nn.Parameter(torch.zeros(shape))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layer_cases())
def test_property_round_trip_any_shape(tmp_path, case):
    dims, kind, bits, coder, index_bits, density, seed = case
    g = torch.Generator().manual_seed(seed)
    if kind == "one":
        dims = [1]
    w = torch.randn(dims, generator=g)
    if kind == "empty_mask":
        w.zero_()
    elif kind == "random":
        w *= torch.rand(dims, generator=g) < density
    m = Holder(dims)
    with torch.no_grad():
        m.layer.weight.copy_(w)
    ds.share_weights_(m, ds.ShareConfig(fc_bits=bits))
    expected = m.layer.weight.detach().clone()
    assert torch.unique(expected[expected != 0]).numel() <= 2**bits - 1
    path = tmp_path / "p.dsz"
    size = ds.save(m, path, ds.EncodeConfig(coder=coder, index_bits=index_bits), metadata={"seed": seed})
    assert saved_size(m, ds.EncodeConfig(coder=coder, index_bits=index_bits), metadata={"seed": seed}) == size  # nothing written
    fresh = Holder(dims)
    ds.load(path, into=fresh)
    assert torch.equal(fresh.layer.weight, expected)
    rep = ds.report(path)
    if rep.layers:
        assert rep.layers[0].nnz == int((expected != 0).sum())
    else:  # auto stored the tiny layer as plain float32, cheaper than any code; the report says so
        assert rep.raw == {"layer.weight": 4 * expected.numel()}


def test_nan_inf_and_unsupported_raise_before_work(tmp_path):
    m = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with torch.no_grad():
        m[1].weight[0] = float("inf")
    with pytest.raises(ds.InvalidModelError, match="'1.weight'.*NaN or Inf"):
        ds.save(m, tmp_path / "x.dsz")
    assert not (tmp_path / "x.dsz").exists()
    # Sharing takes a LayerNorm's small tensors (ShareConfig.other_bits); pruning never does.
    with pytest.raises(ds.UnsupportedLayerError, match="LayerNorm"):
        ds.prune_(m, ds.PruneConfig(layer_sparsity={"1": 0.5}))


def test_saving_a_pruned_or_clustered_layer_that_is_not_shared_says_it_goes_in_raw(tmp_path, caplog):
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 5))
    ds.prune_(model, ds.PruneConfig(layer_sparsity={"0": 0.9}))
    with caplog.at_level("WARNING", logger="deepshrink.serialize"):
        ds.save(model, tmp_path / "pruned.dsz")
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "'0.weight' is pruned" in said[0] and "4800 bytes" in said[0] and "share_weights_" in said[0]
    caplog.clear()
    ds.cluster_weights_(model, ds.ShareConfig(fc_bits=3), filter_fn=lambda m, name: name == "0")
    with caplog.at_level("WARNING", logger="deepshrink.serialize"):
        ds.save(model, tmp_path / "clustered.dsz")
    assert [r.getMessage() for r in caplog.records if "'0.weight' is clustered" in r.getMessage()]
    caplog.clear()
    ds.share_weights_(model, ds.ShareConfig(fc_bits=3), filter_fn=lambda m, name: name == "0")
    with caplog.at_level("WARNING", logger="deepshrink.serialize"):
        ds.save(model, tmp_path / "shared.dsz")
    assert not caplog.records
