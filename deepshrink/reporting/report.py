"""Per-layer compression statistics in the paper's columns, computed from a ``.dsz`` file alone."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..codec.cost import packed_bits
from ..codec.sparse_index import INDEX_BITS_CHOICES, gap_stats
from ..format.entries import CtxEntry, RawEntry, SharedEntry
from ..format.reader import Reader
from ..format.spec import itemsize

__all__ = ["LayerRow", "Report", "order0_bytes", "report"]


@dataclass
class LayerRow:
    """One row of the paper's Tables 2-5. Rates are fractions of the layer's dense fp32 size.

    P+Q: the codes stored fixed-width (weight bits = bits for the centroids plus the filler symbol;
    index bits = the relative-index width), fillers counted as entries. P+Q+H: the coded streams as
    written, their tables included. Both rates include the codebook as stored. A layer coded by the
    ctx coder has one payload for both: its bytes are split between weights and index in proportion
    to the bits its decoder spends on codes and on positions, and its P+Q columns are those of the
    fixed-width relative index with the narrowest total (what the paper would have stored).
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
    metadata_bytes: int = 0
    version: int = 2
    raw: dict[str, int] = field(default_factory=dict)  # tensors stored uncompressed: name -> bytes

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes if self.file_bytes else float("inf")

    @property
    def storage(self) -> dict[str, int]:
        return {
            "weights": self.total.weight_bytes, "index": self.total.index_bytes,
            "codebook": self.total.codebook_bytes, "other": self.other_bytes, "header": self.header_bytes,
            "metadata": self.metadata_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        rows = [asdict(r) | {"density": r.density} for r in self.layers]
        return {
            "path": self.path, "layers": rows, "total": asdict(self.total) | {"density": self.total.density},
            "storage": self.storage, "file_bytes": self.file_bytes, "dense_bytes": self.dense_bytes,
            "ratio": self.ratio, "metadata": self.metadata, "version": self.version, "raw": self.raw,
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
        if self.raw:
            biggest = sorted(self.raw.items(), key=lambda kv: -kv[1])
            listed = ", ".join(f"{n} {b:,} B" for n, b in biggest[:8]) + (f", and {len(biggest) - 8} more" if len(biggest) > 8 else "")
            lines.append(f"stored raw (not compressed): {listed}")
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
    cb_pq = 4 * k
    return LayerRow(
        name=name, weights=numel, nnz=nnz, entries=entries, clusters=k,
        weight_bits_pq=wbits_pq, weight_bits_pqh=8 * wb / entries if entries else 0.0,
        index_bits_pq=ibits, index_bits_pqh=8 * ib / entries if entries else 0.0,
        rate_pq=(entries * (wbits_pq + ibits) + 8 * cb_pq) / dense_bits if dense_bits else 0.0,
        rate_pqh=8 * (cb + wb + ib) / dense_bits if dense_bits else 0.0,
        codebook_bytes=cb, weight_bytes=wb, index_bytes=ib, coders=coders,
    )


def _ctx_row(reader: Reader, t: CtxEntry) -> LayerRow:
    """A ctx layer's row: its payload split by where the decoder spends its bits, P+Q at the best fixed widths."""
    from ..codec import context

    codebook, positions, codes = reader.ctx(t)
    costs = np.zeros(3)
    context.encode(positions, codes, codebook < 0, t.shape, t.value_ctx, t.max_shift, costs, t.mixed, t.swapped)
    payload = t.payload.length
    position_bits = costs[0] + costs[1]
    index_bytes = round(payload * position_bits / costs.sum()) if costs.sum() > 0 else 0
    mask = np.zeros(t.numel, bool)
    mask[positions] = True
    full = np.zeros(t.numel, np.uint8)
    full[positions] = codes
    stats = gap_stats(mask, full, t.clusters)
    width = packed_bits(1, t.clusters + 1)
    ibits = min(INDEX_BITS_CHOICES, key=lambda b: (t.nnz + int(stats.fillers[b])) * (width + b)) if t.nnz else 4
    entries = t.nnz + int(stats.fillers[ibits]) if t.nnz else 0
    return _row(t.name, t.numel, t.nnz, entries, t.clusters, ibits, t.codebook.length, payload - index_bytes, index_bytes, "ctx")


def order0_bytes(reader: Reader, t: SharedEntry | CtxEntry) -> float:
    """Order-0 entropy of a shared tensor's two entry-wise streams (at its index width, or the best one for a
    ctx layer), tables and codebook left out: the bound no order-0 coder of that form can beat."""
    from ..codec.entropy import entropy_bits
    from ..codec.sparse_index import choose_index_bits

    form = reader.shared(t)
    pos, codes = form.positions(t.numel, t.name)
    mask = np.zeros(t.numel, bool)
    mask[pos] = True
    full = np.zeros(t.numel, np.uint8)
    full[pos] = codes
    stats = gap_stats(mask, full, t.clusters)
    bits = t.index_bits if isinstance(t, SharedEntry) else choose_index_bits(stats, t.clusters, None)
    wh, ih = stats.histograms(bits)
    return (entropy_bits(wh) + entropy_bits(ih)) / 8


def report(path: str | os.PathLike[str]) -> Report:
    """Build the per-layer report of a ``.dsz`` file from the file alone (no model): header, section sizes, and for
    ctx-coded layers the split of their payload, which takes decoding them."""
    reader = Reader.open(path)
    reader.verify()
    header = reader.header
    file_bytes = Path(path).stat().st_size
    rows: list[LayerRow] = []
    other = 0
    dense = 0
    raw: dict[str, int] = {}
    for t in header.tensors:
        dense += t.numel * itemsize(t.dtype)
        if isinstance(t, RawEntry):
            other += t.data.length
            raw[t.name] = t.data.length
        elif isinstance(t, CtxEntry):
            rows.append(_ctx_row(reader, t))
        elif isinstance(t, SharedEntry):
            sb = t.section_bytes
            coders = f"{t.weights.coder.value}/{t.index.coder.value}"
            rows.append(_row(t.name, t.numel, t.nnz, t.entries, t.clusters, t.index_bits,
                             sb["codebook"], sb["weights"], sb["index"], coders))
    total = _total(rows)
    structure = file_bytes - header.data_bytes - header.metadata_bytes
    return Report(str(path), rows, total, other, structure, file_bytes, dense, dict(header.metadata), header.metadata_bytes,
                  header.version, raw)


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
