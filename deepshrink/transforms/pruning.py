"""Magnitude pruning with masks that keep pruned weights exactly zero through retraining.

The mask is a ``torch.nn.utils.parametrize`` parametrization: the layer's weight is computed as
``where(mask, original, 0)`` on every access, so no optimizer update (momentum, weight decay, Adam
state) can make a pruned weight non-zero, and the user's optimizer and training loop keep working.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from .._config import DictConfig
from .._memory import release_memory
from ..errors import ConfigError
from ..layers.registry import FilterFn, check_named_layers, compressible_weights
from ..layers.ties import attach_aliases_, find_parametrization, parametrize_

__all__ = ["PruneConfig", "PruningMask", "density", "prune_", "sparsity_schedule"]

log = logging.getLogger(__name__)


@dataclass
class PruneConfig(DictConfig):
    """How much of each layer to prune.

    ``sparsity`` is the fraction of weights removed in every selected layer; ``layer_sparsity`` overrides
    it per module name. ``std_factor`` instead uses the threshold rule of Han et al. (2015): weights with
    ``|w| < std_factor * std(layer)`` are removed. Layers with no target are left alone.
    """

    sparsity: float | None = None
    layer_sparsity: dict[str, float] = field(default_factory=dict)
    std_factor: float | None = None

    def __post_init__(self) -> None:
        if self.sparsity is None and not self.layer_sparsity and self.std_factor is None:
            raise ConfigError("PruneConfig needs sparsity, layer_sparsity or std_factor")
        if self.std_factor is not None and (self.sparsity is not None or self.layer_sparsity):
            raise ConfigError("PruneConfig: use either std_factor or sparsity/layer_sparsity, not both")
        for name, s in [("sparsity", self.sparsity), *self.layer_sparsity.items()]:
            if s is not None and not 0.0 <= float(s) <= 1.0:
                raise ConfigError(f"PruneConfig: sparsity for '{name}' is {s}; it must lie in [0, 1]")
        if self.std_factor is not None and not self.std_factor >= 0:
            raise ConfigError(f"PruneConfig: std_factor is {self.std_factor}; it must be >= 0")

    def target(self, name: str, module_name: str | None = None) -> float | None:
        """The sparsity for tensor ``name``: its own entry, else its module's, else ``sparsity``."""
        if name in self.layer_sparsity:
            return self.layer_sparsity[name]
        return self.layer_sparsity.get(module_name or name, self.sparsity)



class PruningMask(nn.Module):
    """Parametrization ``weight = where(mask, original, 0)``; ``mask`` is a bool buffer."""

    mask: Tensor

    def __init__(self, mask: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight


# Above this many weights the pruning threshold is taken from an evenly strided sample of SAMPLE
# magnitudes instead of a full selection, which would copy the layer; the kept fraction then differs
# from the target by about 1/sqrt(SAMPLE) (0.05%), and the layer is never copied whole.
EXACT_LIMIT = 1 << 22
SAMPLE = 1 << 22
CHUNK = 1 << 22


def _abs_above(weight: Tensor, threshold: float | Tensor) -> Tensor:
    """``|weight| > threshold`` computed in chunks, so no full-size float temporary is made."""
    flat = weight.detach().reshape(-1)
    keep = torch.empty(flat.shape, dtype=torch.bool, device=flat.device)
    for i in range(0, flat.numel(), CHUNK):
        torch.gt(flat[i : i + CHUNK].abs(), threshold, out=keep[i : i + CHUNK])
    return keep.reshape(weight.shape)


def _keep_mask(weight: Tensor, target: float | None, std_factor: float | None) -> Tensor | None:
    w = weight.detach()
    if std_factor is not None:
        threshold = std_factor * w.float().std()
        return w.abs() >= threshold
    if target is None:
        return None
    n = w.numel()
    n_prune = round(float(target) * n)
    if n_prune <= 0:
        return torch.ones_like(w, dtype=torch.bool)
    if n_prune >= n:
        return torch.zeros_like(w, dtype=torch.bool)
    flat = w.reshape(-1)
    mags = flat.abs().float() if n <= EXACT_LIMIT else flat[:: n // SAMPLE].abs().float()
    k = n_prune if n <= EXACT_LIMIT else max(1, round(float(target) * mags.numel()))
    # numpy's in-place partition needs no index array, unlike torch.kthvalue (8 more bytes per weight).
    arr = mags.cpu().numpy()
    arr.partition(k - 1)
    return _abs_above(w, float(arr[k - 1]))


@torch.no_grad()
def prune_(model: nn.Module, config: PruneConfig, filter_fn: FilterFn | None = None) -> dict[str, float]:
    """Prune ``model`` in place; return each pruned layer's density (fraction of weights kept).

    Calling it again (iterative pruning) only removes more weights: a pruned weight never comes back.
    The parameter objects the optimizer holds stay the same, so an existing optimizer keeps working.
    """
    check_named_layers(model, config.layer_sparsity, "PruneConfig.layer_sparsity")
    densities: dict[str, float] = {}
    weights = 0
    for t in compressible_weights(model, filter_fn):
        weight = getattr(t.module, t.param)
        weights += weight.numel()
        keep = _keep_mask(weight, config.target(t.name, t.module_name), config.std_factor)
        if keep is None:
            continue
        existing = find_parametrization(t.module, t.param, PruningMask)
        if existing is not None:
            existing.mask &= keep
            mask = existing.mask
        else:
            # unsafe: the mask keeps shape and dtype, and the safety check would build two dense copies.
            parametrize_(t.module, t.param, PruningMask(keep))
            attach_aliases_(t.module, t.param, t.aliases)
            mask = keep
        densities[t.name] = int(torch.count_nonzero(mask)) / max(mask.numel(), 1)
        log.debug("pruned %s to density %.4f", t.name, densities[t.name])
    release_memory(weights)
    return densities


def sparsity_schedule(config: PruneConfig, steps: int) -> list[PruneConfig]:
    """Split a pruning target into ``steps`` growing targets (cubic ramp of Zhu & Gupta, 2017).

    Prune with each in turn and retrain in between; the last one equals ``config``.
    """
    if steps < 1:
        raise ConfigError(f"sparsity_schedule: steps is {steps}; it must be >= 1")
    if config.std_factor is not None:
        return [replace(config, std_factor=config.std_factor * (i + 1) / steps) for i in range(steps)]
    out = []
    for i in range(1, steps + 1):
        frac = 1.0 - (1.0 - i / steps) ** 3
        out.append(
            PruneConfig(
                sparsity=None if config.sparsity is None else config.sparsity * frac,
                layer_sparsity={k: v * frac for k, v in config.layer_sparsity.items()},
            )
        )
    return out


def density(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, float]:
    """Fraction of non-zero weights in each compressible layer."""
    return {t.name: float((getattr(t.module, t.param) != 0).float().mean()) for t in compressible_weights(model, filter_fn)}
