"""Entropy coding of symbol streams: canonical Huffman (the paper's), rANS, and fixed-width packing.

Each coded stream is self-describing: a small table followed by the payload (layouts in
``docs/format.md``). Encoding and decoding run in compiled loops (numba); table construction loops
only over the alphabet (at most 257 symbols), never over the stream.
"""

from __future__ import annotations

import heapq
import math
import struct
from enum import Enum

import numpy as np

from ..errors import FormatError

__all__ = ["MAX_ALPHABET", "Coder", "decode_stream", "encode_stream", "entropy_bits"]

MAX_ALPHABET = 257
HUFFMAN_MAX_LEN = 16
RANS_SCALE_BITS = 15
RANS_M = 1 << RANS_SCALE_BITS


class Coder(str, Enum):
    HUFFMAN = "huffman"
    RANS = "rans"
    PACKED = "packed"


def _jit():
    from . import _jit as jit

    return jit


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy of a stream with these symbol counts, in bits (the Shannon limit)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(counts[counts > 0] * np.log2(p)).sum())


def fixed_width(alphabet: int) -> int:
    return max(1, math.ceil(math.log2(alphabet))) if alphabet > 1 else 1


# ---------------------------------------------------------------- varints (tables)
def _put_varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def varint_bytes(values: np.ndarray) -> int:
    """Length of ``_put_varints(values)``: 7 bits per byte, at least one byte per value."""
    v = np.asarray(values, dtype=np.int64)
    return int(np.maximum(1, (np.floor(np.log2(np.maximum(v, 1))).astype(np.int64) // 7) + 1).sum())


def _get_varints(buf: memoryview, start: int, n: int, what: str) -> tuple[np.ndarray, int]:
    vals = np.empty(n, np.int64)
    pos = start
    for i in range(n):
        v = 0
        shift = 0
        while True:
            if pos >= len(buf):
                raise FormatError(f"{what}: table is truncated")
            b = buf[pos]
            pos += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and shift > 7:
                    raise FormatError(f"{what}: table value is not minimally encoded (a trailing 0x80 0x00 pair)")
                break
            if shift > 28:
                raise FormatError(f"{what}: table value is too large")
        vals[i] = v
    return vals, pos


# ---------------------------------------------------------------- Huffman
def huffman_lengths(counts: np.ndarray, max_len: int = HUFFMAN_MAX_LEN) -> np.ndarray:
    """Code length per symbol (0 for unused symbols), limited to ``max_len`` bits."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, np.uint8)
    used = np.flatnonzero(counts)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    work = counts.copy()
    while True:
        heap: list[tuple[int, int, list[int]]] = [(int(work[s]), int(s), [int(s)]) for s in used]
        heapq.heapify(heap)
        depth = np.zeros(counts.size, np.int64)
        tie = counts.size
        while len(heap) > 1:
            c1, _, s1 = heapq.heappop(heap)
            c2, _, s2 = heapq.heappop(heap)
            merged = s1 + s2
            depth[merged] += 1
            heapq.heappush(heap, (c1 + c2, tie, merged))
            tie += 1
        if depth.max() <= max_len:
            lengths[:] = depth
            return lengths
        # Flatten the distribution until the tree fits; costs a tiny fraction of a bit per symbol.
        work[used] = (work[used] >> 1) | 1


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    codes = np.zeros(lengths.size, np.uint32)
    order = sorted((int(ln), s) for s, ln in enumerate(lengths.tolist()) if ln > 0)
    code = 0
    prev = 0
    for ln, s in order:
        code <<= ln - prev
        codes[s] = code
        code += 1
        prev = ln
    return codes


def _huffman_table(lengths: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    used = lengths[lengths > 0].astype(np.int64)
    if used.size == 0:
        raise FormatError(f"{what}: Huffman table has no symbols but the stream is not empty")
    max_len = int(used.max())
    if max_len > HUFFMAN_MAX_LEN:
        raise FormatError(f"{what}: Huffman code length {max_len} exceeds {HUFFMAN_MAX_LEN}")
    if np.sum(np.ldexp(1.0, -used)) > 1.0:
        raise FormatError(f"{what}: Huffman code lengths violate the Kraft inequality")
    codes = canonical_codes(lengths)
    size = 1 << max_len
    table_sym = np.zeros(size, np.uint16)
    table_len = np.zeros(size, np.uint8)
    for s in np.flatnonzero(lengths).tolist():
        ln = int(lengths[s])
        lo = int(codes[s]) << (max_len - ln)
        hi = (int(codes[s]) + 1) << (max_len - ln)
        table_sym[lo:hi] = s
        table_len[lo:hi] = ln
    return table_sym, table_len, max_len


# ---------------------------------------------------------------- rANS
def rans_frequencies(counts: np.ndarray) -> np.ndarray:
    """Quantise counts to frequencies summing to 2**15, every used symbol keeping at least 1."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    freq = np.zeros(counts.size, np.int64)
    used = counts > 0
    freq[used] = np.maximum(1, np.round(counts[used] * (RANS_M / total)).astype(np.int64))
    diff = RANS_M - int(freq.sum())
    if diff != 0:
        # Give or take the rounding error where it costs the least: at the most frequent symbols.
        order = np.argsort(-counts, kind="stable")
        i = 0
        while diff != 0:
            s = order[i % int(used.sum())]
            if diff > 0:
                freq[s] += 1
                diff -= 1
            elif freq[s] > 1:
                freq[s] -= 1
                diff += 1
            i += 1
    return freq


# ---------------------------------------------------------------- stream API
def encode_stream(symbols: np.ndarray, alphabet: int, coder: Coder) -> bytes:
    """Encode ``symbols`` (values < ``alphabet``) as one self-describing stream."""
    jit = _jit()
    symbols = np.ascontiguousarray(symbols, dtype=np.uint16)
    coder = Coder(coder)
    if coder is Coder.PACKED:
        # Fixed width is the prefix code whose every codeword is the symbol itself in ``width`` bits.
        width = fixed_width(alphabet)
        out = np.zeros((symbols.size * width + 7) // 8, np.uint8)
        n = jit.huffman_encode(symbols, np.arange(alphabet, dtype=np.uint32), np.full(alphabet, width, np.uint8), out)
        return out[:n].tobytes()
    counts = np.bincount(symbols, minlength=alphabet)
    if coder is Coder.HUFFMAN:
        lengths = huffman_lengths(counts)
        codes = canonical_codes(lengths)
        nbits = int((counts * lengths.astype(np.int64)).sum())
        out = np.zeros((nbits + 7) // 8 + 8, np.uint8)
        n = jit.huffman_encode(symbols, codes, lengths, out)
        return bytes(lengths) + out[:n].tobytes()
    if symbols.size == 0:
        return _put_varints(np.zeros(alphabet, np.int64)) + struct.pack("<I", jit.RANS_L)
    freq = rans_frequencies(counts)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint32)
    out = np.zeros(symbols.size + 2, np.uint16)
    n, state = jit.rans_encode(symbols, freq.astype(np.uint32), cum, out)
    return _put_varints(freq) + struct.pack("<I", int(state)) + out[:n][::-1].astype("<u2").tobytes()


def _decode_packed(raw: np.ndarray, count: int, alphabet: int, out: np.ndarray, what: str) -> int:
    width = fixed_width(alphabet)
    if raw.size != (count * width + 7) // 8:
        raise FormatError(f"{what}: packed stream has {raw.size} bytes, expected {(count * width + 7) // 8}")
    return int(_jit().unpack_bits(raw, width, count, alphabet, out))


def _decode_huffman(raw: np.ndarray, count: int, alphabet: int, out: np.ndarray, what: str) -> int:
    jit = _jit()
    if raw.size < alphabet:
        raise FormatError(f"{what}: stream is shorter than its Huffman table")
    if count == 0:
        if raw.size != alphabet or raw.any():
            raise FormatError(f"{what}: an empty Huffman stream is exactly {alphabet} zero code lengths")
        return int(jit.OK)
    table_sym, table_len, max_len = _huffman_table(raw[:alphabet].copy(), what)
    payload = raw[alphabet:]
    if payload.size > count * HUFFMAN_MAX_LEN // 8 + 1:
        raise FormatError(f"{what}: Huffman payload is longer than {count} symbols can be")
    return int(jit.huffman_decode(payload, count, table_sym, table_len, max_len, out))


def _decode_rans(buf: memoryview, raw: np.ndarray, count: int, alphabet: int, out: np.ndarray, what: str) -> int:
    jit = _jit()
    freq, pos = _get_varints(buf, 0, alphabet, what)
    if pos + 4 > raw.size:
        raise FormatError(f"{what}: rANS stream is truncated before its state")
    (state,) = struct.unpack_from("<I", buf, pos)
    payload = raw[pos + 4 :]
    if payload.size % 2:
        raise FormatError(f"{what}: rANS payload has an odd number of bytes")
    if count == 0:
        if payload.size or state != jit.RANS_L or freq.any():
            raise FormatError(f"{what}: an empty rANS stream is {alphabet} zero frequencies, state 2^16 and no payload")
        return int(jit.OK)
    if int(freq.sum()) != RANS_M or (freq > RANS_M).any():
        raise FormatError(f"{what}: rANS frequencies sum to {int(freq.sum())}, expected {RANS_M}")
    if state < jit.RANS_L:
        raise FormatError(f"{what}: rANS state {state} is below its lower bound")
    words = payload.view("<u2").astype(np.uint16)
    if words.size > count + 2:
        raise FormatError(f"{what}: rANS payload is longer than {count} symbols can be")
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]])
    slot_sym = np.repeat(np.arange(alphabet, dtype=np.uint16), freq)
    return int(jit.rans_decode(words, np.uint64(state), count, freq.astype(np.uint32), cum.astype(np.uint32), slot_sym, out))


def decode_stream(data: memoryview | bytes, count: int, alphabet: int, coder: Coder, what: str) -> np.ndarray:
    """Decode exactly ``count`` symbols; any inconsistency raises :class:`FormatError` naming ``what``."""
    jit = _jit()
    buf = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    out = np.empty(count, np.uint16)
    raw = np.frombuffer(buf, dtype=np.uint8)
    coder = Coder(coder)
    if coder is Coder.PACKED:
        status = _decode_packed(raw, count, alphabet, out, what)
    elif coder is Coder.HUFFMAN:
        status = _decode_huffman(raw, count, alphabet, out, what)
    else:
        status = _decode_rans(buf, raw, count, alphabet, out, what)
    if status != jit.OK:
        reason = {
            jit.TRUNCATED: "ends before all symbols were read",
            jit.BAD_CODE: "holds an invalid code",
            jit.BAD_STATE: "does not end in the coder's initial state (damaged payload)",
            jit.TRAILING: "has bytes after its last symbol",
            jit.BAD_PADDING: "has non-zero padding bits after its last symbol",
        }.get(status, f"failed with status {status}")
        raise FormatError(f"{what}: {coder.value} stream {reason}")
    return out
