"""One crafted version-2 file per rule of docs/format.md's "What a version-2 reader validates"."""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
import pytest
import torch
from torch import nn

import deepshrink as ds
from deepshrink.format.binary import encode_header, varint
from deepshrink.format.entries import CtxEntry, RawEntry, Section
from deepshrink.format.spec import MAGIC, PREAMBLE_V2
from deepshrink.serialize import load_buffer
from deepshrink.testing import _v2_rebuild, _Walk, _with_crc


def _file(header: bytes, data: bytes) -> bytes:
    return PREAMBLE_V2.pack(MAGIC, 2, zlib.crc32(header + data)) + header + data


def _raw(name: str, values: np.ndarray) -> tuple[RawEntry, bytes]:
    data = values.astype("<f4").tobytes()
    return RawEntry(name, tuple(values.shape), "float32", Section(0, len(data))), data


def _fails(data: bytes, match: str, model: nn.Module | None = None) -> None:
    with pytest.raises(ds.FormatError, match=match):
        load_buffer(data, model if model is not None else nn.Linear(3, 2), name="crafted")


def _linear_file(metadata: dict | None = None) -> tuple[bytes, list[RawEntry]]:
    w, wd = _raw("weight", np.arange(6, dtype=np.float32).reshape(2, 3))
    b, bd = _raw("bias", np.ones(2, np.float32))
    return _file(encode_header([w, b], metadata or {}), wd + bd), [w, b]


def _ctx_linear(tmp_path) -> bytes:
    torch.manual_seed(0)
    m = nn.Linear(30, 20)
    ds.prune_(m, ds.PruneConfig(sparsity=0.8))
    ds.share_weights_(m, ds.ShareConfig(fc_bits=3))
    ds.save(m, tmp_path / "c.dsz", ds.EncodeConfig(coder="ctx"))
    return (tmp_path / "c.dsz").read_bytes()


def test_crafted_base_file_loads():
    data, _ = _linear_file({"note": "x"})
    m = load_buffer(data, nn.Linear(3, 2), name="crafted")
    assert torch.equal(m.weight, torch.arange(6.0).reshape(2, 3))


def test_1_checksum_covers_every_byte_after_the_preamble():
    data, _ = _linear_file()
    for i in (16, len(data) // 2, len(data) - 1):
        b = bytearray(data)
        b[i] ^= 1
        _fails(bytes(b), "checksum mismatch")
    _fails(data + b"\x00", "checksum mismatch")


def test_2_varints_are_in_shortest_form():
    data, _ = _linear_file()
    walk = _Walk(data)
    start, end, _ = next(f for f in walk.fields[1:] if f[2] == "v")
    value = data[start]
    _fails(_v2_rebuild(data, walk, start, end, bytes([value | 0x80, 0x00])), "shortest form")


def test_2_header_body_ends_after_the_last_record():
    data, entries = _linear_file()
    header = encode_header(entries, {})
    body = header[len(varint(len(header) - 1)) :] + b"\x00"
    _fails(_file(varint(len(body)) + body, data[16 + len(header) :]), "after its last tensor record")


def test_2_metadata_is_absent_or_a_non_empty_strict_object():
    _, entries = _linear_file()
    tail = b"".join(np.arange(6, dtype="<f4").tobytes() for _ in range(1))
    for meta, match in ((b"{}", "non-empty JSON object"), (b'{"a":1,"a":2}', "strict JSON"), (b"[1]", "non-empty JSON object"),
                        (b'{"a":NaN}', "JSON")):
        body = varint(len(meta)) + meta + encode_header(entries, {})[2:]
        _fails(_file(varint(len(body)) + body, tail + np.ones(2, "<f4").tobytes()), match)


def test_3_kind_byte_codes_are_known():
    data, _ = _linear_file()
    walk = _Walk(data)
    kinds = [f for f in walk.fields if f[2] == "u8"]
    for bad in (0x80, 0x0A, 0x30):
        _fails(_v2_rebuild(data, walk, kinds[0][0], kinds[0][1], bytes([bad])), "kind byte")


# The walk's fields: H, M, metadata, T, then per record P, S, name, kind, ndim, dims, then the encoding's
# fields. In _linear_file raw "weight" [2, 3] is fields 4-10 and raw "bias" [2] fields 11-16.
def _ctx_params_field(data: bytes) -> int:
    """Index of the ctx record's params byte (its payload length is the next field)."""
    fields = _Walk(data).fields
    kind = next(i for i, f in enumerate(fields) if f[2] == "u8" and (data[f[0]] >> 4) & 3 == 2)
    return next(i for i in range(kind + 1, len(fields)) if fields[i][2] == "u8")


def _edit(data: bytes, field: int, new: bytes) -> bytes:
    walk = _Walk(data)
    start, end, _ = walk.fields[field]
    return _v2_rebuild(data, walk, start, end, new)


def test_3_names_prefix_and_emptiness():
    data, _ = _linear_file()
    _fails(_edit(data, 11, varint(99)), "prefix")
    w, wd = _raw("", np.zeros(1, np.float32))
    _fails(_file(encode_header([w], {}), wd), "empty name")


def test_3_ndim_and_shape_bounds():
    _, wd = _raw("x", np.zeros(1, np.float32))
    header = encode_header([RawEntry("x", (1,) * 9, "float32", Section(0, 4))], {})
    _fails(_file(header, wd), "ndim")


def test_3_ctx_axes_swapped_only_with_two_or_more_dimensions():
    from deepshrink.codec import context

    codebook = np.array([-1.0, 2.0], np.float32)
    positions, codes = np.array([1, 4]), np.array([0, 1], np.uint8)
    payload = context.encode(positions, codes, codebook < 0, (6,), False, 6)
    cb = codebook.astype("<f4").tobytes()
    flat = CtxEntry("x", (6,), "float32", 2, 2, "float32", False, 6, Section(0, len(cb)), Section(len(cb), len(payload)))
    data = _file(encode_header([flat], {}), cb + payload)
    from deepshrink.format.reader import Reader

    assert Reader(data, "crafted").header.tensors[0].swapped is False
    swapped = _file(encode_header([dataclasses.replace(flat, swapped=True)], {}), cb + payload)
    with pytest.raises(ds.FormatError, match="fewer than two"):
        Reader(swapped, "crafted")


def test_3_and_7_a_delta_codebook_has_its_length_in_range_and_decodes_exactly(tmp_path):
    data = _ctx_linear(tmp_path)
    params = _ctx_params_field(data)
    assert data[_Walk(data).fields[params][0]] & 3 == 3, "the 7-centroid float32 codebook is stored delta-coded"
    _fails(_edit(data, params + 1, varint(2)), "codebook length", nn.Linear(30, 20))
    lo, _ = _Walk(data).sections[1]  # the weight's codebook (the bias's data comes first)
    _fails(_with_crc(data[:lo] + bytes([data[lo] | 0x80]) + data[lo + 1 :]), "base dtype", nn.Linear(30, 20))


def test_4_names_are_distinct():
    a, ad = _raw("weight", np.zeros(1, np.float32))
    _fails(_file(encode_header([a, a], {}), ad + ad), "twice")


def test_5_sections_tile_the_data_area():
    data, _ = _linear_file()
    _fails(_with_crc(data + b"\x00\x00\x00\x00"), "sections end at")
    _fails(_with_crc(data[:-4]), "run past")


def test_6_element_budget_without_a_model():
    from deepshrink.format.reader import Reader

    big = CtxEntry("x", (1 << 20, 1 << 13), "float32", 0, 1, "float32", False, 6, Section(0, 4), Section(4, 0))
    with pytest.raises(ds.FormatError, match="elements"):
        Reader(_file(encode_header([big], {}), np.zeros(1, "<f4").tobytes()), "crafted")


def test_7_raw_floats_finite_and_bools_0_or_1():
    w, _ = _raw("weight", np.zeros((2, 3), np.float32))
    bad = np.zeros(6, "<f4")
    bad[2] = np.inf
    b, bd = _raw("bias", np.ones(2, np.float32))
    _fails(_file(encode_header([w, b], {}), bad.tobytes() + bd), "NaN or Inf")


def test_8_ctx_payload_trailing_and_zero_end(tmp_path):
    data = _ctx_linear(tmp_path)
    lo, hi = _Walk(data).sections[-1]  # the bias, the codebook, then the ctx payload
    params = _ctx_params_field(data)
    length = params + (2 if data[_Walk(data).fields[params][0]] & 3 == 3 else 1)  # a delta codebook's length comes first
    # Bytes the decoder never reads are trailing (a byte or two more may fall within what it reads past
    # the end, and decode the same); a payload never ends with 0x00.
    for extra, match in ((b"\x01" * 8, "damaged"), (b"\x00", "zero byte")):
        grown = data[:hi] + extra + data[hi:]
        _fails(_edit(grown, length, varint(hi - lo + len(extra))), match, nn.Linear(30, 20))


def test_ctx_entry_fields_round_trip(tmp_path):
    from deepshrink.format.reader import read_header

    data = _ctx_linear(tmp_path)
    entry = next(t for t in read_header(tmp_path / "c.dsz").tensors if isinstance(t, CtxEntry))
    assert entry.clusters == 7 and 4 <= entry.max_shift <= 11 and entry.nnz == 120
    assert load_buffer(data, nn.Linear(30, 20), name="c") is not None
