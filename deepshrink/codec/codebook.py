"""Codebooks stored sorted, as exp-Golomb-coded gaps between the order-preserving integer keys of their values.

A fine-tuned k-means codebook is a sorted set of 2-byte floats a few hundred ulps apart: coding the gaps
takes about half the bytes of the values themselves, and on the LeNets the codebooks are a fifth of the
file. The format text (``docs/format.md``, "Delta-coded codebooks") is normative; a codebook has at most
256 values, so the per-value loops here are bounded by that, never by the tensor's size.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import FormatError

__all__ = ["BASE_DTYPES", "decode", "encode", "keys", "patterns", "widen"]

# The section's first byte: bits 0-1 the base dtype (this order), bits 2-6 the exp-Golomb order, bit 7 zero.
BASE_DTYPES = ("float32", "float16", "bfloat16")
_WIDTH = {"float32": 32, "float16": 16, "bfloat16": 16}


def patterns(values: np.ndarray, dtype: str) -> np.ndarray:
    """The IEEE-754 bit patterns of float32 ``values`` (exactly representable in ``dtype``): uint32 or uint16."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "float32":
        return v.view(np.uint32)
    if dtype == "float16":
        return v.astype("<f2").view(np.uint16)
    return (v.view(np.uint32) >> 16).astype(np.uint16)


def widen(bits: np.ndarray, dtype: str) -> np.ndarray:
    """Float32 values of ``dtype``'s bit patterns (any unsigned integer array), widened exactly."""
    if dtype == "float32":
        return bits.astype(np.uint32).view(np.float32)
    if dtype == "float16":
        return bits.astype(np.uint16).view("<f2").astype(np.float32)
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def keys(values: np.ndarray, dtype: str) -> np.ndarray:
    """Integer keys in the values' float order (-0 just below +0): a negative value's bits inverted, a positive's with the sign set."""
    w = _WIDTH[dtype]
    b = patterns(values, dtype).astype(np.uint64)
    sign, mask = np.uint64(1 << (w - 1)), np.uint64((1 << w) - 1)
    return np.where(b & sign, mask - b, b | sign)


def _values(k: list[int], dtype: str) -> np.ndarray:
    w = _WIDTH[dtype]
    sign, mask = 1 << (w - 1), (1 << w) - 1
    return widen(np.array([key - sign if key >= sign else mask - key for key in k], dtype=np.uint64), dtype)


def _pack(first: int, width: int, gaps: list[int], order: int) -> tuple[int, int]:
    """The bit string (as an int) and its length: ``first`` in ``width`` bits, then each gap exp-Golomb coded."""
    acc, n = first, width
    for g in gaps:
        u = g + (1 << order)
        length = 2 * u.bit_length() - 1 - order  # (bit_length - 1 - order) zeros, then u itself
        acc, n = (acc << length) | u, n + length
    return acc, n


def encode(codebook: np.ndarray, dtype: str) -> tuple[np.ndarray, bytes]:
    """``(order, section)``: the permutation that sorts ``codebook`` by key, and the coded section of the sorted values."""
    k = keys(codebook, dtype)
    order = np.argsort(k, kind="stable")
    sk = [int(x) for x in k[order]]
    gaps = [b - a for a, b in itertools.pairwise(sk)]
    width = _WIDTH[dtype]
    r, (acc, n) = min(((r, _pack(sk[0], width, gaps, r)) for r in range(width + 1)), key=lambda t: (t[1][1], t[0]))
    pad = -n % 8
    head = bytes([BASE_DTYPES.index(dtype) | r << 2])
    return order, head + (acc << pad).to_bytes((n + pad) // 8, "big")


def decode(section: bytes | memoryview, count: int, what: str) -> np.ndarray:
    """The ``count`` float32 values of a delta-coded codebook section; :class:`FormatError` naming ``what`` if it is malformed."""
    data = bytes(section)
    if not data:
        raise FormatError(f"{what}: delta-coded codebook section is empty")
    head = data[0]
    if head >> 7 or head & 0x3 >= len(BASE_DTYPES):
        raise FormatError(f"{what}: delta-coded codebook's first byte 0x{head:02x} names no base dtype this reader knows")
    dtype, r = BASE_DTYPES[head & 0x3], (head >> 2) & 0x1F
    width = _WIDTH[dtype]
    if r > width:
        raise FormatError(f"{what}: delta-coded codebook's exp-Golomb order {r} exceeds its {width}-bit keys")
    total = 8 * (len(data) - 1)
    value = int.from_bytes(data[1:], "big")
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > total:
            raise FormatError(f"{what}: delta-coded codebook ends inside value {len(out)} of {count} (truncated section)")
        pos += n
        return (value >> (total - pos)) & ((1 << n) - 1)

    out: list[int] = []
    out.append(take(width))
    while len(out) < count:
        rest = value & ((1 << (total - pos)) - 1)
        zeros = (total - pos) - rest.bit_length()
        if rest == 0 or zeros > width + 1 - r:
            raise FormatError(f"{what}: delta-coded codebook gap {len(out)} has no valid exp-Golomb prefix")
        pos += zeros
        key = out[-1] + take(zeros + r + 1) - (1 << r)
        if key >> width:
            raise FormatError(f"{what}: delta-coded codebook value {len(out)} runs past the {width}-bit key range")
        out.append(key)
    if total - pos >= 8 or take(total - pos):
        raise FormatError(f"{what}: delta-coded codebook has bytes or non-zero padding bits after its {count} values")
    return _values(out, dtype)
