"""Choose each layer's density and bits to minimise the file's bytes under a budget on the validation metric, or to
lose the least of the metric within a size (``PlanConfig.max_bytes``).

Each layer's settings are traded by their measured cost: the metric drop when that layer alone is
compressed (:func:`~deepshrink.planning.sensitivity.sensitivity`) against its coded bytes. Drops are
taken as additive; a Lagrange multiplier prices a point of metric in bytes, each layer picks its cheapest
setting at that price, and the price is bisected to the smallest plan within the budget. The whole plan
is then checked with the user's ``evaluate``; if layers interact and it misses, the budget the
allocation sees is tightened and the plan made again, and failing that the plan backs off greedily,
one layer one step gentler at a time (the step that buys the most metric per byte, measured), until
the whole plan meets the budget.

With ``max_bytes`` the same price is bisected the other way: to the plan of least summed drop whose predicted bytes
fit, and what bytes the price's steps leave over go to the layer settings that buy the most metric per byte. That
plan is measured once and returned as it is; its ``within_budget`` says whether it also met ``budget``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._config import DictConfig
from ..errors import ConfigError
from ..layers.registry import compressible_weights
from ..transforms.pruning import PruneConfig
from ..transforms.sharing import ShareConfig
from .sensitivity import Sensitivity, _probing, _setting

__all__ = ["LayerPlan", "Plan", "PlanConfig", "applied", "plan"]

log = logging.getLogger(__name__)


@dataclass
class PlanConfig(DictConfig):
    """``budget``: the largest validation-metric drop the plan may cause (e.g. 0.005 = half a point of accuracy).

    ``max_rounds``: how often the budget the allocation sees may be tightened after the whole plan is
    checked. ``shrink``: by what factor each time. ``max_bytes``: plan for size instead: the settings of least
    predicted drop whose predicted bytes (the layers' coded weights, indices and codebooks) stay within it.
    """

    budget: float = 0.005
    max_rounds: int = 3
    shrink: float = 0.5
    max_bytes: float | None = None

    def __post_init__(self) -> None:
        if not self.budget >= 0:
            raise ConfigError(f"PlanConfig: budget is {self.budget}; it must be >= 0")
        if self.max_bytes is not None and not self.max_bytes > 0:
            raise ConfigError(f"PlanConfig: max_bytes is {self.max_bytes}; it must be > 0 (or None to plan within budget)")
        if self.max_rounds < 1 or not 0 < self.shrink < 1:
            raise ConfigError(f"PlanConfig: max_rounds {self.max_rounds} must be >= 1 and shrink {self.shrink} in (0, 1)")



@dataclass
class LayerPlan:
    name: str
    density: float
    bits: int
    predicted_bytes: float
    predicted_drop: float


@dataclass
class Plan:
    """Per-layer settings, the metric they were checked at, and the configs that carry them out."""

    layers: list[LayerPlan]
    baseline: float
    checked_metric: float
    budget: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def predicted_bytes(self) -> float:
        return sum(p.predicted_bytes for p in self.layers)

    def prune_config(self) -> PruneConfig:
        return PruneConfig(layer_sparsity={p.name: 1.0 - p.density for p in self.layers})

    def share_config(self, **kwargs: Any) -> ShareConfig:
        return ShareConfig(layer_bits={p.name: p.bits for p in self.layers}, **kwargs)

    def table(self) -> str:
        rows = [f"{'layer':<28} {'density':>8} {'bits':>5} {'bytes':>10} {'drop':>8}"]
        rows += [f"{p.name:<28} {p.density:>8.3f} {p.bits:>5} {p.predicted_bytes:>10,.0f} {p.predicted_drop:>8.4f}" for p in self.layers]
        rows.append(f"{'total':<28} {'':>8} {'':>5} {self.predicted_bytes:>10,.0f} "
                    f"{self.baseline - self.checked_metric:>8.4f} (checked; budget {self.budget})")
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "checked_metric": self.checked_metric, "budget": self.budget,
                "layers": [vars(p) for p in self.layers], **self.meta}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        meta = {k: v for k, v in data.items() if k not in ("baseline", "checked_metric", "budget", "layers")}
        return cls([LayerPlan(**lp) for lp in data["layers"]], data["baseline"], data["checked_metric"], data["budget"], meta)


Option = tuple[float, float, tuple[float, int]]  # predicted bytes, predicted drop, (density, bits)


def _options(sens: Sensitivity) -> dict[str, list[Option]]:
    return {name: [(probe.bytes[k], max(0.0, sens.baseline - probe.metric[k]), k) for k in probe.metric]
            for name, probe in sens.layers.items()}


def _pick(options: dict[str, list[Option]], price: float) -> tuple[dict[str, Option], float, float]:
    """Each layer's setting of least ``bytes + price * drop`` (the smaller drop on a tie), and their summed bytes and drop."""
    chosen = {n: min(opts, key=lambda o: (o[0] + price * o[1], o[1])) for n, opts in options.items()}
    return chosen, sum(c[0] for c in chosen.values()), sum(c[1] for c in chosen.values())


def _layers(chosen: dict[str, Option]) -> list[LayerPlan]:
    return [LayerPlan(n, k[0], k[1], b, d) for n, (b, d, k) in chosen.items()]


def _allocate(sens: Sensitivity, budget: float) -> list[LayerPlan]:
    """The smallest predicted plan whose summed single-layer drops stay within ``budget``."""
    options = _options(sens)
    lo, hi = 0.0, 1.0
    while _pick(options, hi)[2] > budget and hi < 1e15:
        hi *= 10
    best = _pick(options, hi)[0]
    for _ in range(60):
        mid = (lo + hi) / 2
        chosen, _, drop = _pick(options, mid)
        if drop <= budget:
            best, hi = chosen, mid
        else:
            lo = mid
    return _layers(best)


def _allocate_bytes(sens: Sensitivity, max_bytes: float) -> list[LayerPlan]:
    """The plan of least summed single-layer drop whose predicted bytes stay within ``max_bytes`` (the smallest plan
    on the grid where none does)."""
    options = _options(sens)
    # Price 0 takes each layer's smallest setting; a higher price buys metric with bytes. Bisect it in log space:
    # drops and bytes span many orders of magnitude.
    best, size, _ = _pick(options, 0.0)
    if size > max_bytes:
        log.warning("plan: the smallest grid setting of every layer is %.0f bytes, over max_bytes %.0f", size, max_bytes)
        return _layers(best)
    lo, hi = -3.0, 15.0
    for _ in range(60):
        mid = (lo + hi) / 2
        chosen, size, _ = _pick(options, 10.0**mid)
        if size <= max_bytes:
            best, lo = chosen, mid
        else:
            hi = mid
    # Between two prices the plan jumps; spend what is left on the single-layer changes that buy the most drop per byte.
    while True:
        spare = max_bytes - sum(c[0] for c in best.values())
        moves = [((best[n][1] - o[1]) / max(o[0] - best[n][0], 1e-9), n, o) for n, opts in options.items() for o in opts
                 if o[1] < best[n][1] and o[0] - best[n][0] <= spare]
        if not moves:
            return _layers(best)
        _, name, option = max(moves, key=lambda m: m[0])
        best = {**best, name: option}


@contextmanager
def applied(model: nn.Module, layers: list[LayerPlan]) -> Iterator[None]:
    """Within the block, each layer holds its planned weights (pruned and shared, no parametrization); restored after."""
    targets = {t.name: t for t in compressible_weights(model)}
    with ExitStack() as stack:
        for p in layers:
            t = targets[p.name]
            write = stack.enter_context(_probing(t))
            w = getattr(t.module, t.param).detach().cpu().numpy()
            write(torch.from_numpy(_setting(w, p.density, p.bits)[0]))
        yield


def plan(model: nn.Module, evaluate: Callable[[nn.Module], float], sens: Sensitivity, config: PlanConfig | None = None) -> Plan:
    """Plan densities and bits for ``model`` from its sensitivity ``sens``, checked as a whole with ``evaluate``.

    Returns the smallest plan found whose checked validation metric stays within ``config.budget`` of
    the baseline (with ``config.max_bytes``: the plan of least predicted drop within that size, measured once); the
    model is left as it was. Carry it out with ``prune_(model, plan.prune_config())``
    (then retrain) and ``share_weights_(model, plan.share_config())``.
    """
    cfg = config or PlanConfig()
    was_training = model.training
    model.eval()

    def checked(layers: list[LayerPlan]) -> float:
        with applied(model, layers):
            return float(evaluate(model))

    budget = cfg.budget
    try:
        if cfg.max_bytes is not None:
            layers = _allocate_bytes(sens, cfg.max_bytes)
            metric = checked(layers)
            log.info("plan within %.0f bytes: %.0f bytes, checked drop %.5f", cfg.max_bytes,
                     sum(p.predicted_bytes for p in layers), sens.baseline - metric)
            return Plan(layers, sens.baseline, metric, cfg.budget, {"max_bytes": cfg.max_bytes,
                                                                     "within_budget": sens.baseline - metric <= cfg.budget})
        for round_ in range(cfg.max_rounds):
            layers = _allocate(sens, budget)
            metric = checked(layers)
            log.info("plan round %d: allocation budget %.5f, %.0f bytes, checked drop %.5f",
                     round_, budget, sum(p.predicted_bytes for p in layers), sens.baseline - metric)
            if sens.baseline - metric <= cfg.budget:
                return Plan(layers, sens.baseline, metric, cfg.budget, {"rounds": round_ + 1, "allocation_budget": budget,
                                                                         "within_budget": True})
            budget *= cfg.shrink
        # Layers interact more than their single-layer drops say (or drops fall below the metric's
        # resolution): back off one layer at a time, each step measured.
        steps = 0
        while sens.baseline - metric > cfg.budget:
            moves = [(i, g) for i, lp in enumerate(layers) if (g := _gentler(sens, lp)) is not None]
            if not moves:
                break
            scored = []
            for i, g in moves:
                trial = [*layers[:i], g, *layers[i + 1 :]]
                m = checked(trial)
                cost = max(g.predicted_bytes - layers[i].predicted_bytes, 1.0)
                scored.append(((m - metric) / cost, m, trial))
            _, metric, layers = max(scored, key=lambda s: (s[0], s[1]))
            steps += 1
        log.info("plan: backed off %d steps, checked drop %.5f", steps, sens.baseline - metric)
    finally:
        model.train(was_training)
    within = sens.baseline - metric <= cfg.budget
    if not within:
        log.warning("plan: even the gentlest grid setting misses the budget %.5f (drop %.5f)", cfg.budget, sens.baseline - metric)
    return Plan(layers, sens.baseline, metric, cfg.budget, {"rounds": cfg.max_rounds, "backoff_steps": steps,
                                                            "within_budget": within})


def _gentler(sens: Sensitivity, lp: LayerPlan) -> LayerPlan | None:
    """One step gentler on the grid: the next density up at the same bits, else the next bit width up."""
    probe = sens.layers[lp.name]
    denser = sorted(d for d, b in probe.metric if b == lp.bits and d > lp.density)
    wider = sorted(b for d, b in probe.metric if d == lp.density and b > lp.bits)
    key = (denser[0], lp.bits) if denser else (lp.density, wider[0]) if wider else None
    if key is None:
        return None
    return LayerPlan(lp.name, key[0], key[1], probe.bytes[key], max(0.0, sens.baseline - probe.metric[key]))
