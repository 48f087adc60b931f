"""``deepshrink figure``: the paper's experiments (Figures 4-8, 11 and Table 6), run for real on a LeNet.

Every experiment trains, prunes, shares, fine-tunes and codes as the pipeline does, on the reference
model ``reproduce`` trains (cached in the output directory), and measures accuracy on the test set
after its last step; sizes are the bytes of files written to disk. Each writes a PNG, a JSON of every
point and, for the paper's claim that goes with it, whether the claim holds on this run and the numbers
behind the verdict. ``all`` also writes ``index.html``, a gallery that opens without a server.
"""

from __future__ import annotations

import copy
import html
import json
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, MissingDependencyError
from ..reporting.report import report
from ..serialize import save
from ..transforms.pruning import PruneConfig, prune_
from ..transforms.sharing import Init, ShareConfig, SharedWeight, kmeans1d, share_weights_
from .data import Dataset
from .reproduce import RECIPES, _reference, split_validation
from .train import evaluate, train_epochs

__all__ = ["EXPERIMENTS", "FigureRun", "run_experiment", "write_gallery"]


@dataclass
class FigureRun:
    """What every experiment shares: the data, the reference, where to write, how long to train."""

    arch: str
    data: Dataset
    out: Path
    seed: int = 0
    epochs: int = 2  # retraining / fine-tuning epochs at each point
    reference_epochs: int | None = None  # default: the reproduce recipe's
    progress: bool = False

    def __post_init__(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.train, self.val = split_validation(self.data, min(5000, len(self.data.train) // 10))
        base = RECIPES[self.arch]
        self.recipe = replace(base, epochs=self.reference_epochs or base.epochs)
        self._ref: nn.Module | None = None

    @property
    def dataset_name(self) -> str:
        src = self.data.source.rstrip("/").lower()
        return "Fashion-MNIST" if "fashion" in src else "MNIST" if "mnist" in src else Path(src).name

    def reference(self) -> nn.Module:
        if self._ref is None:
            self._ref, _ = _reference(self.recipe, self.train, self.data.source, self.out, self.seed, self.progress)
        return copy.deepcopy(self._ref)

    def retrain(self, model: nn.Module, epochs: int | None = None) -> None:
        shared = any(isinstance(m, SharedWeight) for m in model.modules())
        r = self.recipe
        train_epochs(model, self.train, self.epochs if epochs is None else epochs, r.finetune_lr if shared else r.retrain_lr,
                     optimizer=r.finetune_optimizer if shared else r.optimizer, weight_decay=0.0 if shared else r.weight_decay,
                     seed=self.seed + 7, progress=self.progress)

    def test(self, model: nn.Module) -> float:
        return evaluate(model, self.data.test)

    def file_bytes(self, model: nn.Module) -> int:
        with tempfile.TemporaryDirectory() as d:
            return save(model, Path(d) / "m.dsz")

    def pruned_only_bytes(self, model: nn.Module) -> int:
        """A pruned, unshared model stored as the paper counts it: float32 values plus the coded relative index."""
        shared = copy.deepcopy(model)
        share_weights_(shared, ShareConfig(conv_bits=8, fc_bits=8))
        with tempfile.TemporaryDirectory() as d:
            save(shared, Path(d) / "m.dsz")
            rep = report(Path(d) / "m.dsz")
        return 4 * rep.total.nnz + rep.total.index_bytes + rep.other_bytes + rep.header_bytes

    def title(self, what: str) -> str:
        # Two lines: on one, a single-panel figure's title runs past its edge.
        return f"{what}\n{self.arch} on {self.dataset_name}"


def _figure(width: float = 6.4, height: float = 4.2) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("figures need matplotlib: pip install 'deepshrink[plot]'") from None
    return Figure(figsize=(width, height))


def _layers(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _weight(model: nn.Module, layer: str) -> torch.Tensor:
    w: torch.Tensor = model.get_submodule(layer).weight  # type: ignore[assignment]
    return w


def _shared_of(model: nn.Module, layer: str) -> SharedWeight:
    p: Any = model.get_submodule(layer).parametrizations
    return p.weight[0]  # type: ignore[no-any-return]


def _codebook_of(model: nn.Module, layer: str) -> np.ndarray:
    p: Any = model.get_submodule(layer).parametrizations
    return p.weight.original.detach().numpy().copy()  # type: ignore[no-any-return]


def _uniform_prune(model: nn.Module, density: float) -> PruneConfig:
    # The paper's LeNet densities keep the last (small) layer denser: it is a sliver of the bytes.
    names = _layers(model)
    return PruneConfig(layer_sparsity={n: 1 - (min(1.0, 3 * density) if n == names[-1] else density) for n in names})


def _dense_bytes(model: nn.Module) -> int:
    return sum(p.numel() * 4 for p in model.parameters())


# ---------------------------------------------------------------- fig 4
def fig4(run: FigureRun) -> dict[str, Any]:
    """Centroid initialisation over the weights' CDF, and a layer's codebook before and after fine-tuning."""
    model = run.reference()
    prune_(model, _uniform_prune(model, 0.1))
    run.retrain(model)
    layer = max(_layers(model), key=lambda n: _weight(model, n).numel())
    w = _weight(model, layer).detach().numpy().reshape(-1)
    w = w[w != 0]
    k = 2**4 - 1
    inits = {i.value: kmeans1d(w, k, init=i, iterations=0)[0] for i in Init}
    share_weights_(model, ShareConfig(conv_bits=4, fc_bits=4))
    before = _codebook_of(model, layer)
    acc_before = run.test(model)
    run.retrain(model)
    after = _codebook_of(model, layer)
    acc_after = run.test(model)
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    xs = np.sort(w)
    ax1.plot(xs, np.arange(xs.size) / xs.size, color="gray", label="CDF of the surviving weights")
    for (name, c), y in zip(inits.items(), (0.25, 0.5, 0.75), strict=True):
        ax1.plot(c, np.full(c.size, y), "o", ms=4, label=f"{name} init ({c.size} centroids)")
    ax1.set_xlabel(f"weight value ({layer})")
    ax1.set_ylabel("cumulative fraction of weights")
    ax1.set_title("centroid initialisation")
    ax1.legend(fontsize=7)
    ax2.hist(w, bins=120, color="lightgray", label="surviving weights")
    for c, style, name in ((before, "--", "k-means (linear init)"), (after, "-", "after fine-tuning")):
        for i, v in enumerate(c):
            ax2.axvline(v, ls=style, lw=0.8, color="C0" if style == "--" else "C3", label=name if i == 0 else None)
    ax2.set_xlabel(f"weight value ({layer})")
    ax2.set_ylabel("number of weights")
    ax2.set_title(f"codebook: test accuracy {100 * acc_before:.2f}% -> {100 * acc_after:.2f}% fine-tuned")
    ax2.legend(fontsize=7)
    fig.suptitle(run.title("Fig. 4: weight sharing"))
    fig.tight_layout()
    moved = float(np.abs(after - before).max())
    spread = {name: float(np.ptp(c)) for name, c in inits.items()}
    claim = {"claim": "linear initialisation spreads centroids over the whole weight range, density and random concentrate "
                      "them near the peaks (so the rare large weights, which matter most, keep their own centroids)",
             "holds": spread["linear"] >= max(spread.values()) - 1e-9, "centroid_range": spread,
             "fine_tuning_moved_centroids_by_at_most": moved, "accuracy_before_finetune": acc_before, "accuracy_after_finetune": acc_after}
    return {"figure": fig, "points": {"layer": layer, "inits": {n: c.tolist() for n, c in inits.items()},
                                      "before": before.tolist(), "after": after.tolist()}, "claim": claim}


# ---------------------------------------------------------------- fig 5
def fig5(run: FigureRun) -> dict[str, Any]:
    """Distributions of the weight symbols and of the relative-index gaps, with their entropies."""
    from ..codec.entropy import entropy_bits

    model = run.reference()
    prune_(model, _uniform_prune(model, 0.08))
    run.retrain(model)
    share_weights_(model, ShareConfig(conv_bits=5, fc_bits=5))
    run.retrain(model)
    layer = max(_layers(model), key=lambda n: _weight(model, n).numel())
    sw = _shared_of(model, layer)
    mask = sw.mask.numpy().reshape(-1)
    codes = sw.codes.numpy().reshape(-1)[mask].astype(np.int64)
    gaps = np.diff(np.flatnonzero(mask), prepend=-1) - 1
    fig = _figure(11, 4)
    ax1, ax2 = fig.subplots(1, 2)
    hc = np.bincount(codes)
    hg = np.bincount(np.minimum(gaps, 99), minlength=100)
    h_codes, h_gaps = entropy_bits(hc) / codes.size, entropy_bits(np.bincount(gaps)) / max(gaps.size, 1)
    ax1.bar(range(hc.size), hc / codes.size)
    ax1.set_xlabel("weight symbol (cluster index, sorted by centroid)")
    ax1.set_ylabel("fraction of surviving weights")
    ax1.set_title(f"weights: entropy {h_codes:.2f} bits vs {math.log2(max(hc.size, 2)):.0f} bits fixed")
    ax2.bar(range(100), hg / max(gaps.size, 1))
    ax2.set_xlabel("zeros before a weight (relative index; 99 = 99 or more)")
    ax2.set_ylabel("fraction of surviving weights")
    ax2.set_title(f"index gaps: entropy {h_gaps:.2f} bits per weight")
    fig.suptitle(run.title(f"Fig. 5: biased distributions ({layer}, 8% kept, 5 bits)"))
    fig.tight_layout()
    uniform_codes = math.log2(max(hc.size, 2))
    claim = {"claim": "weights and index gaps are far from uniform, so entropy coding saves bits over fixed-width codes",
             "holds": h_codes < uniform_codes - 0.2, "weight_entropy_bits": h_codes, "fixed_width_bits": uniform_codes,
             "gap_entropy_bits": h_gaps}
    return {"figure": fig, "points": {"layer": layer, "code_hist": hc.tolist(), "gap_hist_capped_99": hg.tolist()}, "claim": claim}


# ---------------------------------------------------------------- fig 6
def _svd(model: nn.Module, fraction: float) -> nn.Module:
    """Every fc layer replaced by its best rank-r approximation, r chosen so the factors hold ``fraction`` of its weights."""
    with torch.no_grad():
        for name in _layers(model):
            weight = _weight(model, name)
            w = weight.detach().reshape(weight.shape[0], -1)
            rows, cols = w.shape
            r = max(1, int(fraction * rows * cols / (rows + cols)))
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            weight.copy_(((u[:, :r] * s[:r]) @ vh[:r]).reshape(weight.shape))
    return model


def fig6(run: FigureRun) -> dict[str, Any]:
    """Accuracy loss against compression rate: pruning + quantization, pruning only, quantization only, SVD."""
    ref = run.reference()
    base = run.test(ref)
    dense = _dense_bytes(ref)
    curves: dict[str, list[tuple[float, float]]] = {"pruning + quantization": [], "pruning only": [], "quantization only": [],
                                                    "SVD": []}
    for d in (0.2, 0.1, 0.05, 0.03):
        m = run.reference()
        prune_(m, _uniform_prune(m, d))
        run.retrain(m)
        # Pruning alone keeps float32 values: each survivor costs its 32 bits plus its coded position.
        curves["pruning only"].append((run.pruned_only_bytes(m) / dense, base - run.test(m)))
        share_weights_(m, ShareConfig(conv_bits=5, fc_bits=4))
        run.retrain(m, max(1, run.epochs // 2))
        curves["pruning + quantization"].append((run.file_bytes(m) / dense, base - run.test(m)))
    for b in (8, 5, 4, 3, 2):
        m = run.reference()
        share_weights_(m, ShareConfig(conv_bits=b, fc_bits=b))
        run.retrain(m, max(1, run.epochs // 2))
        curves["quantization only"].append((run.file_bytes(m) / dense, base - run.test(m)))
    for f in (0.3, 0.2, 0.1, 0.05):
        m = _svd(run.reference(), f)
        run.retrain(m)
        curves["SVD"].append((f, base - run.test(m)))
    fig = _figure()
    ax = fig.subplots()
    for name, pts in curves.items():
        pts = sorted(pts)
        ax.plot([100 * x for x, _ in pts], [100 * y for _, y in pts], marker="o", label=name)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("model size, % of dense float32 (bytes on disk; SVD: parameters)")
    ax.set_ylabel("accuracy loss, percentage points (test)")
    ax.set_title(run.title("Fig. 6: pruning and quantization work best together"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    pq = sorted(curves["pruning + quantization"])
    worse = []
    for name in ("pruning only", "quantization only", "SVD"):
        for x, y in curves[name]:
            # the P+Q loss at that size, interpolated on P+Q's own points (log size)
            if pq[0][0] <= x <= pq[-1][0]:
                yq = float(np.interp(math.log(x), [math.log(p[0]) for p in pq], [p[1] for p in pq]))
                if yq > y + 0.001:
                    worse.append({"curve": name, "size": x, "loss": y, "pq_loss": yq})
    claim = {"claim": "pruning + quantization loses no more accuracy than pruning alone, quantization alone or SVD at every "
                      "compression rate both reach (within 0.1 point)", "holds": not worse, "counterexamples": worse}
    return {"figure": fig, "points": {k: v for k, v in curves.items()}, "claim": claim, "baseline_accuracy": base}


# ---------------------------------------------------------------- fig 7 / table 6
def _bits_accuracy(run: FigureRun, model: nn.Module, conv_bits: int | None, fc_bits: int | None, init: Init = Init.LINEAR) -> float:
    m = copy.deepcopy(model)
    filt = {"conv": lambda mod, n: isinstance(mod, nn.Conv2d), "fc": lambda mod, n: isinstance(mod, nn.Linear)}
    for kind, b in (("conv", conv_bits), ("fc", fc_bits)):
        if b is not None and b < 32:
            share_weights_(m, ShareConfig(conv_bits=min(b, 8), fc_bits=min(b, 8), init=init), filter_fn=filt[kind])
    if any(isinstance(x, SharedWeight) for x in m.modules()):
        run.retrain(m, max(1, run.epochs // 2))
    return run.test(m)


def _pruned(run: FigureRun) -> nn.Module:
    m = run.reference()
    prune_(m, _uniform_prune(m, 0.1))
    run.retrain(m)
    return m


def fig7(run: FigureRun) -> dict[str, Any]:
    """Accuracy against bits per weight, conv and fc layers apart, on the pruned and the unpruned network."""
    nets = {"unpruned": run.reference(), "pruned": _pruned(run)}
    has_conv = any(isinstance(m, nn.Conv2d) for m in nets["unpruned"].modules())
    kinds = ["conv", "fc"] if has_conv else ["fc"]
    bits = (1, 2, 3, 4, 5, 6, 8)
    points: dict[str, list[float]] = {}
    for kind in kinds:
        for name, net in nets.items():
            points[f"{kind} {name}"] = [_bits_accuracy(run, net, b if kind == "conv" else None, b if kind == "fc" else None) for b in bits]
    fig = _figure(5.5 * len(kinds), 4)
    axes = np.atleast_1d(fig.subplots(1, len(kinds)))
    for ax, kind in zip(axes, kinds, strict=True):
        for name in nets:
            ax.plot(bits, [100 * a for a in points[f"{kind} {name}"]], marker="o", label=f"{name} network")
        ax.set_xlabel(f"bits per weight, {kind} layers (the others float32)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{kind} layers")
        ax.legend(fontsize=8)
    fig.suptitle(run.title("Fig. 7: pruning does not hurt quantization"))
    fig.tight_layout()
    gaps = {kind: [p - u for p, u in zip(points[f"{kind} pruned"], points[f"{kind} unpruned"], strict=True)] for kind in kinds}
    bad = {k: [b for b, g in zip(bits, v, strict=True) if g < -0.005 and b >= 3] for k, v in gaps.items()}
    claim = {"claim": "at each bit width from 3 bits up, the pruned network quantizes about as well as the unpruned one "
                      "(within half a point)", "holds": not any(bad.values()), "pruned_minus_unpruned": gaps,
             "bits_where_it_fails": bad}
    return {"figure": fig, "points": {"bits": list(bits), **points}, "claim": claim}


def table6(run: FigureRun) -> dict[str, Any]:
    """The paper's Table 6: conv/fc bit pairs on the pruned network (and the unpruned one, for comparison)."""
    pairs = [(32, 32), (8, 5), (8, 4), (4, 2)]
    nets = {"unpruned": run.reference(), "pruned": _pruned(run)}
    rows: list[dict[str, float]] = []
    for conv, fc in pairs:
        row: dict[str, float] = {"conv_bits": conv, "fc_bits": fc}
        for name, net in nets.items():
            row[f"{name}_accuracy"] = _bits_accuracy(run, net, conv, fc)
        rows.append(row)
    fig = _figure(6.4, 2.2)
    ax = fig.subplots()
    ax.axis("off")
    cells = [[f"{r['conv_bits']} / {r['fc_bits']}", f"{100 * r['pruned_accuracy']:.2f}%", f"{100 * r['unpruned_accuracy']:.2f}%"]
             for r in rows]
    ax.table(cellText=cells, colLabels=["conv / fc bits", "pruned + quantized", "quantized only"], loc="center")
    ax.set_title(run.title("Table 6: accuracy at conv/fc bit widths (test)"))
    ref = rows[0]["pruned_accuracy"]
    claim = {"claim": "8/5 and 8/4 bits keep the pruned network's accuracy (within 0.1 point of 32/32); 4/2 loses more",
             "holds": all(ref - r["pruned_accuracy"] <= 0.001 for r in rows[1:3]), "rows": rows}
    return {"figure": fig, "points": rows, "claim": claim}


# ---------------------------------------------------------------- fig 8
def fig8(run: FigureRun) -> dict[str, Any]:
    """Accuracy against bits for linear, density and random (Forgy) centroid initialisation."""
    net = _pruned(run)
    bits = (2, 3, 4, 5, 6)
    points = {i.value: [_bits_accuracy(run, net, b, b, init=i) for b in bits] for i in Init}
    fig = _figure()
    ax = fig.subplots()
    for name, accs in points.items():
        ax.plot(bits, [100 * a for a in accs], marker="o", label=f"{name} initialisation")
    ax.set_xlabel("bits per weight (every layer)")
    ax.set_ylabel("test accuracy after fine-tuning (%)")
    ax.set_title(run.title("Fig. 8: centroid initialisation"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    worse = [b for i, b in enumerate(bits) if points["linear"][i] < max(points["density"][i], points["forgy"][i]) - 0.001]
    claim = {"claim": "linear initialisation is at or above density and random at every bit width (within 0.1 point)",
             "holds": not worse, "bits_where_it_is_below": worse}
    return {"figure": fig, "points": {"bits": list(bits), **points}, "claim": claim}


# ---------------------------------------------------------------- fig 11
def fig11(run: FigureRun) -> dict[str, Any]:
    """Where the bytes go, per layer: weights, index, codebook, and everything else, from a file on disk."""
    m = _pruned(run)
    share_weights_(m, ShareConfig(conv_bits=8, fc_bits=5))
    run.retrain(m, max(1, run.epochs // 2))
    path = run.out / "fig11.dsz"
    save(m, path)
    rep = report(path)
    names = [r.name for r in rep.layers]
    parts = {"weights": [r.weight_bytes for r in rep.layers], "index": [r.index_bytes for r in rep.layers],
             "codebook": [r.codebook_bytes for r in rep.layers]}
    fig = _figure()
    ax = fig.subplots()
    bottom = np.zeros(len(names))
    for part, values in parts.items():
        ax.bar(names, values, bottom=bottom, label=part)
        bottom += np.array(values, float)
    other = rep.other_bytes + rep.header_bytes + rep.metadata_bytes
    ax.bar(["raw tensors + header"], [other], color="gray", label="raw tensors and header")
    ax.set_ylabel("bytes in the file")
    ax.set_title(run.title(f"Fig. 11: storage per layer ({rep.file_bytes:,} B, {rep.ratio:.0f}x)"))
    ax.legend(fontsize=8)
    fig.tight_layout()
    share_w = sum(parts["weights"]) / rep.file_bytes
    share_i = sum(parts["index"]) / rep.file_bytes
    claim = {"claim": "weights and index take most of the file; the codebooks and the rest are a small part",
             "holds": share_w + share_i >= 0.8, "weights_fraction": share_w, "index_fraction": share_i,
             "codebook_fraction": sum(parts["codebook"]) / rep.file_bytes, "other_fraction": other / rep.file_bytes}
    return {"figure": fig, "points": {"layers": names, **parts, "other": other}, "claim": claim}


EXPERIMENTS: dict[str, Callable[[FigureRun], dict[str, Any]]] = {
    "fig4": fig4, "fig5": fig5, "fig6": fig6, "fig7": fig7, "fig8": fig8, "table6": table6, "fig11": fig11,
}


def run_experiment(name: str, run: FigureRun) -> dict[str, Any]:
    """Run one experiment; write ``NAME.png`` and ``NAME.json``; return the JSON's content."""
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment '{name}'; choose one of {sorted(EXPERIMENTS)} or all")
    t = time.perf_counter()
    result = EXPERIMENTS[name](run)
    fig = result.pop("figure")
    fig.savefig(run.out / f"{name}.png", dpi=110)
    result.update(experiment=name, arch=run.arch, data=run.data.source, seed=run.seed, seconds=time.perf_counter() - t,
                  png=f"{name}.png")
    (run.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    return result


def write_gallery(out: Path, results: list[dict[str, Any]]) -> Path:
    """``index.html``: every figure with its claim and verdict, and its table of points; opens without a server."""
    rows = []
    for r in results:
        c = r["claim"]
        verdict = "holds" if c["holds"] else "does not hold"
        details = html.escape(json.dumps({k: v for k, v in c.items() if k not in ("claim", "holds")}, default=float)[:1500])
        name = html.escape(r["experiment"])
        rows.append(f'<section><h2>{name}</h2><img src="{html.escape(r["png"])}" alt="{name}">'
                    f'<p><b>Claim:</b> {html.escape(c["claim"])}. <b>On this run: {verdict}.</b></p>'
                    f'<pre>{details}</pre><p>{r["seconds"]:.0f} s; points in <a href="{html.escape(r["experiment"])}.json">'
                    f'{html.escape(r["experiment"])}.json</a></p></section>')
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>deepshrink figures</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}img{max-width:100%}pre{white-space:pre-wrap;"
            "font-size:11px;background:#f4f4f4;padding:6px}</style></head><body>"
            f"<h1>The paper's experiments, rerun</h1><p>{html.escape(results[0]['arch'] if results else '')} on "
            f"{html.escape(results[0]['data'] if results else '')}</p>{''.join(rows)}</body></html>")
    path = out / "index.html"
    path.write_text(page)
    return path

