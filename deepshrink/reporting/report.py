"""Per-layer compression statistics in the paper's columns, computed from a ``.dsz`` file alone."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..codec.cost import packed_bits
from ..format.header import RawEntry
from ..format.reader import read_header
from ..format.spec import itemsize

__all__ = ["LayerRow", "Report", "report"]


@dataclass
class LayerRow:
    """One row of the paper's Tables 2-5. Rates are fractions of the layer's dense fp32 size.

    P+Q: the codes stored fixed-width (weight bits = bits for the centroids plus the filler symbol;
    index bits = the relative-index width), fillers counted as entries. P+Q+H: the coded streams as
    written, their tables included. Both rates include the fp32 codebook.
    """

    name: str
    weights: int
    nnz: int
    entries: int
    clusters: int
    weight_bits_pq: float
    weight_bits_pqh: float
    index_bits_pq: float
    index_bits_pqh: float
    rate_pq: float
    rate_pqh: float
    codebook_bytes: int
    weight_bytes: int
    index_bytes: int
    coders: str = ""

    @property
    def density(self) -> float:
        return self.nnz / self.weights if self.weights else 0.0


@dataclass
class Report:
    path: str
    layers: list[LayerRow]
    total: LayerRow
    other_bytes: int
    header_bytes: int
    file_bytes: int
    dense_bytes: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes if self.file_bytes else float("inf")

    @property
    def storage(self) -> dict[str, int]:
        return {
            "weights": self.total.weight_bytes, "index": self.total.index_bytes,
            "codebook": self.total.codebook_bytes, "other": self.other_bytes, "header": self.header_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [asdict(r) | {"density": r.density} for r in self.layers]
        return {
            "path": self.path, "layers": rows, "total": asdict(self.total) | {"density": self.total.density},
            "storage": self.storage, "file_bytes": self.file_bytes, "dense_bytes": self.dense_bytes,
            "ratio": self.ratio, "metadata": self.metadata,
        }

    def table(self) -> str:
        head = ("Layer", "#Weights", "Weights%(P)", "Wbits(P+Q)", "Wbits(P+Q+H)", "Ibits(P+Q)", "Ibits(P+Q+H)",
                "Rate(P+Q)", "Rate(P+Q+H)")
        lines = []

        def row(r: LayerRow) -> tuple[str, ...]:
            return (r.name, _human(r.weights), f"{100 * r.density:.1f}%", f"{r.weight_bits_pq:.1f}",
                    f"{r.weight_bits_pqh:.2f}", f"{r.index_bits_pq:.1f}", f"{r.index_bits_pqh:.2f}",
                    f"{100 * r.rate_pq:.2f}% ({_x(r.rate_pq)})", f"{100 * r.rate_pqh:.2f}% ({_x(r.rate_pqh)})")

        cells = [head, *[row(r) for r in self.layers], row(self.total)]
        widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
        fmt = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
        lines.append(fmt.format(*head))
        lines.append("-" * len(lines[0]))
        lines += [fmt.format(*c) for c in cells[1:-1]]
        lines.append("-" * len(lines[0]))
        lines.append(fmt.format(*cells[-1]))
        s = self.storage
        total = sum(s.values())
        split = ", ".join(f"{k} {v:,} B ({100 * v / total:.1f}%)" for k, v in s.items())
        lines.append("")
        lines.append(f"storage: {split}")
        lines.append(
            f"file: {self.file_bytes:,} bytes; dense fp32: {self.dense_bytes:,} bytes; "
            f"compression {self.ratio:.1f}x (everything counted: other tensors, header, tables)"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _human(n: int) -> str:
    for unit, scale in (("M", 1_000_000), ("K", 1_000)):
        if n >= scale:
            return f"{n / scale:.0f}{unit}" if n >= 10 * scale else f"{n / scale:.1f}{unit}"
    return str(n)


def _x(rate: float) -> str:
    return f"{1 / rate:.0f}x" if rate > 0 else "inf"


def _row(name: str, numel: int, nnz: int, entries: int, k: int, ibits: int, cb: int, wb: int, ib: int, coders: str) -> LayerRow:
    wbits_pq = packed_bits(1, k + 1)
    dense_bits = 32 * numel
    return LayerRow(
        name=name, weights=numel, nnz=nnz, entries=entries, clusters=k,
        weight_bits_pq=wbits_pq, weight_bits_pqh=8 * wb / entries if entries else 0.0,
        index_bits_pq=ibits, index_bits_pqh=8 * ib / entries if entries else 0.0,
        rate_pq=(entries * (wbits_pq + ibits) + 32 * k) / dense_bits if dense_bits else 0.0,
        rate_pqh=8 * (cb + wb + ib) / dense_bits if dense_bits else 0.0,
        codebook_bytes=cb, weight_bytes=wb, index_bytes=ib, coders=coders,
    )


def report(path: str | os.PathLike[str]) -> Report:
    """Build the per-layer report of a ``.dsz`` file from its header and section sizes (no model, nothing decoded)."""
    header = read_header(path)
    file_bytes = Path(path).stat().st_size
    rows: list[LayerRow] = []
    other = 0
    dense = 0
    for t in header.tensors:
        dense += t.numel * itemsize(t.dtype)
        if isinstance(t, RawEntry):
            other += t.data.length
            continue
        sb = t.section_bytes
        coders = f"{t.weights.coder.value}/{t.index.coder.value}"
        rows.append(_row(t.name, t.numel, t.nnz, t.entries, t.clusters, t.index_bits,
                         sb["codebook"], sb["weights"], sb["index"], coders))
    total = _total(rows)
    return Report(str(path), rows, total, other, file_bytes - header.data_bytes, file_bytes, dense, dict(header.metadata))


def _total(rows: list[LayerRow]) -> LayerRow:
    numel = sum(r.weights for r in rows)
    entries = sum(r.entries for r in rows)
    cb, wb, ib = (sum(getattr(r, f) for r in rows) for f in ("codebook_bytes", "weight_bytes", "index_bytes"))
    pq_bits = sum(r.rate_pq * 32 * r.weights for r in rows)

    def avg(f: str) -> float:
        return sum(getattr(r, f) * r.entries for r in rows) / entries if entries else 0.0

    return LayerRow(
        name="Total", weights=numel, nnz=sum(r.nnz for r in rows), entries=entries,
        clusters=sum(r.clusters for r in rows), weight_bits_pq=avg("weight_bits_pq"), weight_bits_pqh=8 * wb / entries if entries else 0.0,
        index_bits_pq=avg("index_bits_pq"), index_bits_pqh=8 * ib / entries if entries else 0.0,
        rate_pq=pq_bits / (32 * numel) if numel else 0.0, rate_pqh=8 * (cb + wb + ib) / (32 * numel) if numel else 0.0,
        codebook_bytes=cb, weight_bytes=wb, index_bytes=ib,
    )
