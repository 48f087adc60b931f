"""Figures of a report (matplotlib is imported here only, and only when a figure is asked for)."""

from __future__ import annotations

import os

from ..errors import MissingDependencyError
from .report import Report

__all__ = ["plot_report"]


def plot_report(rep: Report, path: str | os.PathLike[str]) -> None:
    """Per-layer compress rates (P+Q and P+Q+H) and the storage split, as one PNG."""
    try:
        # The Figure API draws without pyplot's global state: the caller's backend is left alone.
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'deepshrink[plot]'") from None
    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    names = [r.name.removesuffix(".weight") for r in rep.layers]
    xs = range(len(names))
    ax1.bar([x - 0.2 for x in xs], [100 * r.rate_pq for r in rep.layers], width=0.4, label="P+Q")
    ax1.bar([x + 0.2 for x in xs], [100 * r.rate_pqh for r in rep.layers], width=0.4, label="P+Q+H")
    ax1.set_xticks(list(xs), names, rotation=45, ha="right")
    # A log axis: a 10-value bias at 45% would otherwise flatten the layers at 1% that hold the bytes.
    ax1.set_yscale("log")
    ax1.set_ylabel("compressed size, % of dense fp32 (log)")
    ax1.set_title(f"{os.path.basename(rep.path)}: {rep.ratio:.1f}x overall")
    # Headroom above the tallest bar for the legend: in the plot's best corner it still covered a bias's bars.
    top = max([100 * r.rate_pq for r in rep.layers] + [100 * r.rate_pqh for r in rep.layers], default=100.0)
    ax1.set_ylim(top=top * 6)
    ax1.legend(ncol=2, loc="upper center")
    storage = {k: v for k, v in rep.storage.items() if v > 0}
    # Bars, not a pie: the header, codebooks and metadata are 1% slices whose pie labels printed over each other.
    total = sum(storage.values())
    ax2.barh(list(storage), list(storage.values()))
    ax2.invert_yaxis()
    for i, v in enumerate(storage.values()):
        ax2.text(v, i, f" {v:,} B ({100 * v / total:.0f}%)", va="center")
    ax2.set_xlim(0, 1.45 * max(storage.values()))
    ax2.set_xlabel("bytes in the file")
    ax2.set_title("where the bytes go")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
