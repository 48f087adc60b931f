"""A version-2 ``.dsz`` reader written from docs/format.md alone: pure Python, no deepshrink import.

It exists to keep the spec honest: every file the library writes must decode here to the same
tensors, so anything the code does that the document does not say shows up as a test failure.
Slow (a Python loop per position), so it is used on small files only.
"""

from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

MAGIC = b"\x89DSZ\r\n\x1a\n"
DTYPES = ["float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"]
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1,
            "bool": 1}
NUMPY = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int64": "<i8", "int32": "<i4", "int16": "<i2", "int8": "i1",
         "uint8": "u1", "bool": "u1"}
CODEBOOK = ["float32", "float16", "bfloat16", "delta"]
CODERS = ["packed", "huffman", "rans"]


class Bad(Exception):
    pass


class Cursor:
    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def u8(self) -> int:
        if self.pos >= self.end:
            raise Bad("truncated")
        self.pos += 1
        return self.data[self.pos - 1]

    def varint(self) -> int:
        v, shift, n = 0, 0, 0
        while True:
            b = self.u8()
            n += 1
            if n > 9:
                raise Bad("varint too long")
            v |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and n > 1:
                    raise Bad("varint not shortest")
                return v

    def take(self, n: int) -> bytes:
        if self.pos + n > self.end:
            raise Bad("truncated")
        self.pos += n
        return self.data[self.pos - n : self.pos]


def _floats(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(raw, NUMPY[dtype]).astype(np.float32 if dtype != "float64" else np.float64)


# ---- entry-wise streams
def _packed(raw: bytes, count: int, alphabet: int) -> list[int]:
    width = max(1, math.ceil(math.log2(alphabet))) if alphabet > 1 else 1
    if len(raw) != (count * width + 7) // 8:
        raise Bad("packed length")
    bits = "".join(f"{b:08b}" for b in raw)
    out = [int(bits[i * width : (i + 1) * width], 2) for i in range(count)]
    if any(s >= alphabet for s in out) or "1" in bits[count * width :]:
        raise Bad("packed symbol or padding")
    return out


def _huffman(raw: bytes, count: int, alphabet: int) -> list[int]:
    lengths = list(raw[:alphabet])
    if len(lengths) != alphabet:
        raise Bad("huffman table")
    if count == 0:
        if len(raw) != alphabet or any(lengths):
            raise Bad("empty huffman")
        return []
    used = sorted((ln, s) for s, ln in enumerate(lengths) if ln)
    if not used or max(ln for ln, _ in used) > 16 or sum(2.0**-ln for ln, _ in used) > 1:
        raise Bad("huffman lengths")
    table, code, prev = {}, 0, used[0][0]
    for i, (ln, s) in enumerate(used):
        if i:
            code = (code + 1) << (ln - prev)
        table[(ln, code)] = s
        prev = ln
    bits = "".join(f"{b:08b}" for b in raw[alphabet:])
    out, pos = [], 0
    for _ in range(count):
        for ln in range(1, 17):
            if pos + ln > len(bits):
                raise Bad("huffman truncated")
            s = table.get((ln, int(bits[pos : pos + ln], 2)))
            if s is not None:
                out.append(s)
                pos += ln
                break
        else:
            raise Bad("huffman code")
    if (pos + 7) // 8 != len(raw) - alphabet or "1" in bits[pos:]:
        raise Bad("huffman trailing or padding")
    return out


def _rans(raw: bytes, count: int, alphabet: int) -> list[int]:
    c = Cursor(raw, 0, len(raw))
    freq = [c.varint() for _ in range(alphabet)]
    (x,) = struct.unpack("<I", c.take(4))
    payload = raw[c.pos :]
    if count == 0:
        if any(freq) or x != 1 << 16 or payload:
            raise Bad("empty rans")
        return []
    if sum(freq) != 1 << 15 or x < 1 << 16 or len(payload) % 2:
        raise Bad("rans table")
    words = list(struct.unpack(f"<{len(payload) // 2}H", payload))
    cum = [sum(freq[:s]) for s in range(alphabet)]
    out, w = [], 0
    for _ in range(count):
        slot = x & ((1 << 15) - 1)
        s = next(s for s in range(alphabet) if cum[s] <= slot < cum[s] + freq[s])
        out.append(s)
        x = freq[s] * (x >> 15) + slot - cum[s]
        if x < 1 << 16:
            if w >= len(words):
                raise Bad("rans truncated")
            x = (x << 16) | words[w]
            w += 1
    if w != len(words) or x != 1 << 16:
        raise Bad("rans end")
    return out


def _streams(
    numel: int, k: int, nnz: int, entries: int, index_bits: int, codebook: np.ndarray, sections: list[tuple[str, bytes]]
) -> np.ndarray:
    decode = {"packed": _packed, "huffman": _huffman, "rans": _rans}
    (wcoder, wraw), (icoder, iraw) = sections
    w = decode[wcoder](wraw, entries, k + 1)
    i = decode[icoder](iraw, entries, 1 << index_bits)
    out = np.zeros(numel, np.float32)
    p, real = -1, 0
    for e in range(entries):
        p += i[e] + 1
        if p >= numel:
            raise Bad("position past the end")
        if w[e] < k:
            out[p] = codebook[w[e]]
            real += 1
    if entries and w[-1] == k:
        raise Bad("ends on a filler")
    if real != nnz:
        raise Bad("nnz")
    return out


# ---- the ctx payload
class RangeDecoder:
    """The binary range decoder and its adaptive contexts, as the spec states them."""

    def __init__(self, payload: bytes, max_shift: int, mixed: bool) -> None:
        if payload and payload[-1] == 0:
            raise Bad("ctx payload ends with 0x00")
        self.payload, self.pos, self.max_shift, self.mixed = payload, 0, max_shift, mixed
        self.range, self.code = 0xFFFFFFFF, 0
        for _ in range(4):
            self.code = (self.code << 8) | self.byte()
        if self.code == 0xFFFFFFFF:
            raise Bad("ctx start")
        self.contexts: dict[tuple, list[int]] = {}

    def byte(self) -> int:
        b = self.payload[self.pos] if self.pos < len(self.payload) else 0
        self.pos += 1
        return b

    def bit(self, ctx: tuple) -> int:
        st = self.contexts.setdefault(ctx, [1 << 27, 1 << 27, 0])  # P, F, n
        q = max(1, ((st[0] + st[1]) >> 1) >> 12) if self.mixed else max(1, st[0] >> 12)
        bound = (self.range >> 16) * q
        if self.code < bound:
            b, self.range = 1, bound
        else:
            b, self.code, self.range = 0, self.code - bound, self.range - bound
        while self.range < 1 << 24:
            self.range = (self.range << 8) % 2**32
            self.code = ((self.code << 8) | self.byte()) % 2**32
        shift = min(self.max_shift, 1 + (st[2] + 1).bit_length())
        fast = min(4, shift)
        st[0] = st[0] + (((1 << 28) - st[0]) >> shift) if b else st[0] - (st[0] >> shift)
        st[1] = st[1] + (((1 << 28) - st[1]) >> fast) if b else st[1] - (st[1] >> fast)
        st[2] += 1
        return b


def _bucket(a: int, m: int) -> int:
    return 0 if m == 0 else sum(256 * (2 * a + 1) >= t * (2 * m + 2) for t in (1, 4, 16, 64))


def _ctx(payload: bytes, shape: tuple[int, ...], k: int, nnz: int, codebook: np.ndarray, value_ctx: bool, max_shift: int,
         mixed: bool, swapped: bool) -> np.ndarray:
    if swapped:  # decode the tensor with its first two axes exchanged, then exchange them back
        walked = (shape[1], shape[0], *shape[2:])
        flat = _ctx(payload, walked, k, nnz, codebook, value_ctx, max_shift, mixed, False)
        return np.swapaxes(flat.reshape(walked), 0, 1).ravel()
    numel = math.prod(shape)
    rows = shape[0] if len(shape) >= 2 else 1
    cols = numel // rows if rows else 0
    depth = (k - 1).bit_length()
    neg = [float(v) < 0 for v in codebook]
    rd = RangeDecoder(payload, max_shift, mixed)
    out = np.zeros(numel, np.float32)
    column = [0] * cols
    m, previous, found = 0, 1, 0
    for r in range(rows):
        previous = rd.bit(("row", previous))
        if not previous:
            continue
        left, prev, in_row = 0, 0, 0
        for c in range(cols):
            left = rd.bit(("sig", _bucket(column[c], m), left))
            if not left:
                continue
            node = 1
            for _ in range(depth):
                node = 2 * node + rd.bit(("code", prev if value_ctx else 0, node))
            s = node - (1 << depth)
            if s >= k:
                raise Bad("ctx code")
            out[r * cols + c] = codebook[s]
            column[c] += 1
            in_row += 1
            prev = (1 + 4 * s // k) if mixed else (1 if neg[s] else 2)
        if not in_row:
            raise Bad("non-empty row without a weight")
        found += in_row
        m += 1
    if found != nnz or rd.pos < len(payload):
        raise Bad("ctx count or trailing bytes")
    return out


class _Bits:
    def __init__(self, raw: bytes) -> None:
        self.bits, self.pos = [(byte >> (7 - j)) & 1 for byte in raw for j in range(8)], 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise Bad("delta truncated")
        v = 0
        for b in self.bits[self.pos : self.pos + n]:
            v = 2 * v + b
        self.pos += n
        return v


def _delta_keys(rd: _Bits, k: int, w: int, r: int) -> list[int]:
    keys = [rd.read(w)]
    while len(keys) < k:
        z = 0
        while rd.read(1) == 0:
            z += 1
            if z > w + 1 - r:
                raise Bad("delta prefix")
        keys.append(keys[-1] + ((1 << (z + r)) | rd.read(z + r)) - (1 << r))
        if keys[-1] >= 1 << w:
            raise Bad("delta key")
    if len(rd.bits) - rd.pos >= 8 or any(rd.bits[rd.pos :]):
        raise Bad("delta padding")
    return keys


def _delta(raw: bytes, k: int) -> np.ndarray:
    """A delta-coded codebook: first key, then exp-Golomb gaps, bit by bit."""
    if not raw or raw[0] >> 7 or raw[0] & 3 == 3:
        raise Bad("delta head")
    base, r = ["float32", "float16", "bfloat16"][raw[0] & 3], (raw[0] >> 2) & 31
    w = 32 if base == "float32" else 16
    if r > w:
        raise Bad("delta order")
    keys = _delta_keys(_Bits(raw[1:]), k, w, r)
    half = 1 << (w - 1)
    patterns = [key - half if key >= half else (1 << w) - 1 - key for key in keys]
    if base == "float32":
        return np.array(patterns, dtype=np.uint32).view(np.float32)
    if base == "float16":
        return np.array(patterns, dtype=np.uint16).view("<f2").astype(np.float32)
    return (np.array(patterns, dtype=np.uint32) << 16).view(np.float32)


def _record(c: Cursor, previous: bytes) -> dict:
    p = c.varint()
    if p > len(previous):
        raise Bad("prefix")
    name = previous[:p] + c.take(c.varint())
    kind = c.u8()
    if kind & 0x80:
        raise Bad("kind")
    dtype, encoding = DTYPES[kind & 0x0F], ["raw", "shared_sparse", "shared_ctx"][(kind >> 4) & 3]
    shape = tuple(c.varint() for _ in range(c.varint()))
    aliases = [c.take(c.varint()).decode() for _ in range(c.varint())] if kind & 0x40 else []
    rec = {"raw_name": name, "name": name.decode(), "dtype": dtype, "encoding": encoding, "shape": shape, "aliases": aliases}
    if encoding == "raw":
        rec["lengths"] = [math.prod(shape) * ITEMSIZE[dtype]]
    elif encoding == "shared_sparse":
        rec.update(k=c.varint(), cb=CODEBOOK[c.u8()])
        cb_len = c.varint() if rec["cb"] == "delta" else rec["k"] * ITEMSIZE[rec["cb"]]
        rec.update(nnz=c.varint(), entries=c.varint(), index_bits=c.u8())
        wcoder, wlen = CODERS[c.u8()], c.varint()
        icoder, ilen = CODERS[c.u8()], c.varint()
        rec.update(coders=[wcoder, icoder], lengths=[cb_len, wlen, ilen])
    else:
        rec.update(k=c.varint(), nnz=c.varint())
        params = c.u8()
        if params >> 7 and len(rec["shape"]) < 2:
            raise Bad("params")
        rec.update(cb=CODEBOOK[params & 3], value_ctx=bool(params & 4), max_shift=4 + (params >> 3 & 7), mixed=bool(params & 64),
                   swapped=bool(params & 128))
        cb_len = c.varint() if rec["cb"] == "delta" else rec["k"] * ITEMSIZE[rec["cb"]]
        rec["lengths"] = [cb_len, c.varint()]
    return rec


def _tensor(rec: dict, chunks: list[bytes]) -> np.ndarray:
    if rec["encoding"] == "raw":
        dtype = "<u2" if rec["dtype"] == "bfloat16" else NUMPY[rec["dtype"]]
        return np.frombuffer(chunks[0], dtype).copy().reshape(rec["shape"])
    codebook = _delta(chunks[0], rec["k"]) if rec["cb"] == "delta" else _floats(chunks[0], rec["cb"])
    if not np.isfinite(codebook).all():
        raise Bad("codebook not finite")
    if rec["encoding"] == "shared_sparse":
        flat = _streams(math.prod(rec["shape"]), rec["k"], rec["nnz"], rec["entries"], rec["index_bits"], codebook,
                        list(zip(rec["coders"], chunks[1:], strict=True)))
    else:
        flat = _ctx(chunks[1], rec["shape"], rec["k"], rec["nnz"], codebook, rec["value_ctx"], rec["max_shift"], rec["mixed"],
                    rec["swapped"])
    return flat.reshape(rec["shape"])


def read(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a version-2 file by name (aliases too), as numpy arrays; raises Bad on an invalid file."""
    if len(data) < 16 or data[:8] != MAGIC or struct.unpack("<I", data[8:12])[0] != 2:
        raise Bad("preamble")
    if zlib.crc32(data[16:]) != struct.unpack("<I", data[12:16])[0]:
        raise Bad("crc")
    c = Cursor(data, 16, len(data))
    h = c.varint()
    body_end = c.pos + h
    c.end = body_end
    meta = c.take(c.varint())
    if meta:
        json.loads(meta)
    records, previous = [], b""
    for _ in range(c.varint()):
        records.append(_record(c, previous))
        previous = records[-1]["raw_name"]
    if c.pos != body_end:
        raise Bad("header trailing bytes")
    pos = body_end
    out: dict[str, np.ndarray] = {}
    for rec in records:
        chunks = []
        for n in rec["lengths"]:
            chunks.append(data[pos : pos + n])
            pos += n
        arr = _tensor(rec, chunks)
        for n in (rec["name"], *rec["aliases"]):
            out[n] = arr
    if pos != len(data):
        raise Bad("sections do not tile the data area")
    return out
