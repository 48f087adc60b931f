"""A ``.dsz`` header, parsed and validated once into frozen entries that nothing mutates afterwards."""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Callable
from typing import Any

from ..codec.entropy import MAX_ALPHABET, Coder
from ..errors import FormatError
from .entries import CtxEntry, Entry, Header, RawEntry, Section, SharedEntries, SharedEntry, Stream
from .spec import (
    DTYPES,
    HEADER_KEYS,
    MAGIC,
    MAX_CLAIMED_ELEMENTS,
    MAX_CLUSTERS,
    MAX_DIMS,
    MAX_ELEMENTS,
    MAX_HEADER,
    MAX_INDEX_BITS,
    PREAMBLE,
    PREAMBLE_V2,
    RAW_KEYS,
    SHARED_KEYS,
    STREAM_KEYS,
    VERSIONS,
    itemsize,
)

__all__ = ["CtxEntry", "Entry", "Header", "RawEntry", "Section", "SharedEntries", "SharedEntry", "Stream", "parse_header", "strict_json"]


class _Checker:
    """Validation helpers that name the file in every message."""

    def __init__(self, path: str, data_bytes: int = 0) -> None:
        self.path, self.data_bytes = path, data_bytes

    def fail(self, msg: str) -> FormatError:
        return FormatError(f"{self.path}: {msg}")

    def integer(self, v: Any, what: str, lo: int, hi: int) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise self.fail(f"{what} is {v!r}; expected an integer in [{lo}, {hi}]")
        return v

    def section(self, ref: Any, what: str) -> Section:
        if not isinstance(ref, list) or len(ref) != 3:
            raise self.fail(f"{what}: section reference must be [offset, length, crc32], got {ref!r}")
        off = self.integer(ref[0], f"{what} offset", 0, self.data_bytes)
        length = self.integer(ref[1], f"{what} length", 0, self.data_bytes - off)
        return Section(off, length, self.integer(ref[2], f"{what} crc32", 0, 0xFFFFFFFF))

    def keys(self, obj: dict[str, Any], allowed: set[str], what: str) -> None:
        unknown = sorted(set(obj) - allowed)
        if unknown:
            raise self.fail(f"{what}: unknown keys {unknown} (version 1 knows {sorted(allowed)})")

    def stream(self, s: Any, what: str, alphabet: int) -> Stream:
        if isinstance(s, dict):
            self.keys(s, STREAM_KEYS, what)
        if not isinstance(s, dict) or not isinstance(s.get("coder"), str) or s["coder"] not in {c.value for c in Coder}:
            raise self.fail(f"{what} needs a coder in {[c.value for c in Coder]}")
        if alphabet > MAX_ALPHABET:
            raise self.fail(f"{what}: alphabet {alphabet} exceeds {MAX_ALPHABET}")
        return Stream(Coder(s["coder"]), self.section(s.get("section"), what), alphabet)


def _common(t: Any, i: int, c: _Checker) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    if not isinstance(t, dict):
        raise c.fail(f"header tensor #{i} is not an object")
    name = t.get("name")
    if not isinstance(name, str) or not name:
        raise c.fail(f"header tensor #{i} has no valid name")
    what = f"tensor '{name}'"
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise c.fail(f"{what}: shape must be a list of at most {MAX_DIMS} sizes")
    dims = tuple(c.integer(s, f"{what} shape entry", 0, MAX_ELEMENTS) for s in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise c.fail(f"{what}: shape {list(dims)} has too many elements")
    if not isinstance(t.get("dtype"), str) or t["dtype"] not in DTYPES:
        raise c.fail(f"{what}: dtype {t.get('dtype')!r} is not one of {sorted(DTYPES)}")
    aliases = t.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise c.fail(f"{what}: aliases must be a list of non-empty names")
    return name, dims, t["dtype"], tuple(aliases)


def _shared(t: dict[str, Any], name: str, shape: tuple[int, ...], dtype: str, aliases: tuple[str, ...], c: _Checker) -> SharedEntry:
    what = f"tensor '{name}'"
    if dtype != "float32":
        raise c.fail(f"{what}: shared_sparse tensors must be float32, not {dtype}")
    numel = math.prod(shape)
    k = c.integer(t.get("clusters"), f"{what} clusters", 1, MAX_CLUSTERS)
    bits = c.integer(t.get("index_bits"), f"{what} index_bits", 1, MAX_INDEX_BITS)
    nnz = c.integer(t.get("nnz"), f"{what} nnz", 0, numel)
    count = c.integer(t.get("entries"), f"{what} entries", nnz, numel)
    if nnz == 0 and count:
        raise c.fail(f"{what}: {count} entries but no non-zero weights")
    # Fillers only bridge gaps, so entries can never exceed what the tensor length allows.
    if count > nnz + (numel >> bits):
        raise c.fail(f"{what}: {count} entries cannot fit {nnz} weights in {numel} positions")
    codebook = c.section(t.get("codebook"), f"{what} codebook")
    if codebook.length != 4 * k:
        raise c.fail(f"{what}: codebook has {codebook.length} bytes, {k} clusters need {4 * k}")
    return SharedEntry(
        name, shape, dtype, nnz, count, bits, k, codebook,
        c.stream(t.get("weights"), f"{what}: weights stream", k + 1), c.stream(t.get("index"), f"{what}: index stream", 1 << bits),
        aliases,
    )


def _entry(t: Any, i: int, c: _Checker) -> Entry:
    name, shape, dtype, aliases = _common(t, i, c)
    enc = t.get("encoding")
    if enc in ("raw", "shared_sparse"):
        c.keys(t, RAW_KEYS if enc == "raw" else SHARED_KEYS, f"tensor '{name}'")
    if enc == "raw":
        data = c.section(t.get("data"), f"tensor '{name}' data")
        expected = math.prod(shape) * itemsize(dtype)
        if data.length != expected:
            raise c.fail(f"tensor '{name}': raw data has {data.length} bytes, shape {list(shape)} of {dtype} needs {expected}")
        return RawEntry(name, shape, dtype, data, aliases)
    if enc == "shared_sparse":
        return _shared(t, name, shape, dtype, aliases, c)
    raise c.fail(f"tensor '{name}': unknown encoding {enc!r}; this reader knows 'raw' and 'shared_sparse'")


def _preamble(buf: memoryview, c: _Checker) -> dict[str, Any]:
    """The header JSON object, after the preamble's magic, version, length and checksum are checked."""
    if len(buf) < PREAMBLE.size:
        raise c.fail(f"file has {len(buf)} bytes, fewer than the {PREAMBLE.size}-byte preamble; not a .dsz file")
    _, version, hlen, hcrc = PREAMBLE.unpack_from(buf, 0)
    if hlen > MAX_HEADER or PREAMBLE.size + hlen > len(buf):
        raise c.fail(f"header length {hlen} runs past the end of the {len(buf)}-byte file (truncated?)")
    hbytes = bytes(buf[PREAMBLE.size : PREAMBLE.size + hlen])
    if zlib.crc32(hbytes) != hcrc:
        raise c.fail("header checksum mismatch; the file is damaged")
    try:
        text = hbytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise c.fail(f"header is not valid JSON ({exc})") from None
    header = strict_json(text, c.fail, "header")
    if not isinstance(header, dict) or header.get("format") != "deepshrink":
        raise c.fail("header is not a deepshrink header")
    if header.get("version") != 1:
        raise c.fail(f"header version {header.get('version')!r} does not match the preamble's {version}")
    return header


class _Duplicate(ValueError):
    pass


def strict_json(text: str, fail: Callable[[str], FormatError], what: str = "metadata") -> Any:
    """RFC 8259 JSON with no NaN/Infinity tokens and no key twice in one object, or ``fail``'s error."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise fail(f"{what} is not valid JSON ({exc})") from None
    except _Duplicate as exc:
        raise fail(f"{what} is not strict JSON: {exc}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _Duplicate(f"key {next(k for k in keys if keys.count(k) > 1)!r} appears twice in one object")
    return dict(pairs)


def _no_constant(token: str) -> Any:
    raise _Duplicate(f"{token} is not a JSON number")


def _tiled(tensors: tuple[Entry, ...], data_bytes: int, c: _Checker) -> None:
    """Sections follow each other in header order and fill the data area: no overlap, no sharing, no gap."""
    end = 0
    for t in tensors:
        for s, what in t.sections():
            if s.offset != end:
                raise c.fail(f"{what}: section starts at {s.offset}, expected {end} (sections tile the data area in order)")
            end += s.length
    if end != data_bytes:
        raise c.fail(f"sections end at {end} but the data area has {data_bytes} bytes")


def parse_header(buf: memoryview, path: str, max_elements: int = MAX_CLAIMED_ELEMENTS) -> Header:
    """Validate the preamble and header of the file in ``buf`` (either version); raise :class:`FormatError` naming ``path``.

    ``max_elements`` bounds the elements all tensors may claim together (a reader without a model
    has nothing else to bound its allocations by).
    """
    if len(buf) < PREAMBLE_V2.size:
        raise FormatError(f"{path}: file has {len(buf)} bytes, fewer than a preamble; not a .dsz file")
    magic, version, _ = PREAMBLE_V2.unpack_from(buf, 0)
    if magic != MAGIC:
        raise FormatError(f"{path}: bad magic bytes; not a .dsz file")
    if version not in VERSIONS:
        raise FormatError(f"{path}: format version {version} is not supported (this reader knows {list(VERSIONS)}); upgrade deepshrink")
    if version == 2:
        from .binary import parse_v2

        return parse_v2(buf, path, max_elements)
    return _parse_v1(buf, path, max_elements)


def _parse_v1(buf: memoryview, path: str, max_elements: int) -> Header:
    c = _Checker(path)
    header = _preamble(buf, c)
    c.keys(header, HEADER_KEYS, "header")
    data_start = PREAMBLE.size + PREAMBLE.unpack_from(buf, 0)[2]
    data_bytes = c.integer(header.get("data_bytes"), "header data_bytes", 0, len(buf))
    if data_start + data_bytes != len(buf):
        raise c.fail(f"file has {len(buf)} bytes but the header describes {data_start + data_bytes} (truncated or extended)")
    c.data_bytes = data_bytes
    raw_tensors = header.get("tensors")
    if not isinstance(raw_tensors, list):
        raise c.fail("header has no tensor list")
    tensors = tuple(_entry(t, i, c) for i, t in enumerate(raw_tensors))
    names = [n for t in tensors for n in (t.name, *t.aliases)]
    if len(set(names)) != len(names):
        raise c.fail("header names a tensor twice")
    claimed = sum(t.numel for t in tensors)
    if claimed > max_elements:
        raise c.fail(f"tensors claim {claimed:,} elements, more than the {max_elements:,} this reader allows")
    _tiled(tensors, data_bytes, c)
    metadata = header.get("metadata")
    if not isinstance(metadata, dict):
        raise c.fail("header metadata must be an object (it may be empty, not absent)")
    return Header(1, data_bytes, data_start, tensors, metadata)
