"""The typed, frozen entries a validated ``.dsz`` header is made of (either version); nothing mutates them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..codec.entropy import Coder

__all__ = ["CtxEntry", "Entry", "Header", "RawEntry", "Section", "SharedEntries", "SharedEntry", "Stream"]


@dataclass(frozen=True)
class Section:
    """``[offset, length, crc32]``, offset relative to the data area; version 2 has one checksum for the file, ``crc=None``."""

    offset: int
    length: int
    crc: int | None = None

    def to_json(self) -> list[int]:
        return [self.offset, self.length, self.crc or 0]


@dataclass(frozen=True)
class Stream:
    coder: Coder
    section: Section
    alphabet: int


class _Entry:
    """What every tensor entry has: a name, a shape, a dtype, aliases."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    aliases: tuple[str, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class RawEntry(_Entry):
    name: str
    shape: tuple[int, ...]
    dtype: str
    data: Section
    aliases: tuple[str, ...] = ()

    def sections(self) -> list[tuple[Section, str]]:
        return [(self.data, f"tensor '{self.name}'")]

    @property
    def section_bytes(self) -> dict[str, int]:
        return {"raw": self.data.length}


@dataclass(frozen=True)
class SharedEntry(_Entry):
    """A weight-shared tensor as two entry-wise streams (cluster codes with fillers, relative positions)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    entries: int
    index_bits: int
    clusters: int
    codebook: Section
    weights: Stream
    index: Stream
    aliases: tuple[str, ...] = ()
    codebook_dtype: str = "float32"

    def sections(self) -> list[tuple[Section, str]]:
        what = f"tensor '{self.name}'"
        return [(self.codebook, f"{what} codebook"), (self.weights.section, f"{what} weights stream"),
                (self.index.section, f"{what} index stream")]

    @property
    def section_bytes(self) -> dict[str, int]:
        return {"codebook": self.codebook.length, "weights": self.weights.section.length, "index": self.index.section.length}


@dataclass(frozen=True)
class CtxEntry(_Entry):
    """A weight-shared tensor coded by the context-adaptive coder: positions and codes in one payload."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    nnz: int
    clusters: int
    codebook_dtype: str
    value_ctx: bool
    max_shift: int
    codebook: Section
    payload: Section
    aliases: tuple[str, ...] = ()
    mixed: bool = False  # the mixed probability model (params bit 6)
    swapped: bool = False  # walked with the first two axes exchanged (params bit 7)

    def sections(self) -> list[tuple[Section, str]]:
        what = f"tensor '{self.name}'"
        return [(self.codebook, f"{what} codebook"), (self.payload, f"{what} ctx payload")]

    @property
    def section_bytes(self) -> dict[str, int]:
        return {"codebook": self.codebook.length, "payload": self.payload.length}


Entry = RawEntry | SharedEntry | CtxEntry
SharedEntries = (SharedEntry, CtxEntry)


@dataclass(frozen=True)
class Header:
    version: int
    data_bytes: int
    data_start: int
    tensors: tuple[Entry, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    metadata_bytes: int = 0  # bytes the metadata takes in the header (version 2; 0 in version 1, where it is JSON inside)
