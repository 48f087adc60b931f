"""Sensitivity analysis: each layer alone pruned and shared to a ladder of settings, the user's metric after each.

As Han et al. (2015) chose their per-layer rates: one layer at a time, no retraining, the model restored
after every probe. Each probe also yields the layer's coded size at that setting, from the same
histograms and cost model the writer uses, so the planner trades measured metric against real bytes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..codec import context
from ..codec.cost import cheapest_bits
from ..codec.sparse_index import choose_index_bits, gap_stats
from ..errors import ConfigError
from ..layers.registry import FilterFn, Target, compressible_weights
from ..layers.ties import find_parametrization
from ..transforms.pruning import PruningMask
from ..transforms.sharing import SharedWeight, kmeans1d

__all__ = ["BITS", "DENSITIES", "LayerProbe", "Sensitivity", "sensitivity"]

log = logging.getLogger(__name__)

# The default grid: 32 probes per layer, each one evaluation of the user's validation metric.
DENSITIES = (1.0, 0.5, 0.3, 0.2, 0.12, 0.08, 0.05, 0.03)
BITS = (6, 5, 4, 3)


@dataclass
class LayerProbe:
    """One layer's grid: ``metric[(density, bits)]`` and ``bytes[(density, bits)]`` (coded weight + index + codebook).
    The table, the plot and ``to_dict`` show the measured settings only."""

    name: str
    numel: int
    metric: dict[tuple[float, int], float] = field(default_factory=dict)
    bytes: dict[tuple[float, int], float] = field(default_factory=dict)
    interpolated: set[tuple[float, int]] = field(default_factory=set)  # settings whose metric was not measured

    @property
    def measured(self) -> list[tuple[float, int]]:
        return sorted(k for k in self.metric if k not in self.interpolated)


@dataclass
class Sensitivity:
    """The baseline metric and every layer's probes (higher metric is better)."""

    baseline: float
    layers: dict[str, LayerProbe]

    def table(self) -> str:
        lines = [f"baseline {self.baseline:.4f}; metric drop per layer at density x bits (no retraining)"]
        for probe in self.layers.values():
            lines.append(f"{probe.name} ({probe.numel:,} weights)")
            densities = sorted({d for d, _ in probe.measured}, reverse=True)
            bits = sorted({b for _, b in probe.measured}, reverse=True)
            lines.append("  density " + " ".join(f"{b:>7}b" for b in bits))
            for d in densities:
                cells = " ".join(f"{self.baseline - probe.metric[(d, b)]:>8.4f}" for b in bits)
                lines.append(f"  {d:>7.3f} {cells}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "layers": {
            n: {"numel": p.numel, "grid": [{"density": d, "bits": b, "metric": p.metric[(d, b)], "bytes": p.bytes[(d, b)]}
                                           for d, b in p.measured]} for n, p in self.layers.items()}}

    def plot(self, path: str) -> None:
        """The paper's pruning-sensitivity figure (metric against density per layer, at the widest bits)."""
        from ..errors import MissingDependencyError

        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise MissingDependencyError("plotting needs matplotlib: pip install 'deepshrink[plot]'") from None
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        top = max(b for probe in self.layers.values() for _, b in probe.measured)
        for probe in self.layers.values():
            ds = [d for d, b in probe.measured if b == top]
            ax.plot([100 * (1 - d) for d in ds], [probe.metric[(d, top)] for d in ds], marker="o", label=probe.name)
        ax.axhline(self.baseline, color="gray", linestyle="--", label="baseline")
        ax.set_xlabel("parameters pruned away (%)")
        ax.set_ylabel("validation metric")
        ax.set_title(f"sensitivity of each layer alone (shared at {top} bits, no retraining)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def _current(t: Target) -> Tensor:
    return getattr(t.module, t.param).detach()


@contextmanager
def _probing(t: Target) -> Iterator[Callable[[Tensor], None]]:
    """Lets a probe write values into ``t``'s tensor; the tensor is restored afterwards.

    A pruned layer is probed through its mask's ``original``: values written at pruned positions are
    masked away, so a probe can only prune further, as the next pruning step would.
    """
    if find_parametrization(t.module, t.param, SharedWeight) is not None:
        raise ConfigError(f"sensitivity: layer '{t.name}' is already shared; analyse the model before sharing its weights")
    if find_parametrization(t.module, t.param, PruningMask) is not None:
        target = t.module.parametrizations[t.param].original  # type: ignore[union-attr, index]
    else:
        target = getattr(t.module, t.param)
    saved = target.detach().clone()

    def write(values: Tensor) -> None:
        with torch.no_grad():
            target.copy_(values)

    try:
        yield write
    finally:
        with torch.no_grad():
            target.copy_(saved)


def _setting(w: np.ndarray, density: float, bits: int) -> tuple[np.ndarray, float]:
    """The layer's weights pruned to ``density`` and shared at ``bits``, and their coded bytes."""
    flat = w.reshape(-1)
    keep = max(1, round(density * flat.size)) if density > 0 else 0
    mask = np.zeros(flat.size, bool)
    if keep:
        mask[np.argpartition(-np.abs(flat), keep - 1)[:keep]] = True
    k = 2**bits - 1
    centroids, codes = kmeans1d(flat[mask], k, iterations=30)
    out = np.zeros_like(flat)
    out[mask] = centroids[codes]
    full_codes = np.zeros(flat.size, np.uint8)
    full_codes[mask] = codes
    return out.reshape(w.shape), _coded_bytes(mask, full_codes, centroids, w.shape)


def _coded_bytes(mask: np.ndarray, codes: np.ndarray, centroids: np.ndarray, shape: tuple[int, ...]) -> float:
    """What the writer's ``auto`` choice makes of a shared tensor: the smaller of the paper's two streams (each with
    its best coder, the index width chosen) and, for a tensor of at most ``AUTO_LIMIT`` weights, the ctx coder;
    plus its codebook in float16 (where the pipeline rounds it)."""
    clusters = int(centroids.size)
    stats = gap_stats(mask, codes, clusters)
    ib = choose_index_bits(stats, clusters, None)
    wh, ih = stats.histograms(ib)
    bits = cheapest_bits(wh, clusters + 1, None) + cheapest_bits(ih, 1 << ib, None)
    if mask.size <= context.AUTO_LIMIT:
        positions = np.flatnonzero(mask)
        bits = min(bits, 8 * len(context.encode_best(positions, codes[positions], centroids < 0, shape)[0]))
    return bits / 8 + 2 * clusters


def sensitivity(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    densities: Sequence[float] = DENSITIES,
    bits: Sequence[int] = BITS,
    filter_fn: FilterFn | None = None,
    progress: bool = False,
    relative: bool = False,
    between: int = 0,
) -> Sensitivity:
    """Probe every compressible layer alone at each ``(density, bits)``; ``evaluate`` is the user's validation metric.

    The model is restored after every probe and left exactly as it was. ``evaluate`` must be
    deterministic and higher-is-better (accuracy, or minus a loss); use a validation split, never the test set.
    Layers may already be pruned (not shared): with ``relative``, each layer's densities are fractions of
    its current density, the ladder of its next pruning step. With ``between``, that many more densities lie
    between each two neighbours of the ladder (evenly in log density), each with its bytes coded for real and its
    metric interpolated from theirs (``LayerProbe.interpolated``): a fine grid for the planner at the evaluations'
    cost of a coarse one.
    """
    if not densities or not bits or any(not 0 < d <= 1 for d in densities) or any(not 1 <= b <= 8 for b in bits):
        raise ConfigError(f"sensitivity: densities must lie in (0, 1] and bits in 1..8, got {densities} and {bits}")
    if between < 0:
        raise ConfigError(f"sensitivity: between is {between}; it must be >= 0")
    was_training = model.training
    model.eval()
    targets = list(compressible_weights(model, filter_fn))
    baseline = float(evaluate(model))
    layers: dict[str, LayerProbe] = {}
    grid = [(d, b) for d in densities for b in bits]
    bar = _bar(len(targets) * len(grid), progress)
    try:
        for t in targets:
            w = _current(t).cpu().numpy().astype(np.float32)
            probe = LayerProbe(t.name, int(w.size))
            scale = np.count_nonzero(w) / max(w.size, 1) if relative else 1.0
            with _probing(t) as write:
                for d, b in grid:
                    key = (float(d * scale), b)
                    values, nbytes = _setting(w, key[0], b)
                    write(torch.from_numpy(values))
                    probe.metric[key] = float(evaluate(model))
                    probe.bytes[key] = nbytes
                    bar.update(1)
            _interpolate(probe, w, bits, between)
            layers[t.name] = probe
            log.info("sensitivity %s: %d probes", t.name, len(grid))
    finally:
        bar.close()
        model.train(was_training)
    return Sensitivity(baseline, layers)


def _interpolate(probe: LayerProbe, w: np.ndarray, bits: Sequence[int], between: int) -> None:
    """``between`` more densities in each gap of ``probe``'s measured ones, per bit width: bytes coded, metric interpolated."""
    for b in bits:
        measured = sorted(d for d, bb in probe.metric if bb == b)
        for lo, hi in itertools.pairwise(measured):
            for j in range(1, between + 1):
                f = j / (between + 1)
                d = float(np.exp((1 - f) * np.log(lo) + f * np.log(hi)))
                probe.metric[(d, b)] = (1 - f) * probe.metric[(lo, b)] + f * probe.metric[(hi, b)]
                probe.bytes[(d, b)] = _setting(w, d, b)[1]
                probe.interpolated.add((d, b))


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress bars come with the experiments extra; without it, none
        return _NoBar()
    return tqdm(total=total, desc="sensitivity", unit="probe")
