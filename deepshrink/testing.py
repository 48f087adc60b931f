"""Mutations of ``.dsz`` files for fuzzing readers (used by the test suite and ``benchmarks/fuzz.py``).

Every mutation returns new bytes. Some keep the checksums consistent on purpose, so that damage
reaches the validators and decoders behind them rather than stopping there. Version-1 files are
edited through their JSON header; version-2 files through a walk of their binary header that records
where each field lies (independent of the library's parser), after which the CRC is recomputed.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable
from typing import Any

from torch import nn

from .format.binary import varint
from .format.spec import MAGIC, PREAMBLE, PREAMBLE_V2

__all__ = ["MUTATIONS", "Small", "base_files", "load_outcome", "mutate", "section_boundaries"]

HOSTILE_VALUES: list[Any] = [-1, 0, 1, 2**31, 2**32 - 1, 2**40, 2**63, -(2**63), 10**30, 1.5, float("1e308"), "x", None, [], {},
                             True, [0, 0, 0], [2**62, 1, 0]]


def _split(data: bytes) -> tuple[dict[str, Any], bytes] | None:
    if len(data) < PREAMBLE.size:
        return None
    magic, _, hlen, _ = PREAMBLE.unpack_from(data)
    if magic != MAGIC or PREAMBLE.size + hlen > len(data):
        return None
    try:
        return json.loads(data[PREAMBLE.size : PREAMBLE.size + hlen]), data[PREAMBLE.size + hlen :]
    except ValueError:
        return None


def _join(header: dict[str, Any], body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    return PREAMBLE.pack(MAGIC, 1, len(hb), zlib.crc32(hb)) + hb + body


def _refs(header: dict[str, Any]) -> list[list[int]]:
    refs = []
    for t in header.get("tensors", []):
        for key in ("data", "codebook"):
            if key in t:
                refs.append(t[key])
        for key in ("weights", "index"):
            if key in t:
                refs.append(t[key]["section"])
    return refs


def _version(data: bytes) -> int:
    return int.from_bytes(data[8:12], "little") if len(data) >= 12 and data[:8] == MAGIC else 0


def _with_crc(data: bytes | bytearray) -> bytes:
    """A version-2 file with its checksum made to match whatever it now holds."""
    b = bytearray(data)
    if len(b) >= PREAMBLE_V2.size:
        b[12:16] = zlib.crc32(bytes(b[PREAMBLE_V2.size :])).to_bytes(4, "little")
    return bytes(b)


class _Walk:
    """Where each field of a version-2 header lies: ``fields`` are ``(start, end, type)``, type 'v' (varint),
    'u8' or 'bytes'; ``sections`` are ``(start, end)`` in the file. Stops quietly at anything malformed."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, PREAMBLE_V2.size
        self.fields: list[tuple[int, int, str]] = []
        self.sections: list[tuple[int, int]] = []
        self.body_end = len(data)
        try:
            self._walk()
        except (IndexError, ValueError):
            pass

    def _varint(self) -> int:
        start, v, shift = self.pos, 0, 0
        while True:
            b = self.data[self.pos]
            self.pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80 or shift > 63:
                break
        self.fields.append((start, self.pos, "v"))
        return v

    def _u8(self) -> int:
        self.fields.append((self.pos, self.pos + 1, "u8"))
        self.pos += 1
        return self.data[self.pos - 1]

    def _bytes(self, n: int) -> None:
        if n > len(self.data):
            raise ValueError("too long")
        self.fields.append((self.pos, self.pos + n, "bytes"))
        self.pos += n

    def _walk(self) -> None:
        hlen = self._varint()
        self.body_end = self.pos + hlen
        self._bytes(self._varint())
        data_at = self.body_end
        for _ in range(min(self._varint(), 10_000)):
            self._varint()
            self._bytes(self._varint())
            kind = self._u8()
            shape = [self._varint() for _ in range(min(self._varint(), 16))]
            if kind & 0x40:
                for _ in range(min(self._varint(), 64)):
                    self._bytes(self._varint())
            numel = 1
            for d in shape:
                numel *= d
            lengths = self._lengths(kind, numel)
            for n in lengths:
                self.sections.append((data_at, data_at + n))
                data_at += n

    def _lengths(self, kind: int, numel: int) -> list[int]:
        from .format.spec import CODEBOOK_DTYPES, DTYPE_CODES, itemsize

        encoding = (kind >> 4) & 0x3
        if encoding == 0:
            return [numel * itemsize(DTYPE_CODES[kind & 0x0F])]
        k = self._varint()
        if encoding == 1:
            cb = self._codebook_length(CODEBOOK_DTYPES[self._u8()], k)
            self._varint(), self._varint(), self._u8(), self._u8()
            w = self._varint()
            self._u8()
            return [cb, w, self._varint()]
        self._varint()
        cb = self._codebook_length(CODEBOOK_DTYPES[self._u8() & 0x3], k)
        return [cb, self._varint()]

    def _codebook_length(self, dtype: str, k: int) -> int:
        from .format.spec import itemsize

        return self._varint() if dtype == "delta" else k * itemsize(dtype)


def _v2_rebuild(data: bytes, walk: _Walk, start: int, end: int, new: bytes) -> bytes:
    """Replace bytes ``[start, end)`` of the header body, fix the header length varint and the CRC."""
    hstart, hend, _ = walk.fields[0]
    body = data[hend:start] + new + data[end : walk.body_end]
    return _with_crc(data[:hstart] + varint(len(body)) + body + data[walk.body_end :])


def section_boundaries(data: bytes) -> list[int]:
    """Byte offsets where the preamble, header and each section begin and end."""
    if _version(data) == 2:
        walk = _Walk(data)
        return sorted({0, 8, 12, 16, walk.body_end, len(data)} | {x for sec in walk.sections for x in sec})
    parts = _split(data)
    out = {0, 8, 12, 16, PREAMBLE.size, len(data)}
    if parts is None:
        return sorted(out)
    header, body = parts
    start = len(data) - len(body)
    out.add(start)
    for off, length, _ in _refs(header):
        out |= {start + off, start + off + length}
    return sorted(out)


def bit_flips(data: bytes, rng: random.Random) -> bytes:
    if not data:
        return bytes([rng.randrange(256)])
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def header_byte_edit(data: bytes, rng: random.Random) -> bytes:
    parts = _split(data)
    end = len(data) - len(parts[1]) if parts else min(len(data), 64)
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        b[rng.randrange(end)] = rng.randrange(256)
    return bytes(b)


def truncate_at_boundary(data: bytes, rng: random.Random) -> bytes:
    cut = rng.choice(section_boundaries(data)) + rng.choice([-1, 0, 1])
    cut = max(0, min(len(data) - 1, cut))
    return data[:cut]


def extend(data: bytes, rng: random.Random) -> bytes:
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


def _crc_fixed(data: bytes, rng: random.Random) -> bytes:
    """Any byte edit of a version-2 file with its checksum recomputed (version 1: a plain bit flip)."""
    if _version(data) != 2:
        return bit_flips(data, rng)
    return _with_crc(bit_flips(data, rng))


def swap_sections(data: bytes, rng: random.Random) -> bytes:
    if _version(data) == 2:
        sections = [sec for sec in _Walk(data).sections if sec[1] <= len(data)]
        same = [(a, b) for a in sections for b in sections if a < b and a[1] - a[0] == b[1] - b[0] > 0]
        if not same:
            return _crc_fixed(data, rng)
        (a0, a1), (b0, b1) = rng.choice(same)
        return _with_crc(data[:a0] + data[b0:b1] + data[a1:b0] + data[a0:a1] + data[b1:])
    parts = _split(data)
    if parts is None:
        return bit_flips(data, rng)
    header, body = parts
    refs = sorted((r[0], r[1]) for r in _refs(header))
    if len(refs) < 2:
        return bit_flips(data, rng)
    (a0, al), (b0, bl) = sorted(rng.sample(refs, 2))
    if a0 + al > b0:
        return bit_flips(data, rng)
    new_body = body[:a0] + body[b0 : b0 + bl] + body[a0 + al : b0] + body[a0 : a0 + al] + body[b0 + bl :]
    return data[: len(data) - len(body)] + new_body


def _int_paths(obj: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((*path, k))
            out += _int_paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((*path, i))
            out += _int_paths(v, (*path, i))
    return out


def _v2_field_edit(data: bytes, rng: random.Random) -> bytes:
    """Set one binary header field to a hostile value (a huge or boundary varint, any byte, other bytes)."""
    walk = _Walk(data)
    if len(walk.fields) < 2:
        return bit_flips(data, rng)
    start, end, kind = rng.choice(walk.fields[1:])
    if kind == "v":
        v = rng.choice([0, 1, 2, 7, 8, 9, 255, 256, 257, 2**20, 2**32, 2**40, 2**40 + 1, 2**62])
        new = varint(v) if rng.random() < 0.9 else varint(v)[:-1] + b"\x80\x00"  # sometimes not in shortest form
    elif kind == "u8":
        new = bytes([rng.randrange(256)])
    else:
        new = rng.choice([b"", b"\xff\xfe", b"x" * rng.randint(1, 20), bytes(data[start:end])[::-1], b'{"a":1,"a":2}', b"NaN"])
    return _v2_rebuild(data, walk, start, end, new)


def hostile_header_field(data: bytes, rng: random.Random) -> bytes:
    """Set a header field to a huge, negative or ill-typed value, with a valid header checksum."""
    if _version(data) == 2:
        return _v2_field_edit(data, rng)
    parts = _split(data)
    if parts is None:
        return bit_flips(data, rng)
    header, body = parts
    path = rng.choice(_int_paths(header))
    node = header
    for key in path[:-1]:
        node = node[key]
    if rng.random() < 0.1 and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = rng.choice(HOSTILE_VALUES)
    return _join(header, body)


def payload_damage_with_valid_crc(data: bytes, rng: random.Random) -> bytes:
    """Damage one section and fix its checksum, so the decoders themselves see the damage."""
    if _version(data) == 2:
        sections = [sec for sec in _Walk(data).sections if sec[1] > sec[0] and sec[1] <= len(data)]
        if not sections:
            return bit_flips(data, rng)
        lo, hi = rng.choice(sections)
        b = bytearray(data)
        for _ in range(rng.randint(1, 6)):
            b[rng.randrange(lo, hi)] = rng.randrange(256)
        return _with_crc(b)
    parts = _split(data)
    if parts is None:
        return bit_flips(data, rng)
    header, body = parts
    refs = [r for r in _refs(header) if r[1] > 0]
    if not refs:
        return bit_flips(data, rng)
    ref = rng.choice(refs)
    b = bytearray(body)
    for _ in range(rng.randint(1, 6)):
        b[ref[0] + rng.randrange(ref[1])] = rng.randrange(256)
    ref[2] = zlib.crc32(bytes(b[ref[0] : ref[0] + ref[1]]))
    return _join(header, bytes(b))


def tensor_entry_edit(data: bytes, rng: random.Random) -> bytes:
    """Change counts, shapes, coders or widths of one tensor consistently enough to pass the checksums."""
    if _version(data) == 2:
        # A small step on one field (counts off by one, a neighbouring code), the CRC kept valid.
        walk = _Walk(data)
        fields = [f for f in walk.fields[1:] if f[2] != "bytes"]
        if not fields:
            return bit_flips(data, rng)
        start, end, kind = rng.choice(fields)
        value, shift = (data[start], 0) if kind == "u8" else (0, 0)
        for b in data[start:end] if kind == "v" else b"":
            value |= (b & 0x7F) << shift
            shift += 7
        value = max(0, value + rng.choice([-2, -1, 1, 2, 16]))
        new = bytes([value & 0xFF]) if kind == "u8" else varint(value)
        return _v2_rebuild(data, walk, start, end, new)
    parts = _split(data)
    if parts is None:
        return bit_flips(data, rng)
    header, body = parts
    t = rng.choice(header["tensors"])
    field = rng.choice(["nnz", "entries", "index_bits", "clusters", "shape", "coder", "dtype", "encoding", "aliases"])
    if field == "aliases":
        names = [x["name"] for x in header["tensors"]]
        t["aliases"] = rng.choice([[], [rng.choice(names)], ["nowhere.weight"], [""], [3], "tied.weight", None])
    elif field == "shape":
        t["shape"] = [rng.choice([0, 1, 7, 2**20]) for _ in range(rng.randint(0, 3))]
    elif field == "coder" and "weights" in t:
        t[rng.choice(["weights", "index"])]["coder"] = rng.choice(["rans", "huffman", "packed"])
    elif field == "dtype":
        t["dtype"] = rng.choice(["float16", "int64", "bool", "float32"])
    elif field == "encoding":
        t["encoding"] = rng.choice(["raw", "shared_sparse"])
    elif field in t:
        t[field] = max(0, int(t[field]) + rng.choice([-2, -1, 1, 2, 100]))
    return _join(header, body)


MUTATIONS: dict[str, Callable[[bytes, random.Random], bytes]] = {
    "bit_flips": bit_flips,
    "header_byte_edit": header_byte_edit,
    "truncate_at_boundary": truncate_at_boundary,
    "extend": extend,
    "swap_sections": swap_sections,
    "hostile_header_field": hostile_header_field,
    "payload_damage_with_valid_crc": payload_damage_with_valid_crc,
    "tensor_entry_edit": tensor_entry_edit,
    "crc_fixed_bit_flips": _crc_fixed,
}


def load_outcome(data: bytes, model: Any) -> str:
    """Load mutated bytes into ``model``: 'loaded' or 'FormatError'; any other exception propagates."""
    from .errors import FormatError
    from .serialize import load_buffer

    try:
        load_buffer(data, model, name="fuzz")
    except FormatError:
        return "FormatError"
    return "loaded"


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """Apply one random mutation. Structure-aware mutators assume a sane header; on input an earlier
    mutation already mangled they may fail themselves, and a plain bit flip is used instead."""
    name = rng.choice(list(MUTATIONS))
    try:
        return name, MUTATIONS[name](data, rng)
    except (TypeError, KeyError, AttributeError, IndexError, ValueError):
        return "bit_flips", bit_flips(data, rng)


class Small(nn.Module):
    """The fuzzers' model: every registered layer kind, BatchNorm buffers and a tied weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3)
        self.fc = nn.Linear(120, 40)
        self.out = nn.Linear(40, 10)
        self.bn = nn.BatchNorm1d(10)
        self.tied = nn.Linear(40, 10)  # holds out's weight: files carry an alias
        self.tied.weight = self.out.weight
        self.emb = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 6, bidirectional=True)
        self.attn = nn.MultiheadAttention(8, 2)
        self.up = nn.ConvTranspose1d(3, 4, 3)
        self.bil = nn.Bilinear(4, 5, 3)


def base_files() -> list[bytes]:
    """One compressed ``Small`` saved with each coder choice (format version 2), and once in version 1: the files the fuzzers mutate."""
    import tempfile
    from pathlib import Path

    import torch

    from .format.writer import CoderChoice, EncodeConfig
    from .serialize import save
    from .transforms.pruning import PruneConfig, prune_
    from .transforms.sharing import ShareConfig, share_weights_

    torch.manual_seed(0)
    m = Small()
    prune_(m, PruneConfig(sparsity=0.6, layer_sparsity={"conv": 0.5, "fc": 0.9, "out": 0.7}))
    share_weights_(m, ShareConfig(conv_bits=8, fc_bits=4, layer_bits={"out": 2}))
    files = []
    with tempfile.TemporaryDirectory() as d:
        configs = [EncodeConfig(coder=c, index_bits=None if c in (CoderChoice.AUTO, CoderChoice.CTX) else 3) for c in CoderChoice]
        for i, cfg in enumerate([*configs, EncodeConfig(version=1)]):
            path = Path(d) / f"{i}.dsz"
            save(m, path, cfg, metadata={"base": i})
            files.append(path.read_bytes())
    return files
