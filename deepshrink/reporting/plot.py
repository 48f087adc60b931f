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
    ax1.set_ylabel("compressed size, % of dense fp32")
    ax1.set_title(f"{os.path.basename(rep.path)}: {rep.ratio:.1f}x overall")
    ax1.legend()
    storage = {k: v for k, v in rep.storage.items() if v > 0}
    ax2.pie(list(storage.values()), labels=[f"{k}\n{v:,} B" for k, v in storage.items()], autopct="%1.0f%%")
    ax2.set_title("where the bytes go")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
