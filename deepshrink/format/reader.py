"""``.dsz`` bytes to a validated header and compressed tensors; every failure is a :class:`FormatError`."""

from __future__ import annotations

import os
import zlib

import numpy as np

from ..codec.entropy import decode_stream
from ..codec.sparse_index import Entries
from ..compressed import SharedSparse
from ..errors import FormatError
from .header import Header, Section, SharedEntry, parse_header

__all__ = ["Reader", "read_header"]


def _read(path: str | os.PathLike[str]) -> memoryview:
    try:
        with open(path, "rb") as f:
            return memoryview(f.read())
    except OSError as exc:
        raise FormatError(f"{path}: cannot read file ({exc.strerror})") from None


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and validate a file's header (nothing is decoded)."""
    return parse_header(_read(path), str(path))


class Reader:
    """A file's bytes and validated header; decodes sections on request."""

    def __init__(self, data: bytes | memoryview, name: str) -> None:
        self.buf = memoryview(data).cast("B")
        self.name = name
        self.header = parse_header(self.buf, name)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Reader:
        return cls(_read(path), str(path))

    def chunk(self, section: Section) -> memoryview:
        start = self.header.data_start + section.offset
        return self.buf[start : start + section.length]

    def verify(self) -> None:
        """Every section's checksum, before anything is decoded or any model tensor touched."""
        for t in self.header.tensors:
            for section, what in t.sections():
                if zlib.crc32(self.chunk(section)) != section.crc:
                    raise FormatError(f"{self.name}: {what}: checksum mismatch; the file is damaged")

    # The decoders below run after verify(), so they slice sections without checking them again.
    def stream(self, t: SharedEntry, key: str) -> np.ndarray:
        """The decoded symbols of ``t``'s ``"weights"`` or ``"index"`` stream."""
        s = t.weights if key == "weights" else t.index
        return decode_stream(self.chunk(s.section), t.entries, s.alphabet, s.coder, f"{self.name}: tensor '{t.name}' {key} stream")

    def shared(self, t: SharedEntry, syms: dict[str, np.ndarray] | None = None) -> SharedSparse:
        """The compressed form of a ``shared_sparse`` entry; ``syms`` may hold streams already decoded."""
        what = f"{self.name}: tensor '{t.name}'"
        codebook = np.frombuffer(self.chunk(t.codebook), dtype="<f4").astype(np.float32)
        if not np.isfinite(codebook).all():
            raise FormatError(f"{what}: codebook holds NaN or Inf")
        syms = dict(syms or {})
        for key in ("weights", "index"):
            if key not in syms:
                syms[key] = self.stream(t, key)
        nnz = int(np.count_nonzero(syms["weights"] != t.clusters))
        if nnz != t.nnz:
            raise FormatError(f"{what}: weights stream holds {nnz} non-zero entries, header says {t.nnz}")
        return SharedSparse(codebook, Entries(syms["weights"], syms["index"], t.index_bits, t.nnz))
