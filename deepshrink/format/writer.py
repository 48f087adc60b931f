"""Compressed tensors to ``.dsz`` bytes: each stream coded, the header laid out, the file written atomically."""

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
from ..codec.cost import best_coder
from ..codec.entropy import Coder, encode_stream
from ..codec.sparse_index import INDEX_BITS_CHOICES
from ..compressed import CompressedTensor, SharedSparse
from ..errors import ConfigError
from .atomic import atomic_write
from .spec import FORMAT_VERSION, MAGIC, PREAMBLE

__all__ = ["CoderChoice", "EncodeConfig", "write"]

log = logging.getLogger(__name__)


class CoderChoice(str, Enum):
    """``auto`` codes each stream with whichever coder makes it smallest."""

    AUTO = "auto"
    RANS = "rans"
    HUFFMAN = "huffman"
    PACKED = "packed"

    @property
    def coder(self) -> Coder | None:
        return None if self is CoderChoice.AUTO else Coder(self.value)


@dataclass
class EncodeConfig(DictConfig):
    """How :func:`save` codes weight-shared layers.

    ``index_bits=None`` picks, per layer, the relative-index width in 2..8 that minimises that layer's
    coded size; an integer fixes it for every layer (the paper used 4 for AlexNet, 5 for VGG-16).
    """

    coder: CoderChoice = CoderChoice.AUTO
    index_bits: int | None = None
    threads: int = 2

    def __post_init__(self) -> None:
        self.coder = CoderChoice(self.coder)
        if self.index_bits is not None and self.index_bits not in INDEX_BITS_CHOICES:
            raise ConfigError(f"EncodeConfig: index_bits is {self.index_bits}; use None or an integer in 2..8")
        if self.threads < 1:
            raise ConfigError(f"EncodeConfig: threads is {self.threads}; it must be >= 1")



def _code(symbols: np.ndarray, alphabet: int, coder: Coder | None) -> tuple[Coder, bytes]:
    """The stream coded with ``coder``, or with the smallest one (``None``)."""
    if coder is not None:
        return coder, encode_stream(symbols, alphabet, coder)
    counts = np.bincount(symbols, minlength=alphabet)
    best = best_coder(counts, alphabet)
    # rANS's size is predicted within a few bytes only; where it wins, Huffman may still tie it, so both are tried.
    candidates = [best] if best is not Coder.RANS else [Coder.RANS, Coder.HUFFMAN]
    return min(((c, encode_stream(symbols, alphabet, c)) for c in candidates), key=lambda t: len(t[1]))


class _Sections:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def add(self, data: bytes | memoryview) -> list[int]:
        ref = [self.size, len(data), zlib.crc32(data)]
        self.chunks.append(bytes(data))
        self.size += len(data)
        return ref


def _streams(form: SharedSparse) -> dict[str, tuple[np.ndarray, int]]:
    """A shared tensor's two symbol streams and their alphabets, in file order."""
    e = form.entries
    return {"weights": (e.wsym, form.clusters + 1), "index": (e.isym, 1 << e.index_bits)}


def _entry(t: CompressedTensor, coded: dict[tuple[str, str], tuple[Coder, bytes]], sections: _Sections) -> dict[str, Any]:
    e: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "dtype": t.dtype}
    if t.shared is not None:
        ent = t.shared.entries
        e.update(encoding="shared_sparse", nnz=ent.nnz, entries=ent.count, index_bits=ent.index_bits, clusters=t.shared.clusters)
        e["codebook"] = sections.add(t.shared.codebook.astype("<f4").tobytes())
        for key in ("weights", "index"):
            coder, data = coded[(t.name, key)]
            e[key] = {"coder": coder.value, "section": sections.add(data)}
    elif t.raw is not None:
        e.update(encoding="raw", data=sections.add(t.raw))
    if t.aliases:
        e["aliases"] = list(t.aliases)
    return e


def write(path: str | os.PathLike[str], tensors: list[CompressedTensor], config: EncodeConfig, metadata: dict[str, Any]) -> int:
    """Write ``tensors`` as a ``.dsz`` file at ``path`` (atomically); return its size in bytes."""
    # One job per stream, biggest first, so that one dominant layer still keeps every thread busy.
    jobs = sorted(((t.name, key, syms, alphabet) for t in tensors if t.shared is not None
                   for key, (syms, alphabet) in _streams(t.shared).items()), key=lambda j: -j[2].size)
    with ThreadPoolExecutor(max_workers=config.threads) as pool:
        done = pool.map(lambda j: _code(j[2], j[3], config.coder.coder), jobs)
        coded = {(name, key): result for (name, key, _, _), result in zip(jobs, done, strict=True)}
    sections = _Sections()
    entries = [_entry(t, coded, sections) for t in tensors]
    header = {"format": "deepshrink", "version": FORMAT_VERSION, "data_bytes": sections.size, "metadata": metadata, "tensors": entries}
    try:
        hbytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:  # metadata the user passed: not JSON, or NaN/Inf (not strict JSON)
        raise ConfigError(f"save: metadata must be strict JSON (no NaN or Inf, only JSON types): {exc}") from None
    blob = PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(hbytes), zlib.crc32(hbytes)) + hbytes
    atomic_write(Path(path), [blob, *sections.chunks])
    size = len(blob) + sections.size
    log.info("saved %s: %d bytes, %d tensors", path, size, len(entries))
    return size
