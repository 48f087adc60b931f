"""The whole pipeline in one call, for users who want it: plan, prune and retrain, share and fine-tune, save, reload.

Built on the in-place verbs, which stay the primary API. It takes the user's own callbacks:
``evaluate(model) -> float`` (higher is better; the reported metric), optionally ``validate(model) ->
float`` (the same metric on a validation split: every decision is made on it; without it ``evaluate``
decides, and the result says so) and ``train(model, epochs)`` (the user's loop, optimizer and all;
without it the model is compressed post-training). A checkpoint after every stage lets an interrupted
run resume where it stopped.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._config import DictConfig
from .errors import ConfigError, FormatError
from .planning.planner import Plan, PlanConfig, plan
from .planning.sensitivity import BITS, DENSITIES, sensitivity
from .serialize import load, save
from .transforms.pruning import PruneConfig, prune_
from .transforms.sharing import restore_, share_weights_

__all__ = ["CompressResult", "PipelineConfig", "compress"]

log = logging.getLogger(__name__)

STAGES = ("planned", "pruned", "shared", "saved")


@dataclass
class PipelineConfig(DictConfig):
    """``max_drop``: the validation-metric drop the plan may cost before retraining (0.005 = half a point).

    ``prune_steps``: pruning reaches the plan in this many steps, with ``retrain_epochs`` of the user's
    ``train`` after each; ``finetune_epochs`` fine-tune the centroids after sharing.
    """

    max_drop: float = 0.005
    prune_steps: int = 2
    retrain_epochs: int = 1
    finetune_epochs: int = 1
    densities: tuple[float, ...] = DENSITIES
    bits: tuple[int, ...] = BITS

    def __post_init__(self) -> None:
        self.densities, self.bits = tuple(self.densities), tuple(self.bits)
        if not self.max_drop >= 0:
            raise ConfigError(f"PipelineConfig: max_drop is {self.max_drop}; it must be >= 0")
        if self.prune_steps < 1 or self.retrain_epochs < 0 or self.finetune_epochs < 0:
            raise ConfigError("PipelineConfig: prune_steps must be >= 1, retrain_epochs and finetune_epochs >= 0")



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

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.file_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "ratio": self.ratio}


def _dense_bytes(model: nn.Module) -> int:
    unique = {id(t): t for t in model.state_dict(keep_vars=True).values()}
    return sum(t.numel() * t.element_size() for t in unique.values())


class _Checkpoints:
    """``progress.json`` (stage, plan, metrics) and ``model.pt`` (a tensor-only state_dict) after every stage."""

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
        if stage != "planned":
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


def compress(
    model: nn.Module,
    path: str | os.PathLike[str],
    evaluate: Callable[[nn.Module], float],
    train: Callable[[nn.Module, int], Any] | None = None,
    validate: Callable[[nn.Module], float] | None = None,
    config: PipelineConfig | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    progress: bool = False,
) -> CompressResult:
    """Compress ``model`` in place and write it to ``path``; return what it cost and bought, measured from the file.

    With ``checkpoint_dir``, a run that was interrupted resumes after its last finished stage.
    """
    cfg = config or PipelineConfig()
    decide = validate or evaluate
    pristine = copy.deepcopy(model)  # the reload target: a plain model of the same architecture
    ckpt = _Checkpoints(Path(checkpoint_dir) if checkpoint_dir is not None else None)
    done = ckpt.resume(model)
    seconds: dict[str, float] = dict(ckpt.info.get("seconds", {}))
    t0 = time.perf_counter()
    if done is None:
        was_training = model.training
        model.eval()
        before, val_before = float(evaluate(model)), float(decide(model))
        model.train(was_training)
        sens = sensitivity(model, decide, cfg.densities, cfg.bits, progress=progress)
        the_plan = plan(model, decide, sens, PlanConfig(budget=cfg.max_drop))
        seconds["plan"] = time.perf_counter() - t0
        ckpt.save("planned", model, plan=the_plan.to_dict(), metric_before=before, validation_before=val_before,
                  dense_bytes=_dense_bytes(model), seconds=seconds)
        log.info("plan:\n%s", the_plan.table())
    the_plan = Plan.from_dict(ckpt.info["plan"])
    if done in (None, "planned"):
        t0 = time.perf_counter()
        target = the_plan.prune_config()
        for step in range(1, cfg.prune_steps + 1):
            frac = 1.0 - (1.0 - step / cfg.prune_steps) ** 3
            prune_(model, PruneConfig(layer_sparsity={k: v * frac for k, v in target.layer_sparsity.items()}))
            if train is not None and cfg.retrain_epochs:
                train(model, cfg.retrain_epochs)
        seconds["prune"] = time.perf_counter() - t0
        ckpt.save("pruned", model, seconds=seconds)
    if done in (None, "planned", "pruned"):
        t0 = time.perf_counter()
        share_weights_(model, the_plan.share_config())
        if train is not None and cfg.finetune_epochs:
            train(model, cfg.finetune_epochs)
        seconds["share"] = time.perf_counter() - t0
        ckpt.save("shared", model, seconds=seconds)
    t0 = time.perf_counter()
    size = save(model, path, metadata={"pipeline": cfg.to_dict(), "plan": ckpt.info["plan"]})
    fresh = load(path, into=copy.deepcopy(pristine)).eval()
    after, val_after = float(evaluate(fresh)), float(decide(fresh))
    seconds["save_and_check"] = time.perf_counter() - t0
    ckpt.save("saved", model, seconds=seconds)
    return CompressResult(
        str(path), size, int(ckpt.info["dense_bytes"]), float(ckpt.info["metric_before"]), after,
        float(ckpt.info["validation_before"]), val_after, ckpt.info["plan"],
        "validate" if validate is not None else "evaluate (no validate given: decisions were made on the reported metric)",
        train is None, seconds,
    )
