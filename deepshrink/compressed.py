"""The model-free compressed form: what a ``.dsz`` file holds, as numpy arrays, knowing nothing of ``nn.Module``.

``save`` turns a model into these, the format layer turns them into bytes and back, and ``load``
(dense or sparse), the report and exporters read them. A weight-shared tensor is kept in the paper's
relative-index form (a codebook, a weight symbol and a gap symbol per entry), which is both what the
coders compress and the cheapest form to scatter into a dense tensor or turn into sparse rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .codec.entropy import Coder
from .codec.sparse_index import Entries, build_entries, choose_index_bits, gap_stats
from .errors import ConfigError, FormatError

__all__ = ["CompressedTensor", "SharedSparse"]

DAMAGED_INDEX = "sparse index leaves the tensor or ends on a filler (damaged index stream)"


@dataclass(frozen=True)
class SharedSparse:
    """A weight-shared sparse tensor: ``codebook[wsym]`` at the positions the gaps ``isym`` walk to.

    Entry ``e`` sits ``isym[e] + 1`` positions after the previous one; ``wsym[e] == clusters`` marks
    a filler, which stays zero.
    """

    codebook: np.ndarray  # float32, (clusters,)
    entries: Entries

    @property
    def clusters(self) -> int:
        return int(self.codebook.size)

    @classmethod
    def from_mask_codes(
        cls, flat_mask: np.ndarray, flat_codes: np.ndarray, codebook: np.ndarray,
        index_bits: int | None = None, coder: Coder | None = None,
    ) -> SharedSparse:
        """From a layer's non-zero pattern and cluster codes; ``index_bits=None`` picks the width that codes smallest."""
        k = int(codebook.size)
        stats = gap_stats(flat_mask, flat_codes, k)
        bits = index_bits if index_bits is not None else choose_index_bits(stats, k, coder)
        return cls(np.ascontiguousarray(codebook, dtype=np.float32), build_entries(flat_mask, flat_codes, k, bits, stats))

    @classmethod
    def from_positions(cls, codebook: np.ndarray, positions: np.ndarray, codes: np.ndarray, index_bits: int = 8) -> SharedSparse:
        """From sorted flat positions and their cluster codes (as the ctx coder decodes them)."""
        from .codec import _jit

        k = int(codebook.size)
        gaps = np.diff(positions, prepend=-1) - 1
        total = int(positions.size + (gaps >> index_bits).sum())
        wsym = np.empty(total, np.uint16)
        isym = np.empty(total, np.uint16)
        _jit.entries_from_positions(np.ascontiguousarray(positions, dtype=np.int64), np.ascontiguousarray(codes, dtype=np.uint8),
                                    index_bits, k, wsym, isym)
        return cls(np.ascontiguousarray(codebook, dtype=np.float32), Entries(wsym, isym, index_bits, int(positions.size)))

    def scatter_into(self, dest: np.ndarray, what: str) -> None:
        """Write the non-zero values into the flat, zeroed ``dest``; :class:`FormatError` naming ``what`` if the index is damaged."""
        from .codec import _jit

        if _jit.scatter_entries(self.entries.wsym, self.entries.isym, self.codebook, self.clusters, dest) != _jit.OK:
            raise FormatError(f"{what}: {DAMAGED_INDEX}")

    def positions(self, numel: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat positions and cluster codes of the non-zero values, in order, without a dense tensor."""
        e = self.entries
        pos = np.cumsum(e.isym.astype(np.int64) + 1) - 1
        real = e.wsym != self.clusters
        if pos.size and (pos[-1] >= numel or not real[-1]):
            raise FormatError(f"{what}: {DAMAGED_INDEX}")
        return pos[real], e.wsym[real].astype(np.uint8)


@dataclass(frozen=True)
class CompressedTensor:
    """One named tensor of a model: weight-shared (``shared``) or stored as raw little-endian bytes (``raw``).

    ``aliases`` are further names of the same tensor (tied weights).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    shared: SharedSparse | None = None
    raw: bytes | memoryview | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.shared is None) == (self.raw is None):
            raise ConfigError(f"CompressedTensor '{self.name}': give exactly one of shared or raw")
