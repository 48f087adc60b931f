"""``.dsz`` bytes to a validated header and compressed tensors; every failure is a :class:`FormatError`."""

from __future__ import annotations

import os
import zlib

import numpy as np

from ..codec.entropy import decode_stream
from ..codec.sparse_index import Entries
from ..compressed import SharedSparse
from ..errors import FormatError
from .entries import CtxEntry, Header, RawEntry, Section, SharedEntry
from .header import parse_header
from .spec import DTYPES, MAX_CLAIMED_ELEMENTS

__all__ = ["Reader", "decode_codebook", "read_header"]


def _read(path: str | os.PathLike[str]) -> memoryview:
    try:
        with open(path, "rb") as f:
            return memoryview(f.read())
    except OSError as exc:
        raise FormatError(f"{path}: cannot read file ({exc.strerror})") from None


def decode_codebook(data: memoryview | bytes, dtype: str, count: int, what: str) -> np.ndarray:
    """A stored codebook's ``count`` values as float32 (float16 and bfloat16 widen exactly); ``what`` names it in errors."""
    from ..codec import codebook

    if dtype == "delta":
        return codebook.decode(data, count, what)
    return codebook.widen(np.frombuffer(data, dtype="<u4" if dtype == "float32" else "<u2"), dtype)


def _raw_problem(t: RawEntry, data: memoryview) -> str | None:
    """Values no writer makes: bool bytes other than 0 and 1, NaN or Inf in floating-point tensors."""
    if t.dtype == "bool":
        return None if int(np.frombuffer(data, dtype=np.uint8).max(initial=0)) <= 1 else "bool bytes must be 0 or 1"
    if t.dtype == "bfloat16":  # no numpy dtype: all-ones exponent bits mean Inf or NaN
        finite = not bool((np.frombuffer(data, dtype="<u2") & 0x7F80 == 0x7F80).any())
    elif t.dtype.startswith("float"):
        finite = bool(np.isfinite(np.frombuffer(data, dtype=DTYPES[t.dtype][1])).all())
    else:
        return None
    return None if finite else "raw floating-point data holds NaN or Inf"


def read_header(path: str | os.PathLike[str]) -> Header:
    """Parse and validate a file's header (nothing is decoded)."""
    return parse_header(_read(path), str(path))


class Reader:
    """A file's bytes and validated header; decodes sections on request."""

    def __init__(self, data: bytes | memoryview, name: str, max_elements: int = MAX_CLAIMED_ELEMENTS) -> None:
        self.buf = memoryview(data).cast("B")
        self.name = name
        self.header = parse_header(self.buf, name, max_elements)

    @classmethod
    def open(cls, path: str | os.PathLike[str], max_elements: int = MAX_CLAIMED_ELEMENTS) -> Reader:
        return cls(_read(path), str(path), max_elements)

    def chunk(self, section: Section) -> memoryview:
        start = self.header.data_start + section.offset
        return self.buf[start : start + section.length]

    def verify(self) -> None:
        """Every checksum and every value rule, before anything is decoded or any model tensor touched.

        (Version 2's one checksum over the whole file was checked when the header was parsed.)
        """
        for t in self.header.tensors:
            for section, what in t.sections():
                if section.crc is not None and zlib.crc32(self.chunk(section)) != section.crc:
                    raise FormatError(f"{self.name}: {what}: checksum mismatch; the file is damaged")
            if not isinstance(t, RawEntry):
                self.codebook(t)
            elif problem := _raw_problem(t, self.chunk(t.data)):
                raise FormatError(f"{self.name}: tensor '{t.name}': {problem}")

    # The decoders below run after verify(), so they slice sections without checking them again.
    def stream(self, t: SharedEntry, key: str) -> np.ndarray:
        """The decoded symbols of ``t``'s ``"weights"`` or ``"index"`` stream."""
        s = t.weights if key == "weights" else t.index
        return decode_stream(self.chunk(s.section), t.entries, s.alphabet, s.coder, f"{self.name}: tensor '{t.name}' {key} stream")

    def codebook(self, t: SharedEntry | CtxEntry) -> np.ndarray:
        what = f"{self.name}: tensor '{t.name}' codebook"
        values = decode_codebook(self.chunk(t.codebook), t.codebook_dtype, t.clusters, what)
        if not np.isfinite(values).all():
            raise FormatError(f"{self.name}: tensor '{t.name}': codebook holds NaN or Inf")
        return values

    def ctx(self, t: CtxEntry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Codebook, flat positions and cluster codes of a ``shared_ctx`` entry."""
        from ..codec import context

        codebook = self.codebook(t)
        positions, codes = context.decode(self.chunk(t.payload), t.shape, codebook < 0, t.value_ctx, t.max_shift, t.nnz,
                                          f"{self.name}: tensor '{t.name}'", t.mixed, t.swapped)
        return codebook, positions, codes

    def shared(self, t: SharedEntry | CtxEntry, syms: dict[str, np.ndarray] | None = None) -> SharedSparse:
        """The compressed form of a weight-shared entry; ``syms`` may hold streams already decoded."""
        what = f"{self.name}: tensor '{t.name}'"
        if isinstance(t, CtxEntry):
            codebook, positions, codes = self.ctx(t)
            return SharedSparse.from_positions(codebook, positions, codes)
        codebook = self.codebook(t)
        syms = dict(syms or {})
        for key in ("weights", "index"):
            if key not in syms:
                syms[key] = self.stream(t, key)
        nnz = int(np.count_nonzero(syms["weights"] != t.clusters))
        if nnz != t.nnz:
            raise FormatError(f"{what}: weights stream holds {nnz} non-zero entries, header says {t.nnz}")
        return SharedSparse(codebook, Entries(syms["weights"], syms["index"], t.index_bits, t.nnz))
