"""One crafted version-1 file per rule that docs/format.md settles, so that two readers written from it agree on every file."""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.format.reader import Reader
from deepshrink.format.spec import MAGIC, PREAMBLE
from deepshrink.serialize import load_buffer


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    hlen = PREAMBLE.unpack_from(data)[2]
    return json.loads(data[PREAMBLE.size : PREAMBLE.size + hlen]), data[PREAMBLE.size + hlen :]


def _join(header: dict[str, Any] | str, body: bytes) -> bytes:
    hb = (header if isinstance(header, str) else json.dumps(header)).encode()
    return PREAMBLE.pack(MAGIC, 1, len(hb), zlib.crc32(hb)) + hb + body


def _section_edit(data: bytes, ref_of: Callable[[dict[str, Any]], list[int]], edit: Callable[[bytearray], None]) -> bytes:
    """Edit one section's bytes in place and fix its checksum, so that only the rule under test is broken."""
    header, body = _split(data)
    ref = ref_of(header)
    b = bytearray(body)
    chunk = bytearray(b[ref[0] : ref[0] + ref[1]])
    edit(chunk)
    assert len(chunk) == ref[1]
    b[ref[0] : ref[0] + ref[1]] = chunk
    ref[2] = zlib.crc32(bytes(chunk))
    return _join(header, bytes(b))


def _load(data: bytes, model: nn.Module) -> nn.Module:
    return load_buffer(data, model, name="crafted")


def _fails(data: bytes, model: nn.Module, match: str) -> None:
    with pytest.raises(ds.FormatError, match=match):
        _load(data, model)


def _saved(model: nn.Module, tmp_path, **cfg: Any) -> bytes:
    ds.save(model, tmp_path / "m.dsz", ds.EncodeConfig(version=1, **cfg))
    return (tmp_path / "m.dsz").read_bytes()


def _shared_linear(sparsity: float = 0.9, bits: int = 4, n: int = 40) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(n, 30))
    ds.prune_(m, ds.PruneConfig(sparsity=sparsity))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=bits))
    return m


def _fresh(n: int = 40) -> nn.Module:
    return nn.Sequential(nn.Linear(n, 30))


def _weight_entry(h: dict[str, Any]) -> dict[str, Any]:
    return next(t for t in h["tensors"] if t["name"] == "0.weight")


def test_1_entries_bound_is_nnz_plus_numel_shifted(tmp_path):
    data = _saved(_shared_linear(), tmp_path)
    header, body = _split(data)
    t = _weight_entry(header)
    numel, nnz, bits = 40 * 30, t["nnz"], t["index_bits"]
    t["entries"] = nnz + (numel >> bits) + 1
    _fails(_join(header, body), _fresh(), "cannot fit")
    # nnz + (numel >> bits) is the bound, not (nnz + numel) >> bits: a count between the two passes the header.
    t["entries"] = max((nnz + numel) >> bits, nnz) + 1
    assert t["entries"] <= nnz + (numel >> bits)
    with pytest.raises(ds.FormatError) as err:
        _load(_join(header, body), _fresh())
    assert "cannot fit" not in str(err.value)


def test_2_readers_use_clusters_not_bits(tmp_path):
    m = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[0.5, -0.5, 0.25, 0.0]] * 3))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=5))
    data = _saved(m, tmp_path)
    assert _weight_entry(_split(data)[0])["clusters"] == 3  # 3 distinct values at 5 bits, not 31
    assert torch.equal(_load(data, nn.Sequential(nn.Linear(4, 3)))[0].weight, m[0].weight)
    empty = _shared_linear(sparsity=1.0)
    t = _weight_entry(_split(_saved(empty, tmp_path))[0])
    assert (t["clusters"], t["nnz"], t["entries"]) == (1, 0, 0)


def _empty_streams(tmp_path, coder: str) -> bytes:
    return _saved(_shared_linear(sparsity=1.0), tmp_path, coder=coder)


def test_3_empty_rans_stream_is_zero_table_state_2_16_no_payload(tmp_path):
    data = _empty_streams(tmp_path, "rans")
    assert _load(data, _fresh()) is not None
    header, body = _split(data)
    ref = _weight_entry(header)["weights"]["section"]
    assert body[ref[0] : ref[0] + ref[1]] == bytes(2) + struct.pack("<I", 1 << 16)  # alphabet 2: two zero varints

    def nonzero_freq(c: bytearray) -> None:
        c[0] = 1

    def wrong_state(c: bytearray) -> None:
        c[-4:] = struct.pack("<I", (1 << 16) + 1)

    for edit in (nonzero_freq, wrong_state):
        _fails(_section_edit(data, lambda h: _weight_entry(h)["weights"]["section"], edit), _fresh(), "empty rANS")


def test_4_empty_huffman_stream_is_zero_lengths(tmp_path):
    data = _empty_streams(tmp_path, "huffman")
    assert _load(data, _fresh()) is not None

    def nonzero_length(c: bytearray) -> None:
        c[0] = 1

    _fails(_section_edit(data, lambda h: _weight_entry(h)["weights"]["section"], nonzero_length), _fresh(), "empty Huffman")


@pytest.mark.parametrize("coder", ["packed", "huffman"])
def test_5_padding_bits_are_zero(tmp_path, coder):
    # 5-bit weight symbols: the last byte of the packed stream carries padding unless 8 divides 5 * entries.
    m = _shared_linear(sparsity=0.9, bits=4)
    data = _saved(m, tmp_path, coder=coder, index_bits=3)
    header, _ = _split(data)
    t = _weight_entry(header)
    used = t["entries"] * 4 if coder == "packed" else None
    if used is not None:
        assert used % 8, "pick a size whose stream has padding"

    def set_last_bit(c: bytearray) -> None:
        c[-1] |= 1

    edited = _section_edit(data, lambda h: _weight_entry(h)["index"]["section"], set_last_bit)
    with pytest.raises(ds.FormatError, match="padding|invalid code|after its last"):
        _load(edited, _fresh())


def test_6_bool_bytes_are_0_or_1(tmp_path):
    m = nn.Module()
    m.register_buffer("flags", torch.tensor([True, False, True]))
    data = _saved(m, tmp_path)

    def two(c: bytearray) -> None:
        c[0] = 2

    target = nn.Module()
    target.register_buffer("flags", torch.zeros(3, dtype=torch.bool))
    _fails(_section_edit(data, lambda h: h["tensors"][0]["data"], two), target, "0 or 1")


def test_7_metadata_is_required(tmp_path):
    header, body = _split(_saved(_shared_linear(), tmp_path))
    del header["metadata"]
    _fails(_join(header, body), _fresh(), "metadata")


def test_8_strict_json_no_duplicate_keys_no_nan(tmp_path):
    header, body = _split(_saved(_shared_linear(), tmp_path))
    text = json.dumps(header)
    _fails(_join(text.replace('"version": 1', '"version": 1, "version": 1', 1), body), _fresh(), "twice")
    header["metadata"] = {"lr": 0.1}
    _fails(_join(json.dumps(header).replace("0.1", "NaN"), body), _fresh(), "not a JSON number")


@pytest.mark.parametrize("bits", [0, 9, 16])
def test_9_index_bits_lie_in_1_to_8(tmp_path, bits):
    header, body = _split(_saved(_shared_linear(), tmp_path))
    _weight_entry(header)["index_bits"] = bits
    _fails(_join(header, body), _fresh(), "index_bits")


def test_10_a_run_of_exactly_2_to_the_b_zeros_takes_one_filler(tmp_path):
    b = 3
    m = nn.Sequential(nn.Linear(20, 1, bias=False))
    w = torch.zeros(1, 20)
    w[0, [0, 9]] = 1.0  # positions 1..8: a run of exactly 8 = 2^3 zeros
    with torch.no_grad():
        m[0].weight.copy_(w)
    ds.share_weights_(m, ds.ShareConfig(fc_bits=2))
    data = _saved(m, tmp_path, index_bits=b)
    t = _weight_entry(_split(data)[0])
    assert (t["nnz"], t["entries"]) == (2, 3)
    assert torch.equal(_load(data, nn.Sequential(nn.Linear(20, 1, bias=False)))[0].weight, w)


def test_11_codebook_is_little_endian_binary32(tmp_path):
    m = _shared_linear()
    data = _saved(m, tmp_path)
    header, body = _split(data)
    ref = _weight_entry(header)["codebook"]
    expected = m[0].parametrizations.weight.original.detach().numpy().astype("<f4").tobytes()
    assert body[ref[0] : ref[0] + ref[1]] == expected


def test_12_a_0d_tensor_has_one_element(tmp_path):
    m = nn.Module()
    m.scale = nn.Parameter(torch.tensor(2.5))
    data = _saved(m, tmp_path)
    t = _split(data)[0]["tensors"][0]
    assert t["shape"] == [] and t["data"][1] == 4
    target = nn.Module()
    target.scale = nn.Parameter(torch.tensor(0.0))
    assert float(_load(data, target).scale) == 2.5


def test_13_a_header_may_not_claim_unbounded_elements(tmp_path):
    header, body = _split(_saved(_shared_linear(sparsity=1.0), tmp_path))
    _weight_entry(header)["shape"] = [1 << 33]  # 100-odd bytes claiming 8 G elements
    with pytest.raises(ds.FormatError, match="claim"):
        Reader(_join(header, body), "crafted")
    assert Reader(_join(header, body), "crafted", max_elements=1 << 34).header.tensors


def test_14a_sections_tile_the_data_area(tmp_path):
    data = _saved(_shared_linear(), tmp_path)
    header, body = _split(data)
    t = _weight_entry(header)
    t["index"]["section"] = list(t["weights"]["section"])  # shared (overlapping) section
    _fails(_join(header, body), _fresh(), "tile|expected")
    header, body = _split(data)
    header["data_bytes"] += 4  # four unused bytes at the end
    _fails(_join(header, body + bytes(4)), _fresh(), "sections end")


def test_14b_unknown_keys_are_refused(tmp_path):
    for where in ("header", "tensor", "stream"):
        header, body = _split(_saved(_shared_linear(), tmp_path))
        target = {"header": header, "tensor": _weight_entry(header), "stream": _weight_entry(header)["index"]}[where]
        target["compression"] = "zstd"
        _fails(_join(header, body), _fresh(), "unknown keys")


def test_14c_varints_are_minimal(tmp_path):
    data = _saved(_shared_linear(), tmp_path, coder="rans")
    header, body = _split(data)
    ref = _weight_entry(header)["weights"]["section"]
    chunk = body[ref[0] : ref[0] + ref[1]]
    # Re-encode the first one-byte table value with a redundant 0x80 0x00 continuation: same value, one byte more.
    i = 0
    while chunk[i] >= 0x80 or (i > 0 and chunk[i - 1] >= 0x80):
        i += 1
    longer = chunk[:i] + bytes([chunk[i] | 0x80, 0x00]) + chunk[i + 1 :]
    new_body = body[: ref[0]] + longer + body[ref[0] + ref[1] :]
    delta = len(longer) - len(chunk)
    ref[1] += delta
    ref[2] = zlib.crc32(longer)
    for t in header["tensors"]:
        for r in [t.get("data"), t.get("codebook"), (t.get("weights") or {}).get("section"), (t.get("index") or {}).get("section")]:
            if r is not None and r is not ref and r[0] > ref[0]:
                r[0] += delta
    header["data_bytes"] += delta
    _fails(_join(header, new_body), _fresh(), "minimally")


def test_14d_raw_floats_are_finite(tmp_path):
    data = _saved(_shared_linear(), tmp_path)

    def nan(c: bytearray) -> None:
        c[0:4] = np.array([np.nan], "<f4").tobytes()

    _fails(_section_edit(data, lambda h: next(t for t in h["tensors"] if t["name"] == "0.bias")["data"], nan), _fresh(), "NaN")


def test_15_bfloat16_is_the_upper_half_of_binary32(tmp_path):
    m = nn.Module()
    m.register_buffer("t", torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16))
    data = _saved(m, tmp_path)
    header, body = _split(data)
    ref = header["tensors"][0]["data"]
    upper = (np.array([1.0, -2.5, 3.140625], "<f4").view("<u4") >> 16).astype("<u2").tobytes()
    assert body[ref[0] : ref[0] + ref[1]] == upper

    def inf(c: bytearray) -> None:
        c[0:2] = (np.array([np.inf], "<f4").view("<u4") >> 16).astype("<u2").tobytes()

    target = nn.Module()
    target.register_buffer("t", torch.zeros(3, dtype=torch.bfloat16))
    _fails(_section_edit(data, lambda h: h["tensors"][0]["data"], inf), target, "NaN or Inf")
