"""Version 2's binary header: written from typed entries, parsed and validated back into them.

No field name is repeated per tensor: a record is a front-coded name, one kind byte, the shape and
the few counts its encoding needs, all as minimal unsigned LEB128 varints. Section offsets are
implied (sections tile the data area in record order) and one CRC-32 covers every byte after the
preamble. The normative text is ``docs/format.md``.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from typing import Any

from ..codec.entropy import Coder
from ..errors import FormatError
from .entries import CtxEntry, Entry, Header, RawEntry, Section, SharedEntry, Stream
from .spec import (
    CODEBOOK_DTYPES,
    CODER_CODES,
    DTYPE_CODES,
    ENCODING_CODES,
    MAGIC,
    MAX_CLAIMED_ELEMENTS,
    MAX_CLUSTERS,
    MAX_DIMS,
    MAX_ELEMENTS,
    MAX_HEADER,
    MAX_INDEX_BITS,
    PREAMBLE_V2,
    itemsize,
)

__all__ = ["MAX_SHIFTS", "encode_header", "parse_v2", "varint"]

MAX_SHIFTS = range(4, 12)
_HAS_ALIASES = 0x40


def varint(v: int) -> bytes:
    """Unsigned LEB128, shortest form."""
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _name_bytes(name: str, previous: bytes) -> tuple[bytes, bytes]:
    raw = name.encode("utf-8")
    p = 0
    while p < min(len(raw), len(previous)) and raw[p] == previous[p]:
        p += 1
    return varint(p) + varint(len(raw) - p) + raw[p:], raw


def _record(t: Entry, previous: bytes) -> tuple[bytes, bytes]:
    name, raw_name = _name_bytes(t.name, previous)
    encoding = "raw" if isinstance(t, RawEntry) else "shared_sparse" if isinstance(t, SharedEntry) else "shared_ctx"
    kind = DTYPE_CODES.index(t.dtype) | ENCODING_CODES.index(encoding) << 4 | (_HAS_ALIASES if t.aliases else 0)
    out = bytearray(name) + bytes([kind]) + varint(len(t.shape)) + b"".join(varint(d) for d in t.shape)
    if t.aliases:
        out += varint(len(t.aliases)) + b"".join(varint(len(a.encode())) + a.encode() for a in t.aliases)
    if isinstance(t, SharedEntry):
        out += varint(t.clusters) + bytes([CODEBOOK_DTYPES.index(t.codebook_dtype)]) + _delta_length(t)
        out += varint(t.nnz) + varint(t.entries)
        out += bytes([t.index_bits, CODER_CODES.index(t.weights.coder.value)]) + varint(t.weights.section.length)
        out += bytes([CODER_CODES.index(t.index.coder.value)]) + varint(t.index.section.length)
    elif isinstance(t, CtxEntry):
        params = CODEBOOK_DTYPES.index(t.codebook_dtype) | int(t.value_ctx) << 2 | (t.max_shift - MAX_SHIFTS.start) << 3
        params |= int(t.mixed) << 6 | int(t.swapped) << 7
        out += varint(t.clusters) + varint(t.nnz) + bytes([params]) + _delta_length(t) + varint(t.payload.length)
    return bytes(out), raw_name


def _delta_length(t: SharedEntry | CtxEntry) -> bytes:
    """A delta-coded codebook's length is not implied by ``k``: it follows the dtype code."""
    return varint(t.codebook.length) if t.codebook_dtype == "delta" else b""


def _codebook_length(cur: _Cursor, cb_dtype: str, k: int, what: str) -> int:
    if cb_dtype != "delta":
        return k * itemsize(cb_dtype)
    # At least its first byte and a 16-bit first key; at most a 32-bit one and k - 1 gaps of 2 * 33 - 1 bits each.
    return cur.varint(f"{what} codebook length", 3, 5 + (65 * (k - 1) + 7) // 8)


def encode_header(tensors: Sequence[Entry], metadata: dict[str, Any]) -> bytes:
    """The header bytes (its length varint first) for ``tensors``, whose sections follow in this order."""
    meta = b"" if not metadata else json.dumps(metadata, separators=(",", ":"), allow_nan=False).encode()
    body = bytearray(varint(len(meta)) + meta + varint(len(tensors)))
    previous = b""
    for t in tensors:
        rec, previous = _record(t, previous)
        body += rec
    return varint(len(body)) + bytes(body)


class _Cursor:
    """Reads the header's fields in order; every failure names the file and the field."""

    def __init__(self, buf: memoryview, start: int, end: int, path: str, max_elements: int = MAX_CLAIMED_ELEMENTS) -> None:
        self.buf, self.pos, self.end, self.path = buf, start, end, path
        self.claimed, self.max_elements = 0, max_elements

    def claim(self, numel: int) -> None:
        """Count a tensor's elements against the budget before any of its sections is laid out."""
        self.claimed += numel
        if self.claimed > self.max_elements:
            raise self.fail(f"tensors claim more than the {self.max_elements:,} elements this reader allows")

    def fail(self, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {msg}")

    def byte(self, what: str) -> int:
        if self.pos >= self.end:
            raise self.fail(f"header ends inside {what} (truncated header)")
        b = self.buf[self.pos]
        self.pos += 1
        return int(b)

    def varint(self, what: str, lo: int = 0, hi: int = MAX_ELEMENTS) -> int:
        v, shift = 0, 0
        while True:
            b = self.byte(what)
            if shift > 56:
                raise self.fail(f"{what}: varint is too long")
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and shift > 7:
                    raise self.fail(f"{what}: varint is not in its shortest form")
                break
        if not lo <= v <= hi:
            raise self.fail(f"{what} is {v}; expected an integer in [{lo}, {hi}]")
        return v

    def bytes(self, n: int, what: str) -> bytes:
        if self.pos + n > self.end:
            raise self.fail(f"header ends inside {what} (truncated header)")
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def text(self, n: int, what: str) -> str:
        try:
            return self.bytes(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8") from None

    def code(self, table: Sequence[str], what: str) -> str:
        v = self.byte(what)
        if v >= len(table):
            raise self.fail(f"{what} code {v} is not one of 0..{len(table) - 1} ({', '.join(table)})")
        return table[v]


class _Layout:
    """Hands out the sections of the data area in record order: tiling by construction."""

    def __init__(self, data_bytes: int, cur: _Cursor) -> None:
        self.next, self.data_bytes, self.cur = 0, data_bytes, cur

    def take(self, length: int, what: str) -> Section:
        if self.next + length > self.data_bytes:
            raise self.cur.fail(f"{what}: {length} bytes from offset {self.next} run past the {self.data_bytes}-byte data area")
        s = Section(self.next, length)
        self.next += length
        return s


def _shape(cur: _Cursor, what: str) -> tuple[int, ...]:
    ndim = cur.varint(f"{what} ndim", 0, MAX_DIMS)
    dims = tuple(cur.varint(f"{what} shape entry", 0, MAX_ELEMENTS) for _ in range(ndim))
    if math.prod(dims) > MAX_ELEMENTS:
        raise cur.fail(f"{what}: shape {list(dims)} has too many elements")
    return dims


def _record_entry(cur: _Cursor, layout: _Layout, previous: bytes) -> tuple[Entry, bytes]:
    p = cur.varint("tensor name prefix", 0, len(previous))
    suffix = cur.bytes(cur.varint("tensor name length", 0, MAX_HEADER), "tensor name")
    raw_name = previous[:p] + suffix
    try:
        name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise cur.fail(f"tensor name {raw_name!r} is not valid UTF-8") from None
    if not name:
        raise cur.fail("a tensor has an empty name")
    what = f"tensor '{name}'"
    kind = cur.byte(f"{what} kind")
    if kind & 0x80 or kind & 0x0F >= len(DTYPE_CODES) or (kind >> 4) & 0x3 >= len(ENCODING_CODES):
        raise cur.fail(f"{what}: kind byte 0x{kind:02x} names no dtype/encoding this reader knows")
    dtype, encoding = DTYPE_CODES[kind & 0x0F], ENCODING_CODES[(kind >> 4) & 0x3]
    shape = _shape(cur, what)
    aliases: tuple[str, ...] = ()
    if kind & _HAS_ALIASES:
        count = cur.varint(f"{what} alias count", 1, MAX_HEADER)
        aliases = tuple(cur.text(cur.varint(f"{what} alias length", 1, MAX_HEADER), f"{what} alias") for _ in range(count))
    numel = math.prod(shape)
    cur.claim(numel)
    if encoding == "raw":
        return RawEntry(name, shape, dtype, layout.take(numel * itemsize(dtype), f"{what} data"), aliases), raw_name
    if dtype != "float32":
        raise cur.fail(f"{what}: {encoding} tensors must be float32, not {dtype}")
    k = cur.varint(f"{what} clusters", 1, MAX_CLUSTERS)
    if encoding == "shared_sparse":
        cb_dtype = cur.code(CODEBOOK_DTYPES, f"{what} codebook dtype")
        cb_length = _codebook_length(cur, cb_dtype, k, what)
        nnz = cur.varint(f"{what} nnz", 0, numel)
        count = cur.varint(f"{what} entries", nnz, nnz + (numel >> 1))
        bits = cur.byte(f"{what} index_bits")
        if not 1 <= bits <= MAX_INDEX_BITS:
            raise cur.fail(f"{what} index_bits is {bits}; expected an integer in [1, {MAX_INDEX_BITS}]")
        if nnz == 0 and count:
            raise cur.fail(f"{what}: {count} entries but no non-zero weights")
        if count > nnz + (numel >> bits):
            raise cur.fail(f"{what}: {count} entries cannot fit {nnz} weights in {numel} positions")
        codebook = layout.take(cb_length, f"{what} codebook")
        wcoder = Coder(cur.code(CODER_CODES, f"{what} weights coder"))
        weights = Stream(wcoder, layout.take(cur.varint(f"{what} weights length"), f"{what} weights stream"), k + 1)
        icoder = Coder(cur.code(CODER_CODES, f"{what} index coder"))
        index = Stream(icoder, layout.take(cur.varint(f"{what} index length"), f"{what} index stream"), 1 << bits)
        return SharedEntry(name, shape, dtype, nnz, count, bits, k, codebook, weights, index, aliases, cb_dtype), raw_name
    nnz = cur.varint(f"{what} nnz", 0, numel)
    params = cur.byte(f"{what} ctx parameters")
    if params >> 7 and len(shape) < 2:
        raise cur.fail(f"{what}: ctx parameter byte 0x{params:02x} swaps the first two axes of a tensor with fewer than two")
    cb_dtype = CODEBOOK_DTYPES[params & 0x3]
    codebook = layout.take(_codebook_length(cur, cb_dtype, k, what), f"{what} codebook")
    payload = layout.take(cur.varint(f"{what} payload length"), f"{what} ctx payload")
    entry = CtxEntry(name, shape, dtype, nnz, k, cb_dtype, bool(params & 0x4), MAX_SHIFTS.start + (params >> 3 & 0x7),
                     codebook, payload, aliases, mixed=bool(params & 0x40), swapped=bool(params & 0x80))
    return entry, raw_name


def _metadata(cur: _Cursor) -> tuple[dict[str, Any], int]:
    from .header import strict_json

    n = cur.varint("metadata length", 0, MAX_HEADER)
    if n == 0:
        return {}, 0
    text = cur.text(n, "metadata")
    meta = strict_json(text, cur.fail)
    if not isinstance(meta, dict) or not meta:
        raise cur.fail("metadata must be a non-empty JSON object (an empty one is written as length 0)")
    return meta, n


def parse_v2(buf: memoryview, path: str, max_elements: int = MAX_CLAIMED_ELEMENTS) -> Header:
    """Validate a version-2 file's preamble, checksum and header; raise :class:`FormatError` naming ``path``."""
    magic, _, crc = PREAMBLE_V2.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{path}: bad magic bytes; not a .dsz file")
    if zlib.crc32(buf[PREAMBLE_V2.size :]) != crc:
        raise FormatError(f"{path}: checksum mismatch; the file is damaged (or truncated, or extended)")
    cur = _Cursor(buf, PREAMBLE_V2.size, len(buf), path, max_elements)
    hlen = cur.varint("header length", 0, MAX_HEADER)
    end = cur.pos + hlen
    if end > len(buf):
        raise cur.fail(f"header length {hlen} runs past the end of the {len(buf)}-byte file")
    cur.end = end
    metadata, meta_bytes = _metadata(cur)
    count = cur.varint("tensor count", 0, MAX_HEADER)
    layout = _Layout(len(buf) - end, cur)
    tensors: list[Entry] = []
    previous = b""
    for _ in range(count):
        entry, previous = _record_entry(cur, layout, previous)
        tensors.append(entry)
    if cur.pos != end:
        raise cur.fail(f"header has {end - cur.pos} bytes after its last tensor record")
    if layout.next != layout.data_bytes:
        raise cur.fail(f"sections end at {layout.next} but the data area has {layout.data_bytes} bytes")
    names = [n for t in tensors for n in (t.name, *t.aliases)]
    if len(set(names)) != len(names):
        raise cur.fail("header names a tensor twice")
    return Header(2, layout.data_bytes, end, tuple(tensors), metadata, meta_bytes)
