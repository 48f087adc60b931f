"""Compressed tensors to ``.dsz`` bytes: each tensor coded the smallest way allowed, the header laid out, the file written atomically."""

from __future__ import annotations

import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from .._config import DictConfig
from ..codec import codebook as sorted_codebook
from ..codec import context
from ..codec.cost import best_coder
from ..codec.entropy import Coder, encode_stream
from ..codec.sparse_index import INDEX_BITS_CHOICES, Entries
from ..compressed import CompressedTensor, SharedSparse
from ..errors import ConfigError
from .atomic import atomic_write
from .binary import _record, encode_header
from .entries import CtxEntry, Entry, RawEntry, Section, SharedEntry, Stream
from .spec import MAGIC, PREAMBLE, PREAMBLE_V2, VERSIONS

__all__ = ["CoderChoice", "EncodeConfig", "codebook_storage", "encoded_size", "write"]

log = logging.getLogger(__name__)


class CoderChoice(str, Enum):
    """``auto`` codes each tensor the smallest way: entry-wise streams (each with its best coder), ctx, or raw."""

    AUTO = "auto"
    RANS = "rans"
    HUFFMAN = "huffman"
    PACKED = "packed"
    CTX = "ctx"

    @property
    def coder(self) -> Coder | None:
        return Coder(self.value) if self.value in {c.value for c in Coder} else None


@dataclass
class EncodeConfig(DictConfig):
    """How :func:`save` codes weight-shared layers.

    ``index_bits=None`` picks, per layer, the relative-index width in 2..8 that minimises that layer's
    coded size; an integer fixes it for every layer (the paper used 4 for AlexNet, 5 for VGG-16).
    ``version=1`` writes the older format (JSON header; no ctx coder, codebooks in float32) for
    readers that predate version 2.
    """

    coder: CoderChoice = CoderChoice.AUTO
    index_bits: int | None = None
    threads: int = 2
    version: int = 2

    def __post_init__(self) -> None:
        self.coder = CoderChoice(self.coder)
        if self.index_bits is not None and self.index_bits not in INDEX_BITS_CHOICES:
            raise ConfigError(f"EncodeConfig: index_bits is {self.index_bits}; use None or an integer in 2..8")
        if self.threads < 1:
            raise ConfigError(f"EncodeConfig: threads is {self.threads}; it must be >= 1")
        if self.version not in VERSIONS:
            raise ConfigError(f"EncodeConfig: version is {self.version}; this writer makes {list(VERSIONS)}")
        if self.version == 1 and self.coder is CoderChoice.CTX:
            raise ConfigError("EncodeConfig: the ctx coder needs format version 2; drop version=1 or choose another coder")


def _code(symbols: np.ndarray, alphabet: int, coder: Coder | None) -> tuple[Coder, bytes]:
    """The stream coded with ``coder``, or with the smallest one (``None``)."""
    if coder is not None:
        return coder, encode_stream(symbols, alphabet, coder)
    counts = np.bincount(symbols, minlength=alphabet)
    best = best_coder(counts, alphabet)
    # rANS's size is predicted within a few bytes only; where it wins, Huffman may still tie it, so both are tried.
    candidates = [best] if best is not Coder.RANS else [Coder.RANS, Coder.HUFFMAN]
    return min(((c, encode_stream(symbols, alphabet, c)) for c in candidates), key=lambda t: len(t[1]))


def codebook_storage(codebook: np.ndarray, version: int) -> tuple[str, bytes, np.ndarray | None]:
    """How the codebook is stored smallest: ``(dtype, bytes, order)``.

    Version 2 stores it in the narrowest dtype that holds every centroid exactly (float16, bfloat16,
    else float32), or, where fewer bytes, sorted and gap-coded (``"delta"``); ``order`` is then the
    permutation that sorted it, which the cluster codes must follow (``None``: stored as given).
    """
    cb = np.ascontiguousarray(codebook, dtype=np.float32)
    if version < 2:
        return "float32", cb.astype("<f4").tobytes(), None
    with np.errstate(over="ignore"):  # a centroid beyond float16's range simply stays wider
        half = cb.astype("<f2")
    if np.array_equal(half.astype(np.float32), cb) and np.isfinite(half).all():
        dtype = "float16"
    elif not (cb.view(np.uint32) & 0xFFFF).any():
        dtype = "bfloat16"
    else:
        dtype = "float32"
    plain = sorted_codebook.patterns(cb, dtype).astype("<u4" if dtype == "float32" else "<u2").tobytes()
    order, delta = sorted_codebook.encode(cb, dtype)
    return ("delta", delta, order) if len(delta) < len(plain) else (dtype, plain, None)


def _reordered(form: SharedSparse, order: np.ndarray | None) -> SharedSparse:
    """``form`` with its codebook in ``order`` and every cluster code renamed to match (fillers stay ``k``)."""
    if order is None:
        return form
    k = form.clusters
    rename = np.empty(k + 1, np.uint16)
    rename[order] = np.arange(k, dtype=np.uint16)
    rename[k] = k
    e = form.entries
    return SharedSparse(form.codebook[order], Entries(rename[e.wsym], e.isym, e.index_bits, e.nnz))


@dataclass
class _Coded:
    """One tensor, coded: what its entry says, and its sections' bytes in file order."""

    kind: str  # "raw", "streams" or "ctx"
    chunks: list[bytes]
    fields: dict[str, Any]

    @property
    def size(self) -> int:
        return sum(len(c) for c in self.chunks)


def _streams(form: SharedSparse, coder: Coder | None, cb_dtype: str, cb: bytes) -> _Coded:
    e = form.entries
    wcoder, wdata = _code(e.wsym, form.clusters + 1, coder)
    icoder, idata = _code(e.isym, 1 << e.index_bits, coder)
    return _Coded("streams", [cb, wdata, idata], {"coders": (wcoder, icoder), "codebook_dtype": cb_dtype})


def _ctx(t: CompressedTensor, form: SharedSparse, cb_dtype: str, cb: bytes) -> _Coded:
    """The ctx coding with the parameters (model, value context, orientation, adaptation rate) that code smallest."""
    positions, codes = form.positions(int(np.prod(t.shape, dtype=np.int64)), f"tensor '{t.name}'")
    data, params = context.encode_best(positions, codes, form.codebook < 0, t.shape)
    return _Coded("ctx", [cb, data], params._asdict() | {"codebook_dtype": cb_dtype})


def _dense(t: CompressedTensor, form: SharedSparse) -> _Coded:
    dense = np.zeros(int(np.prod(t.shape, dtype=np.int64)), np.float32)
    form.scatter_into(dense, f"tensor '{t.name}'")
    return _Coded("raw", [dense.astype("<f4").tobytes()], {})


def _code_tensor(t: CompressedTensor, cfg: EncodeConfig) -> _Coded:
    if t.shared is None:
        return _Coded("raw", [bytes(t.raw)], {})  # type: ignore[arg-type]
    cb_dtype, cb, order = codebook_storage(t.shared.codebook, cfg.version)
    form = _reordered(t.shared, order)
    if cfg.coder is CoderChoice.CTX:
        return _ctx(t, form, cb_dtype, cb)
    candidates = [_streams(form, cfg.coder.coder, cb_dtype, cb)]
    if cfg.coder is CoderChoice.AUTO:
        numel = int(np.prod(t.shape, dtype=np.int64))
        if cfg.version >= 2 and numel <= context.AUTO_LIMIT:
            candidates.append(_ctx(t, form, cb_dtype, cb))
        if 4 * numel < candidates[0].size:  # a tiny layer: its plain float32 values may cost less than any code
            candidates.append(_dense(t, form))
    return min(candidates, key=lambda c: c.size + _record_bytes(_entry(t, c, _Layout(crc=True)), cfg.version))


def _record_bytes(entry: Entry, version: int) -> int:
    """What the entry costs in the header, beside its sections."""
    if version == 1:
        return len(json.dumps(_json_entry(entry), separators=(",", ":")))
    return len(_record(entry, b"")[0])


class _Layout:
    def __init__(self, crc: bool) -> None:
        self.size, self.crc = 0, crc

    def add(self, data: bytes) -> Section:
        s = Section(self.size, len(data), zlib.crc32(data) if self.crc else None)
        self.size += len(data)
        return s


def _entry(t: CompressedTensor, c: _Coded, layout: _Layout) -> Entry:
    sections = [layout.add(chunk) for chunk in c.chunks]
    if c.kind == "raw":
        dtype = t.dtype if t.shared is None else "float32"
        return RawEntry(t.name, t.shape, dtype, sections[0], t.aliases)
    form = t.shared
    assert form is not None
    if c.kind == "ctx":
        return CtxEntry(t.name, t.shape, "float32", form.entries.nnz, form.clusters, c.fields["codebook_dtype"],
                        c.fields["value_ctx"], c.fields["max_shift"], sections[0], sections[1], t.aliases, mixed=c.fields["mixed"],
                        swapped=c.fields["swapped"])
    wcoder, icoder = c.fields["coders"]
    e = form.entries
    return SharedEntry(t.name, t.shape, "float32", e.nnz, e.count, e.index_bits, form.clusters, sections[0],
                       Stream(wcoder, sections[1], form.clusters + 1), Stream(icoder, sections[2], 1 << e.index_bits),
                       t.aliases, c.fields["codebook_dtype"])


def _json_entry(t: Entry) -> dict[str, Any]:
    e: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if isinstance(t, SharedEntry):
        e.update(encoding="shared_sparse", nnz=t.nnz, entries=t.entries, index_bits=t.index_bits, clusters=t.clusters,
                 codebook=t.codebook.to_json(), weights={"coder": t.weights.coder.value, "section": t.weights.section.to_json()},
                 index={"coder": t.index.coder.value, "section": t.index.section.to_json()})
    elif isinstance(t, RawEntry):
        e.update(encoding="raw", data=t.data.to_json())
    if t.aliases:
        e["aliases"] = list(t.aliases)
    return e


def _preamble_and_header(entries: list[Entry], metadata: dict[str, Any], data: list[bytes], version: int, data_bytes: int) -> bytes:
    try:
        if version == 1:
            header = {"format": "deepshrink", "version": 1, "data_bytes": data_bytes, "metadata": metadata,
                      "tensors": [_json_entry(t) for t in entries]}
            hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
            return PREAMBLE.pack(MAGIC, 1, len(hbytes), zlib.crc32(hbytes)) + hbytes
        hbytes = encode_header(entries, metadata)
    except (TypeError, ValueError) as exc:  # metadata the user passed: not JSON, or NaN/Inf (not strict JSON)
        raise ConfigError(f"save: metadata must be strict JSON (no NaN or Inf, only JSON types): {exc}") from None
    crc = zlib.crc32(hbytes)
    for chunk in data:
        crc = zlib.crc32(chunk, crc)
    return PREAMBLE_V2.pack(MAGIC, 2, crc) + hbytes


def _encode(tensors: list[CompressedTensor], config: EncodeConfig, metadata: dict[str, Any]) -> list[bytes]:
    """The file's bytes, in order: the preamble and header, then every section."""
    # One job per tensor, biggest first, so that one dominant layer still keeps every thread busy.
    order = sorted(range(len(tensors)), key=lambda i: -int(np.prod(tensors[i].shape, dtype=np.int64)))
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        done = dict(zip(order, pool.map(lambda i: _code_tensor(tensors[i], config), order), strict=True))
    layout = _Layout(crc=config.version == 1)
    entries = [_entry(t, done[i], layout) for i, t in enumerate(tensors)]
    chunks = [chunk for i in range(len(tensors)) for chunk in done[i].chunks]
    return [_preamble_and_header(entries, metadata, chunks, config.version, layout.size), *chunks]


def encoded_size(tensors: list[CompressedTensor], config: EncodeConfig, metadata: dict[str, Any]) -> int:
    """The bytes :func:`write` would make of ``tensors``, without writing them."""
    return sum(len(part) for part in _encode(tensors, config, metadata))


def write(path: str | os.PathLike[str], tensors: list[CompressedTensor], config: EncodeConfig, metadata: dict[str, Any]) -> int:
    """Write ``tensors`` as a ``.dsz`` file at ``path`` (atomically); return its size in bytes."""
    parts = _encode(tensors, config, metadata)
    atomic_write(Path(path), parts)
    size = sum(len(part) for part in parts)
    log.info("saved %s: %d bytes, %d tensors", path, size, len(tensors))
    return size
