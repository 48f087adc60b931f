"""The whole pipeline in one call, for users who want it: plan, prune and retrain, share and fine-tune, save, reload.

Built on the in-place verbs, which stay the primary API. It takes the user's own callbacks:
``evaluate(model) -> float`` (higher is better; the reported metric), optionally ``validate(model) ->
float`` (the same metric on a validation split: every decision is made on it; without it ``evaluate``
decides, and the result says so) and ``train(model, epochs)`` (the user's loop, optimizer and all;
without it the model is compressed post-training).

Two ways to say how far to go. With ``PipelineConfig.target_ratio`` (**size mode**, what ``deepshrink reproduce``
and ``compress --ratio`` use) the file's size is given and the metric is the least the planner finds to lose there:

1. **Pruning toward a size.** The target's bytes, less what the file spends beyond the layers' weights (the other
   tensors at their widest width, buffers, a bound on the header), are the layers' byte budget. Each of ``rounds``
   rounds measures every layer's sensitivity over a ladder of densities (``SIZE_LADDER``, with ``SIZE_BETWEEN``
   interpolated settings between measured ones), plans the densities of least predicted drop whose coded bytes at
   ``planning_bits`` fit the budget, prunes a cubic ramp's share of the way there and retrains; no round is undone,
   and after ``FREEZE`` of the ramp the destination stays. A longer retraining follows.
2. **Bits within the size.** The bit plan of least predicted drop within the planned bytes; weights shared, the other
   tensors at the fewest bits that keep the metric (within a tenth of ``max_drop`` of where it is); then the file's
   real size is measured by the writer and what is left of the target is spent on more bits; with ``cluster_epochs``,
   the pruned weights are trained toward those codebooks (quantization-aware) and shared from there, where that
   measures better and still fits; fine-tune, round codebooks to ``codebook_dtype`` where the metric holds. A file
   that fitted before the fine-tuning and not after (a codebook's bytes depend on its values) gives up its smallest
   weights until it fits again.

Without a target (**budget mode**) the size is what the budget ``max_drop`` allows, every step measured on
``validate``:

1. **Pruning rounds.** Each round measures every layer's sensitivity to pruning further (a ladder of
   densities relative to its current one, no retraining), lets the planner choose per-layer densities
   that minimise the file's bytes within ``plan_drop`` of the current metric, prunes to them and
   retrains (``retrain_epochs``). A round whose retrained metric stays within ``round_drop`` of the
   dense model's is kept, and the next may plan bolder (``plan_drop`` grows by half); one that falls
   below is undone and the next plans half as bold, with a shorter ladder (its lowest step, as a
   fraction of the current density, moves to its square root: a layer that loses little before
   retraining may still lose too much to recover from in one step). Rounds stop when three in a row
   fail, when the plan prunes nothing more, or after ``rounds``. The last kept round is retrained
   longer (``final_retrain_epochs``) and must end within ``max_drop``; if it does not, the pipeline
   backs off half that round's step (per layer, the geometric mean of the two rounds' densities, pruned from
   the round before and retrained), then half of that, until the step is under a tenth of the weights,
   when the round before itself is retrained instead.
2. **Bits.** Each layer's sensitivity to sharing at each bit width (k-means only), and the planner's
   bit widths within the slack the pruned model has left; share, then, while the metric holds, the
   other tensors (biases, normalisation scales) at the fewest bits of ``other_bits`` that keep it (where it is
   already below the budget: that cost at most a tenth of ``max_drop``);
   fine-tune every codebook (``finetune_epochs``). If the fine-tuned model misses the budget, every
   layer, and the other tensors, get one bit more and sharing starts again (at most ``share_retries``
   times); the attempt that measured best is kept. ``cluster_epochs`` works here as with a size. Last, the codebooks are rounded to
   ``codebook_dtype`` (2 bytes a centroid in the file) if the metric holds (the same tenth below budget).
   With ``share_validate``, every decision of this step measures it instead, within ``max_drop`` of its value on
   the uncompressed model. With ``share_max_drop``, the step's budget is that much below the pruned model's value
   instead (of ``share_validate``, or of ``validate``).
Both end the same way: **save, reload, report.** The file is loaded into a fresh copy and ``evaluate`` measures that.

A checkpoint after every round and stage lets an interrupted run resume where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._config import DictConfig
from .errors import ConfigError, FormatError
from .layers.registry import LayerKind, compressible_weights
from .layers.ties import find_parametrization
from .planning.planner import PlanConfig, plan
from .planning.sensitivity import Sensitivity, sensitivity
from .serialize import load, save, saved_size
from .transforms.pruning import PruneConfig, density, prune_
from .transforms.sharing import (
    ClusteredWeight,
    ShareConfig,
    SharedWeight,
    cluster_weights_,
    codebooks,
    restore_,
    round_codebooks_,
    share_weights_,
    strip_,
)

__all__ = ["CompressResult", "PipelineConfig", "compress", "dense_bytes"]

log = logging.getLogger(__name__)

STAGES = ("started", "pruning", "pruned", "shared", "saved")
SPLIT_MIN = 0.9  # a back-off splits a round's step in two only where the halves differ by more than this, in weights kept
# The fraction of max_drop a rounding step (other tensors, float16 codebooks) may cost below budget, and that a
# back-off's sparser state may trail the best measured by and still be kept.
ROUNDING_SLACK = 0.1
# With a target size, each round's plan of where to end: every layer at its current density, a factor sqrt(2) below,
# then halving down to a 128th of it, with three settings between each two (their metric interpolated); and the share
# of the ramp after which that plan stays as it is.
SIZE_LADDER, SIZE_BETWEEN = (1.0, 2**-0.5, *(2.0**-i for i in range(1, 8))), 3
FREEZE = 7 / 8
SPARE_TRIES = 3
FIT_TRIES = 4
# A generous bound on a version-2 header: its fixed part, and one record (name, shape, coding) per tensor.
HEADER_BYTES, HEADER_BYTES_PER_TENSOR = 64, 32


@dataclass
class PipelineConfig(DictConfig):
    """``max_drop``: how far below the dense model's validation metric the result may end (0.005 = half a point).

    ``plan_drop``: the metric drop, before retraining, that the first pruning round may plan for
    (default: ``4 * max_drop``); later rounds adapt it. ``round_drop``: how far below the dense model a
    retrained round may be and still be kept (default ``max_drop``, or ``3 * max_drop`` when
    ``final_retrain_epochs`` follow: the longer retraining must then bring the result within ``max_drop``,
    else the pipeline backs off, half a round's step at a time; with ``backoff`` set, at most that many times, and
    then keeps the sparsest within a tenth of ``max_drop`` of the best it measured: where the validation split is a
    few thousand samples, retrained rounds lie within the metric's noise of each other, and backing off further
    only gives the ratio away).
    ``densities``: each round's ladder, as fractions of a layer's current density. ``bits``: the widths the
    bit plan chooses from. ``other_bits``: widths tried, fewest last, for the tensors no layer claims (biases,
    norms); ``()`` keeps them raw.
    ``codebook_dtype``: after fine-tuning, codebooks are rounded to it (stored in 2 bytes a centroid)
    if the metric holds; ``None`` keeps float32.
    ``share_max_drop``: how far below the *pruned* model the sharing stage may take the metric it decides on
    (``compress``'s ``share_validate`` where given, in its units); ``None``: within ``max_drop`` of the model before
    compression, like every other step. Sharing on a metric of its own needs a budget in that metric's units, and one
    measured from where pruning left the model: pruning and retraining move a model's outputs away from the
    uncompressed model's whether or not it loses accuracy, so a budget from the uncompressed model is spent before
    sharing starts.
    Without a ``train`` callback there is one round, planned within ``max_drop`` itself.

    ``target_ratio``: compress to a size instead (the dense bytes over this many): ``rounds`` pruning rounds step the
    planned bytes from the dense model's down to the target along a cubic ramp, each round the settings of least
    predicted drop within its bytes (``PlanConfig.max_bytes``), retrained and never undone; the last is retrained
    longer, and the bits are planned within the target too. No decision then waits on the metric crossing a line, so
    the split's noise cannot stop the run early or keep a lucky round: the size is what was asked for, and the
    metric is the least the planner found to lose there (``within_budget`` says whether that is within ``max_drop``;
    ``max_drop`` also bounds what the other tensors' sharing and the codebooks' rounding may cost).
    ``cluster_epochs``: epochs of quantization-aware training before the weights are shared (``cluster_weights_``:
    the forward uses each weight's nearest centroid, the float weights train and may change clusters; then
    ``share_weights_`` keeps those codebooks). It runs the user's ``train`` on a model with ``ClusteredWeight``
    parametrizations, which should take a smaller step than retraining (the weights only settle into their
    clusters). It is kept where the shared result measures better than sharing the pruned weights as they are. 0: share
    the pruned weights directly, as the paper does, and fine-tune only the centroids.
    ``prune_bits``: the width the pruning rounds cost a layer's weights at (``None``: 6 within a budget; 4 with a
    target, the width bits most often end at, since there the planned sizes decide how far each layer is pruned).
    """

    max_drop: float = 0.005
    plan_drop: float | None = None
    round_drop: float | None = None
    rounds: int = 8
    retrain_epochs: int = 1
    final_retrain_epochs: int = 0
    finetune_epochs: int = 1
    cluster_epochs: int = 0
    densities: tuple[float, ...] = (1.0, 0.85, 0.7, 0.55, 0.4)
    bits: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
    other_bits: tuple[int, ...] = (8, 7, 6, 5, 4, 3, 2)
    prune_bits: int | None = None
    share_retries: int = 1
    backoff: int | None = None
    codebook_dtype: str | None = "float16"
    share_max_drop: float | None = None
    target_ratio: float | None = None

    def __post_init__(self) -> None:
        self.densities, self.bits, self.other_bits = tuple(self.densities), tuple(self.bits), tuple(self.other_bits)
        drops = (self.max_drop, self.plan_drop, self.round_drop, self.share_max_drop)
        if any(not (v >= 0) for v in drops if v is not None):
            raise ConfigError(f"PipelineConfig: max_drop {self.max_drop}, plan_drop {self.plan_drop}, round_drop "
                              f"{self.round_drop} and share_max_drop {self.share_max_drop} must be >= 0")
        if self.rounds < 1 or min(self.retrain_epochs, self.finetune_epochs, self.final_retrain_epochs, self.share_retries,
                                   self.cluster_epochs,
                                   0 if self.backoff is None else self.backoff) < 0:
            raise ConfigError("PipelineConfig: rounds must be >= 1; epochs, share_retries and backoff >= 0")
        if not self.densities or any(not 0 < d <= 1 for d in self.densities):
            raise ConfigError(f"PipelineConfig: densities {self.densities} must lie in (0, 1]")
        if not self.bits or any(not 1 <= b <= 8 for b in (*self.bits, *self.other_bits, self.planning_bits)):
            raise ConfigError("PipelineConfig: bits, other_bits and prune_bits must lie in 1..8")
        if self.target_ratio is not None and not self.target_ratio > 1:
            raise ConfigError(f"PipelineConfig: target_ratio is {self.target_ratio}; it must be > 1 (dense bytes over file bytes)")
        if self.codebook_dtype not in (None, "float16", "bfloat16"):
            raise ConfigError(f"PipelineConfig: codebook_dtype is {self.codebook_dtype!r}; use 'float16', 'bfloat16' or None (float32)")

    @property
    def planning_bits(self) -> int:
        """``prune_bits``, or its default for the mode."""
        if self.prune_bits is not None:
            return self.prune_bits
        return 6 if self.target_ratio is None else 4

    @property
    def first_plan_drop(self) -> float:
        return 4 * self.max_drop if self.plan_drop is None else self.plan_drop

    @property
    def effective_round_drop(self) -> float:
        """What a retrained round may lose: ``max_drop`` itself, or three times it when a longer retraining follows."""
        if self.round_drop is not None:
            return self.round_drop
        return 3 * self.max_drop if self.final_retrain_epochs else self.max_drop


@dataclass
class CompressResult:
    path: str
    file_bytes: int
    dense_bytes: int
    metric_before: float
    metric_after: float  # evaluate() of a fresh copy loaded from the file
    validation_before: float
    validation_after: float
    plan: dict[str, Any]
    decided_on: str
    post_training: bool
    seconds: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # every round and sharing attempt, measured
    # Whether validation_after is within max_drop of validation_before. When nothing tried met the budget the run
    # still writes the best it found, and says so here and in a warning.
    within_budget: bool = True

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "ratio": self.ratio}


def dense_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors stored plainly, each tied tensor once (the denominator of every ratio)."""
    unique = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def _fixed_bytes(model: nn.Module, cfg: PipelineConfig) -> float:
    """What a file of ``model`` spends beside its layers' coded weights: the other tensors (shared at the widest of
    ``other_bits``, a float16 centroid each, where they may be; else raw), buffers, and a header record each."""
    layers = sum(getattr(t.module, t.param).numel() * getattr(t.module, t.param).element_size() for t in compressible_weights(model))
    others = [getattr(t.module, t.param) for t in compressible_weights(model, others=True) if t.kind == LayerKind.OTHER.value]
    raw = dense_bytes(model) - layers - sum(t.numel() * t.element_size() for t in others)
    bits = max(cfg.other_bits, default=None)
    shared = sum(t.numel() * t.element_size() if bits is None else t.numel() * bits / 8 + 2 * min(t.numel(), 2**bits - 1)
                 for t in others)
    return raw + shared + HEADER_BYTES_PER_TENSOR * len(model.state_dict()) + HEADER_BYTES


class _Checkpoints:
    """``progress.json`` (stage, plan, measurements) and ``model.pt`` (a tensor-only state_dict) after every step."""

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.info: dict[str, Any] = {}

    def resume(self, model: nn.Module) -> str | None:
        if self.dir is None or not (self.dir / "progress.json").exists():
            return None
        self.info = json.loads((self.dir / "progress.json").read_text())
        stage = self.info.get("stage")
        if stage not in STAGES:
            raise FormatError(f"{self.dir / 'progress.json'}: unknown stage {stage!r}; delete the directory to start over")
        try:
            state = torch.load(self.dir / "model.pt", weights_only=True, map_location="cpu")
        except Exception as exc:  # any unreadable checkpoint: say which and how to recover
            raise FormatError(f"{self.dir / 'model.pt'}: cannot resume ({exc}); delete the directory to start over") from None
        restore_(model, state)
        log.info("resuming after stage %s", stage)
        return str(stage)

    def save(self, stage: str, model: nn.Module, **info: Any) -> None:
        self.info.update(info, stage=stage)
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "model.pt.tmp"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, self.dir / "model.pt")
        (self.dir / "progress.json.tmp").write_text(json.dumps(self.info, indent=1))
        os.replace(self.dir / "progress.json.tmp", self.dir / "progress.json")


def _measured(fn: Callable[[nn.Module], float], model: nn.Module) -> float:
    was = model.training
    model.eval()
    try:
        return float(fn(model))
    finally:
        model.train(was)


def _drop_smallest(layers: list[tuple[torch.Tensor, torch.Tensor]], size: int, target: float,
                   last: tuple[int, int] | None, at_least: int = 0) -> int:
    """Clear the smallest ``values`` still in each ``mask``, enough of them (and ``at_least``), by each layer's share of
    the weights kept, to bring a ``size``-byte file under ``target``; returns how many. ``last`` is the previous try's
    size and drop.

    What a weight costs: first the file's bytes over its weights (more than dropping one saves: the file has other
    bytes too), then what the last drop saved each; a tenth more, so that the next try rarely misses."""
    kept = sum(int(mask.sum()) for _, mask in layers)
    each = size / kept if last is None or last[0] <= size else (last[0] - size) / last[1]
    n = min(kept, max(at_least, math.ceil(1.1 * (size - target) / each)))
    done = 0
    with torch.no_grad():
        for values, mask in layers:
            share = min(math.ceil(n * int(mask.sum()) / kept), int(mask.sum()))
            magnitude = torch.where(mask, values.detach().abs(), torch.inf).reshape(-1)
            mask.view(-1)[torch.topk(magnitude, share, largest=False).indices] = False
            done += share
    return done


class _Run:
    """One compression run: the user's model and callbacks, the config, and what every step measured."""

    def __init__(self, model: nn.Module, decide: Callable[[nn.Module], float], train: Callable[[nn.Module, int], Any] | None,
                 cfg: PipelineConfig, ckpt: _Checkpoints, progress: bool,
                 observe: Callable[[nn.Module], dict[str, Any]] | None = None,
                 probe: Callable[[nn.Module], float] | None = None, metadata: dict[str, Any] | None = None) -> None:
        self.model, self.decide, self.train, self.cfg, self.ckpt, self.progress = model, decide, train, cfg, ckpt, progress
        self.metadata = metadata or {}  # what the file's header will carry beside the plan
        self.observe = observe
        self.probe = probe or decide  # what sensitivity probes and plan checks measure
        self.before: float | None = None  # what the budget is measured from, where it is not ``validation_before``
        self.allowance: float | None = None  # the budget below it, where it is not ``max_drop``

    @property
    def max_drop(self) -> float:
        return self.cfg.max_drop if self.allowance is None else self.allowance

    @property
    def target(self) -> float:
        before = float(self.ckpt.info["validation_before"]) if self.before is None else self.before
        return before - self.max_drop

    def decide_on(self, metric: Callable[[nn.Module], float], before: float, max_drop: float | None = None) -> None:
        """Every later decision (probes, plan checks, budgets) measures ``metric``, within ``max_drop`` (default: the
        config's) of ``before``."""
        self.decide = self.probe = metric
        self.before, self.allowance = before, max_drop

    def history(self, **row: Any) -> None:
        if self.observe is not None and "validation" in row:
            row.update(self.observe(self.model))  # the caller's own record (a test metric, say); never a decision
        self.ckpt.info.setdefault("history", []).append(row)
        log.info("%s", {k: v for k, v in row.items() if k not in ("planned",)})

    def _metadata(self) -> dict[str, Any]:
        """The header's metadata for the model as it is now: every layer's planned bits (None where it has none)."""
        bits = self.ckpt.info.get("bits", {})
        return _file_metadata(self.metadata, {n: bits.get(n) for n in density(self.model)}, self.ckpt.info.get("other_bits"))

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def prune_rounds(self) -> None:
        """Plan, prune and retrain round after round while the validation metric holds (module docstring, step 1)."""
        info, cfg = self.ckpt.info, self.cfg
        info.setdefault("round", 0)
        info.setdefault("plan_drop", cfg.first_plan_drop if self.train is not None else cfg.max_drop)
        info.setdefault("failures", 0)
        info.setdefault("floor", min(cfg.densities))
        kept = [self.snapshot()]  # every kept round's state (rounds x the model's size), to back off to
        rounds = cfg.rounds if self.train is not None else 1
        floor_metric = float(info["validation_before"]) - cfg.effective_round_drop
        while info["round"] < rounds and info["failures"] < 3:
            before = density(self.model)
            ladder = sorted({d for d in cfg.densities if d > info["floor"]} | {info["floor"]}, reverse=True)
            sens = sensitivity(self.model, self.probe, ladder, (cfg.planning_bits,), progress=self.progress, relative=True)
            budget = info["plan_drop"] if self.train is not None else max(0.0, _measured(self.decide, self.model) - self.target)
            p = plan(self.model, self.probe, sens, PlanConfig(budget=budget))
            if all(lp.density >= before[lp.name] * 0.999 for lp in p.layers):
                self.history(stage="prune", round=info["round"], note="the plan prunes nothing more")
                break
            prune_(self.model, p.prune_config())
            if self.train is not None and cfg.retrain_epochs:
                self.train(self.model, cfg.retrain_epochs)
            metric = _measured(self.decide, self.model)
            ok = metric >= floor_metric
            self.history(stage="prune", round=info["round"], plan_drop=budget, floor=info["floor"], planned=p.to_dict(),
                         validation=metric, kept=ok, density=density(self.model))
            info["round"] += 1
            if ok:
                kept.append(self.snapshot())
                info["failures"], info["plan_drop"] = 0, budget * 1.5
                self.ckpt.save("pruning", self.model)
            else:
                self.reset_to(kept[-1])
                info["failures"], info["plan_drop"], info["floor"] = info["failures"] + 1, budget / 2, info["floor"] ** 0.5
        self._finish_pruning(kept)

    def prune_to_size(self) -> None:
        """Pruning rounds toward the settings of least predicted drop within ``layer_bytes`` (``target_ratio``), a
        cubic ramp of the way there at a time, none undone. Where to end is planned again each round from the model as
        it is, until seven eighths of the way are behind: after that the steps are small and the destination stays,
        so that no late change of plan takes a large step with little retraining left."""
        info, cfg = self.ckpt.info, self.cfg
        info.setdefault("round", 0)
        rounds = cfg.rounds if self.train is not None else 1
        while info["round"] < rounds:
            done, now = info["round"], density(self.model)
            if 1 - (1 - done / rounds) ** 3 < FREEZE or "destination" not in info:
                # One layer's bytes fall only when it is pruned far (a dense layer's entropy-coded weights cost about
                # what a 40% dense one's positions and weights do), so a plan for this round's bytes alone would prune
                # the small layers to nothing first.
                sens = sensitivity(self.model, self.probe, SIZE_LADDER, (cfg.planning_bits,), progress=self.progress, relative=True,
                                   between=SIZE_BETWEEN)
                goal = plan(self.model, self.probe, sens, PlanConfig(budget=cfg.max_drop, max_bytes=float(info["layer_bytes"])))
                info["destination"] = {lp.name: lp.density for lp in goal.layers}
                self.history(stage="plan", round=done, planned=goal.to_dict(), predicted_bytes=goal.predicted_bytes)
            way = 1 - ((1 - (done + 1) / rounds) / (1 - done / rounds)) ** 3  # of the sparsity still to go
            step = {n: now[n] - way * max(0.0, now[n] - d) for n, d in info["destination"].items()}
            prune_(self.model, PruneConfig(layer_sparsity={n: 1.0 - d for n, d in step.items()}))
            if self.train is not None and cfg.retrain_epochs:
                self.train(self.model, cfg.retrain_epochs)
            info["round"] += 1
            self.history(stage="prune", round=done, validation=_measured(self.decide, self.model), kept=True,
                         density=density(self.model))
            self.ckpt.save("pruning", self.model)
        if self.train is not None and cfg.final_retrain_epochs:
            self.train(self.model, cfg.final_retrain_epochs)
        metric = _measured(self.decide, self.model)
        self.history(stage="final retrain", validation=metric, kept=True, within_budget=metric >= self.target,
                     density=density(self.model))

    def _finish_pruning(self, kept: list[dict[str, torch.Tensor]]) -> None:
        """The last kept round, retrained longer; if it still misses ``max_drop``, half its step (``_split``), and so on
        back (at most ``backoff`` times; then, of those measured, the sparsest within a tenth of ``max_drop`` of the
        best: closer than that, which is best is the split's noise, and the denser one only gives the ratio away). The
        first state, from before any round of this run, is kept as it is when it is the only one."""
        missed: list[tuple[float, dict[str, torch.Tensor]]] = []  # in the order tried: the sparsest first
        while True:
            self.reset_to(kept[-1])
            tried = density(self.model)
            if len(kept) > 1 and self.train is not None and self.cfg.final_retrain_epochs:
                self.train(self.model, self.cfg.final_retrain_epochs)
            metric = _measured(self.decide, self.model)
            ok = metric >= self.target
            last = ok or len(kept) == 1 or len(missed) == self.cfg.backoff
            self.history(stage="final retrain", validation=metric, kept=ok or len(kept) == 1, within_budget=ok,
                         density=density(self.model))
            if last and not ok and missed:
                missed.append((metric, self.snapshot()))
                top = max(m for m, _ in missed)
                metric, state = next(c for c in missed if c[0] >= top - ROUNDING_SLACK * self.cfg.max_drop)
                self.reset_to(state)
                self.history(stage="final retrain", note=f"none of the last {len(missed)} rounds within max_drop; kept "
                             "the sparsest within a tenth of max_drop of the best measured", validation=metric, kept=True,
                             within_budget=False, density=density(self.model))
            if last:
                return
            missed.append((metric, self.snapshot()))
            kept.pop()
            if self.train is not None and self.cfg.final_retrain_epochs:
                self._split(kept, tried)

    def _split(self, kept: list[dict[str, torch.Tensor]], missed: dict[str, float]) -> None:
        """Push a state halfway (in log density, per layer) between the kept round ``kept[-1]`` and the densities of the
        one that just missed, pruned from the kept round and retrained like a round; unless the two are within
        ``SPLIT_MIN`` of each other's weight count, when the kept round itself is next.

        Where one round's step was too bold for the longer retraining to recover from, half that step usually is
        not, and backing off a whole round gives away the ratio of every layer that was pruned in it."""
        self.reset_to(kept[-1])
        now = density(self.model)
        sizes = {t.name: getattr(t.module, t.param).numel() for t in compressible_weights(self.model)}
        mid = {n: (d * min(d, missed[n])) ** 0.5 for n, d in now.items()}
        if sum(mid[n] * sizes[n] for n in mid) >= SPLIT_MIN * sum(now[n] * sizes[n] for n in now):
            return
        prune_(self.model, PruneConfig(layer_sparsity={n: 1.0 - d for n, d in mid.items()}))
        if self.train is not None and self.cfg.retrain_epochs:
            self.train(self.model, self.cfg.retrain_epochs)
        self.history(stage="split", validation=_measured(self.decide, self.model), density=density(self.model))
        kept.append(self.snapshot())

    def share(self) -> None:
        """Plan bits, share weights and the other tensors, fine-tune (module docstring, step 2)."""
        cfg, info = self.cfg, self.ckpt.info
        pruned = self.snapshot()
        sens = sensitivity(self.model, self.probe, (1.0,), cfg.bits, progress=self.progress, relative=True)
        # What sharing may cost before fine-tuning: the slack pruning left, and never less than half the budget
        # (fine-tuning the centroids wins most of it back, and a zero budget would plan 8 bits everywhere).
        budget = max(_measured(self.decide, self.model) - self.target, self.max_drop / 2)
        sized = cfg.target_ratio is not None
        p = plan(self.model, self.probe, sens, PlanConfig(budget=budget, max_bytes=info["layer_bytes"] if sized else None))
        bits = {lp.name: lp.bits for lp in p.layers}
        attempts: list[tuple[float, dict[str, torch.Tensor], dict[str, int], int | None]] = []
        # Within a size there is no bit to spare for another attempt.
        for attempt in range(1 if sized else cfg.share_retries + 1):
            if attempt:
                self.reset_to(pruned)
                bits = {n: min(8, b + 1) for n, b in bits.items()}
            if attempt and attempts[-1][3] is not None:
                # Like the layers, one bit more than before: searching again would let the split's noise pick (a
                # width that failed by one image stops the descent, and 8 bits were kept where 3 had passed).
                other: int | None = min(8, attempts[-1][3] + 1)
                share_weights_(self.model, ShareConfig(layer_bits=dict(bits), other_bits=other))
            else:
                share_weights_(self.model, ShareConfig(layer_bits=dict(bits)))
                other = self._share_others(bits)
                if sized:
                    bits = self._spend_spare(pruned, sens, p.predicted_bytes, bits, other)
            if self.train is not None and cfg.cluster_epochs:
                self._cluster(pruned, bits, other)
            # Fine-tuning the centroids, or keeping them unrounded, may leave a file that fitted over (``_fit_shared``).
            fitted = sized and self._saved_size(bits, other) <= float(info["target_bytes"])
            if self.train is not None and cfg.finetune_epochs:
                self.train(self.model, cfg.finetune_epochs)
            metric = _measured(self.decide, self.model)
            ok = metric >= self.target
            self.history(stage="share", attempt=attempt, bits=dict(bits), other_bits=other, validation=metric, within_budget=ok)
            attempts.append((metric, self.snapshot(), dict(bits), other))
            if ok:
                break
        # The attempt that measured best (the first, fewest bits, on a tie); more bits rarely help once noise dominates.
        best = max(range(len(attempts)), key=lambda i: (attempts[i][0], -i))
        metric, state, bits, other = attempts[best]
        if best != len(attempts) - 1:
            self.reset_to(state)
        info["bits"], info["other_bits"] = bits, other
        if cfg.codebook_dtype is not None:
            before = self.snapshot()
            round_codebooks_(self.model, getattr(torch, cfg.codebook_dtype))
            rounded = _measured(self.decide, self.model)
            ok = rounded >= self.rounding_floor(metric)
            self.history(stage="round codebooks", dtype=cfg.codebook_dtype, validation=rounded, kept=ok)
            if not ok:
                self.reset_to(before)
        if fitted:
            self._fit_shared()

    def _cluster(self, pruned: dict[str, torch.Tensor], bits: dict[str, int], other: int | None) -> None:
        """Train the pruned weights toward codebooks of these bits (``cluster_epochs``) and share them from there, in
        place of the shared model as it is, where that measures better. With a target size, a file the training left
        over it gives up its smallest weights until it fits (``_fit``)."""
        assert self.train is not None
        shared, metric = self.snapshot(), _measured(self.decide, self.model)
        self.reset_to(pruned)
        config = ShareConfig(layer_bits=dict(bits), other_bits=other)
        cluster_weights_(self.model, config)
        self.train(self.model, self.cfg.cluster_epochs)
        if self.cfg.target_ratio is None:
            share_weights_(self.model, config)
            size, dropped = None, 0
        else:
            size, dropped = self._fit(config)
        clustered = _measured(self.decide, self.model)
        kept = clustered >= metric and (size is None or size <= self.ckpt.info["target_bytes"])
        self.history(stage="cluster", epochs=self.cfg.cluster_epochs, validation=clustered, unclustered=metric,
                     file_bytes=size, weights_dropped=dropped, kept=kept)
        if not kept:
            self.reset_to(shared)

    def _fit(self, config: ShareConfig) -> tuple[int, int]:
        """Share the clustered model; while its file is over the target (training moves weights between clusters, and
        the codes' entropy with them), drop the smallest weights, each layer its share by its count, and share again.
        Returns the file's bytes and the weights dropped."""
        target, dropped, last = float(self.ckpt.info["target_bytes"]), 0, None
        # One snapshot for all the tries: between two of them only the clustered layers' masks change, and those are
        # copied per try (a bit a weight, where a snapshot is the whole model).
        clustered = self.snapshot()
        for _ in range(FIT_TRIES):
            masks = {t.name: cw.mask.clone() for t, cw in self._clustered_layers()}
            share_weights_(self.model, config)
            size = self._saved_size(config.layer_bits, config.other_bits)
            if size <= target:
                break
            self.reset_to(clustered)
            layers = self._clustered_layers()
            for t, cw in layers:
                cw.mask.copy_(masks[t.name])
            # A clustered weight's magnitude is its float one: the nearest centroid is what it computes with, not what
            # it has learnt.
            now = _drop_smallest([(t.module.parametrizations[t.param].original, cw.mask) for t, cw in layers],  # type: ignore[union-attr, index]
                                 size, target, last)
            dropped, last = dropped + now, (size, now)
        else:
            share_weights_(self.model, config)
            size = self._saved_size(config.layer_bits, config.other_bits)
        return size, dropped

    def _fit_shared(self) -> None:
        """After fine-tuning, while the file is over the target, drop the smallest shared weights, each layer its share.

        For a file that met the target before the centroids were fine-tuned: a codebook's bytes depend on its values
        (each float16 centroid is coded as its gap from the one below), so it can come out a few bytes over (a
        Fashion-MNIST LeNet-300-100 run wrote 21,329 B for a target of 21,328.8: 49.9995x, printed as 50.0x); and where
        rounding the codebooks was not kept, they are stored in float32 where the fit counted float16. A plan that never
        fitted is not made to fit here, by emptying its layers: that file stays over, with a warning."""
        target, metadata = float(self.ckpt.info["target_bytes"]), self._metadata()
        # The file as it is: its codebooks are float16 only where rounding them was kept.
        size, dropped, last = saved_size(self.model, metadata=metadata), 0, None
        # Until it fits, each try dropping at least twice what the last did: where dropping saves less than a weight's
        # share of the file (a layer of random codes, whose mask then costs more), the estimate alone can stall.
        while size > target:
            layers = [(getattr(t.module, t.param), sw.mask) for t in compressible_weights(self.model)
                      if (sw := find_parametrization(t.module, t.param, SharedWeight)) is not None]
            if not any(bool(mask.any()) for _, mask in layers):
                break
            now = _drop_smallest(layers, size, target, last, at_least=2 * last[1] if last else 1)
            dropped, last = dropped + now, (size, now)
            size = saved_size(self.model, metadata=metadata)
        if dropped:
            self.history(stage="fit", note=f"fine-tuning or rounding left the file over the target: {dropped} smallest "
                         "weights dropped", validation=_measured(self.decide, self.model), file_bytes=size, weights_dropped=dropped)

    def _clustered_layers(self) -> list[tuple[Any, ClusteredWeight]]:
        return [(t, cw) for t in compressible_weights(self.model)
                if (cw := find_parametrization(t.module, t.param, ClusteredWeight)) is not None]

    def _spend_spare(self, pruned: dict[str, torch.Tensor], sens: Sensitivity, planned: float, bits: dict[str, int],
                     other: int | None) -> dict[str, int]:
        """With a target size, the bits planned again with what the shared model, measured by the writer, leaves of the
        target: the other tensors' bytes were only bounded before their widths were chosen."""
        target = float(self.ckpt.info["target_bytes"])
        spare = target - self._saved_size(bits, other)
        if spare <= 0:
            return bits
        shared = self.snapshot()
        # The plan's bytes are predictions; a plan the writer finds over the target gives back what it overshot, and
        # after SPARE_TRIES the bits stay as they were.
        for _ in range(SPARE_TRIES):
            if spare <= 0:
                break
            self.reset_to(pruned)
            p = plan(self.model, self.probe, sens, PlanConfig(budget=self.max_drop, max_bytes=planned + spare))
            more = {lp.name: lp.bits for lp in p.layers}
            if more == bits:
                break
            share_weights_(self.model, ShareConfig(layer_bits=dict(more), other_bits=other))
            over = self._saved_size(more, other) - target
            if over <= 0:
                self.history(stage="plan", note=f"{spare:.0f} bytes of the target left after sharing: bits planned again",
                             bits=more)
                return more
            self.history(stage="plan", note=f"bits planned with {spare:.0f} bytes more came {over:.0f} over the target",
                         bits=more)
            # The next budget rules this plan out. A plan that used less than its budget (bit widths come in steps)
            # would come back for a budget cut by ``over`` alone, over again, until the tries ran out with the spare
            # unspent (a Fashion-MNIST LeNet-300-100 run planned one 39 B over twice, gave up and left 2.4 KB so).
            spare = min(spare, p.predicted_bytes - planned) - over
        self.reset_to(shared)
        return bits

    def _saved_size(self, bits: dict[str, int], other: int | None) -> int:
        """The file's bytes were it written now, its codebooks rounded to ``codebook_dtype`` as they will be (the
        rounding is undone after): a float32 codebook would count 2 bytes a centroid that the file will not spend."""
        metadata = _file_metadata(self.metadata, bits, other)
        if self.cfg.codebook_dtype is None:
            return saved_size(self.model, metadata=metadata)
        # Only the codebooks change: they are put back as they were, where a snapshot would copy the whole model.
        found = codebooks(self.model)
        exact = {name: cb.detach().clone() for name, cb in found.items()}
        round_codebooks_(self.model, getattr(torch, self.cfg.codebook_dtype))
        size = saved_size(self.model, metadata=metadata)
        with torch.no_grad():
            for name, cb in found.items():
                cb.copy_(exact[name])
        return size

    def rounding_floor(self, metric: float) -> float:
        """The least a rounding step (the other tensors' sharing, float16 codebooks) may leave from ``metric``: the
        budget, or, where ``metric`` is already below it, a ``ROUNDING_SLACK`` of ``max_drop`` less than ``metric``.

        Not "no lower than it is": a continuous metric (a loss) moves on any change at all, and the biases stayed at
        32 bits (8% of a LeNet-300-100 file) for a loss 1e-5 higher, which fine-tuning the codebooks then wins back."""
        return min(self.target, metric - ROUNDING_SLACK * self.max_drop)

    def _share_others(self, bits: dict[str, int]) -> int | None:
        """Share the tensors no layer claims at the fewest bits of ``other_bits`` that keep the metric within the
        budget, or, where it is already below, within ``rounding_floor`` of where it is; None if no width does."""
        chosen = None
        floor = self.rounding_floor(_measured(self.decide, self.model))
        for b in self.cfg.other_bits:
            before = self.snapshot()
            # Shared layers are shared again at their own bits: k-means over at most k distinct values keeps them exactly.
            share_weights_(self.model, ShareConfig(layer_bits=dict(bits), other_bits=b))
            if _measured(self.decide, self.model) >= floor:
                chosen = b
                continue
            self.reset_to(before)
            break
        return chosen

    def reset_to(self, state: dict[str, torch.Tensor]) -> None:
        """Back to a snapshot, whatever was pruned or shared since: the user's model object stays the same."""
        strip_(self.model)
        restore_(self.model, state)


def _file_metadata(metadata: dict[str, Any], bits: Mapping[str, int | None], other: int | None) -> dict[str, Any]:
    """What the file's header carries: the user's metadata, then the plan, compactly: the bits per layer and the other
    tensors' bits (each layer's density is its entry's nnz / numel and needs no bytes of its own). One function for
    the file and for size mode's measurements of it, so that the two count the same bytes."""
    return {**metadata, "plan": dict(bits), "other_bits": other}


def compress(
    model: nn.Module,
    path: str | os.PathLike[str],
    evaluate: Callable[[nn.Module], float],
    train: Callable[[nn.Module, int], Any] | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    config: PipelineConfig | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
    observe: Callable[[nn.Module], dict[str, Any]] | None = None,
    metadata: dict[str, Any] | None = None,
    probe: Callable[[nn.Module], float] | None = None,
    share_validate: Callable[[nn.Module], float] | None = None,
) -> CompressResult:
    """Compress ``model`` in place and write it to ``path``; return what it cost and bought, measured from the file.

    With ``checkpoint_dir``, a run that was interrupted resumes after its last finished step. ``observe``
    (optional) is called after every measured step; what it returns goes into that step's history row
    (e.g. the test metric, for the record: nothing is decided on it). ``metadata`` goes into the file
    beside the plan. ``probe`` (optional): the metric on a second held-out split, measured by the sensitivity
    probes and the planner's checks instead of ``validate``. They are many (dozens a round) and the plan keeps
    whichever measured best, so on the split that also accepts or rejects each round they pick its noise and bias
    it upwards; with ``probe`` that split only ever sees the plans' results. ``share_validate`` (optional): what the
    sharing stage decides on instead (its bits, the other tensors', the codebooks' rounding), within ``max_drop`` of
    its value on the model before compression (with ``config.share_max_drop``: within that of its value on the pruned
    model); its history rows are in its units. Sharing changes every weight a
    little, and a mean loss over a few thousand samples is carried by its few worst ones: a fidelity to the
    uncompressed model's outputs (which needs no labels) sees that change where the loss, up or down by chance, does not.
    """
    cfg = config or PipelineConfig()
    decide = validate or evaluate
    pristine = copy.deepcopy(model)  # the reload target: a plain model of the same architecture
    ckpt = _Checkpoints(Path(checkpoint_dir) if checkpoint_dir is not None else None)
    done = ckpt.resume(model)
    run = _Run(model, decide, train, cfg, ckpt, progress, observe, probe, metadata)
    seconds: dict[str, float] = dict(ckpt.info.get("seconds", {}))
    if done is None:
        sizing: dict[str, float] = {}
        if cfg.target_ratio is not None:
            sizing["target_bytes"] = dense_bytes(model) / cfg.target_ratio
            sizing["layer_bytes"] = sizing["target_bytes"] - _fixed_bytes(model, cfg)
            if sizing["layer_bytes"] <= 0:
                raise ConfigError(f"target_ratio {cfg.target_ratio}: the file would be {sizing['target_bytes']:.0f} bytes, less "
                                  f"than the {sizing['target_bytes'] - sizing['layer_bytes']:.0f} that the tensors no layer claims and the "
                                  "header need; ask for a smaller ratio, or share those tensors (other_bits)")
        ckpt.save("started", model, metric_before=_measured(evaluate, model), validation_before=_measured(decide, model),
                  dense_bytes=dense_bytes(model), seconds=seconds, config=cfg.to_dict(), **sizing)
        done = "started"
    if done in ("started", "pruning"):
        t0 = time.perf_counter()
        if cfg.target_ratio is not None:
            run.prune_to_size()
        else:
            run.prune_rounds()
        seconds["prune"] = seconds.get("prune", 0.0) + time.perf_counter() - t0
        ckpt.save("pruned", model, seconds=seconds)
    if done in ("started", "pruning", "pruned"):
        t0 = time.perf_counter()
        if cfg.share_max_drop is not None:
            metric = share_validate or decide
            run.decide_on(metric, _measured(metric, model), cfg.share_max_drop)
        elif share_validate is not None:
            run.decide_on(share_validate, _measured(share_validate, pristine))
        run.share()
        seconds["share"] = time.perf_counter() - t0
        ckpt.save("shared", model, seconds=seconds)
    t0 = time.perf_counter()
    layers = {n: {"density": d, "bits": ckpt.info.get("bits", {}).get(n)} for n, d in density(model).items()}
    the_plan: dict[str, Any] = {"layers": layers, "other_bits": ckpt.info.get("other_bits")}
    size = save(model, path, metadata=run._metadata())
    fresh = load(path, into=copy.deepcopy(pristine)).eval()
    after, val_after = _measured(evaluate, fresh), _measured(decide, fresh)
    seconds["save_and_check"] = time.perf_counter() - t0
    ckpt.save("saved", model, seconds=seconds)
    val_before = float(ckpt.info["validation_before"])
    within = val_after >= val_before - cfg.max_drop
    if "target_bytes" in ckpt.info and size > ckpt.info["target_bytes"]:
        log.warning("%s: %d bytes, over the %.1f that target_ratio %s asks for: the planner's sizes of the layers or of "
                    "the other tensors fell short; ask for a little more ratio", path, size, ckpt.info["target_bytes"], cfg.target_ratio)
    if not within:
        log.warning("%s: the file's validation metric is %.4g, %.4g below the model's before compression (%.4g), over "
                    "max_drop %.4g: nothing tried met the budget, and this is the best found. Raise max_drop to accept "
                    "it, or give train more epochs", path, val_after, val_before - val_after, val_before, cfg.max_drop)
    return CompressResult(
        str(path), size, int(ckpt.info["dense_bytes"]), float(ckpt.info["metric_before"]), after,
        val_before, val_after, the_plan,
        "validate" if validate is not None else "evaluate (no validate given: decisions were made on the reported metric)",
        train is None, seconds, list(ckpt.info.get("history", [])), within,
    )

