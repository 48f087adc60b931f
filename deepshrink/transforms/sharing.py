"""Weight sharing: per-layer 1-D k-means codebooks whose centroids are fine-tuned.

After :func:`share_weights_` a layer's weight is ``where(mask, codebook[codes], 0)``; the codebook is
the only trainable tensor of the layer and autograd gives each centroid the sum of its members'
gradients (Deep Compression, eq. 3). Assignments and the pruning mask are fixed buffers.

Before that, :func:`cluster_weights_` may train the weights themselves toward their codebooks (quantization-aware
training): the forward uses each weight's nearest centroid, the gradient reaches the float weight, and a weight may
change clusters, which fine-tuning the centroids alone never lets it do. ``share_weights_`` then keeps those
codebooks and assignments, so the shared model computes what the clustered one did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .._config import DictConfig
from .._memory import release_memory
from ..errors import ConfigError, InvalidModelError, ModelMismatchError
from ..layers.registry import FilterFn, LayerKind, Target, check_named_layers, compressible_weights
from ..layers.ties import Holder, attach_aliases_, drop_parametrization_, find_parametrization, parametrize_, set_parameter_
from .pruning import PruningMask

__all__ = ["ClusteredWeight", "Init", "ShareConfig", "SharedWeight", "cluster_weights_", "codebooks", "kmeans1d", "restore_",
           "round_codebooks_", "share_weights_", "strip_", "unparametrize_"]

log = logging.getLogger(__name__)

MAX_BITS = 8
# Default bits of the kinds beyond conv and fc. Embedding rows are looked up, not summed over, so
# their error does not accumulate like an fc layer's; recurrent matrices are applied at every step.
DEFAULT_KIND_BITS = {"embedding": 5, "recurrent": 6}


class Init(str, Enum):
    """Centroid initialisation (paper section 3.1)."""

    LINEAR = "linear"
    DENSITY = "density"
    FORGY = "forgy"


@dataclass
class ShareConfig(DictConfig):
    """Bits per layer: by kind (``conv_bits``, ``fc_bits``, ``kind_bits`` for the others), ``layer_bits`` by name.

    ``layer_bits`` keys are module names (every compressible tensor of the module) or tensor names
    (``lstm.weight_hh_l0``). Kinds without an entry take ``fc_bits``. ``other_bits`` also shares every
    other floating-point parameter (biases, normalisation scales; kind ``"other"``), which is lossy
    and so off by default; ``layer_bits`` may name one of them (``"ip1.bias": 6``) instead.

    A layer shared at ``b`` bits gets ``2**b - 1`` centroids: the last symbol of its ``b``-bit alphabet is
    the zero filler of the relative sparse index, as in the paper (8 bits = 255 centroids + filler).
    """

    conv_bits: int = 8
    fc_bits: int = 5
    layer_bits: dict[str, int] = field(default_factory=dict)
    kind_bits: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_KIND_BITS))
    init: Init = Init.LINEAR
    iterations: int = 100
    seed: int = 0
    other_bits: int | None = None

    def __post_init__(self) -> None:
        self.init = Init(self.init)
        pairs = [("conv_bits", self.conv_bits), ("fc_bits", self.fc_bits), *self.layer_bits.items(), *self.kind_bits.items()]
        if self.other_bits is not None:
            pairs.append(("other_bits", self.other_bits))
        for name, b in pairs:
            if not (isinstance(b, int) and 1 <= b <= MAX_BITS):
                raise ConfigError(f"ShareConfig: bits for '{name}' is {b!r}; it must be an integer in 1..{MAX_BITS}")
        if self.iterations < 0:
            raise ConfigError(f"ShareConfig: iterations is {self.iterations}; it must be >= 0")

    def bits_for(self, name: str, kind: str, module_name: str | None = None) -> int | None:
        """The tensor's bits; ``None`` for an "other" tensor that is not to be shared."""
        if kind == LayerKind.OTHER.value:
            return self.layer_bits.get(name, self.other_bits)
        for key in (name, module_name):
            if key is not None and key in self.layer_bits:
                return self.layer_bits[key]
        if kind == LayerKind.CONV.value:
            return self.conv_bits
        return self.kind_bits.get(kind, self.fc_bits)



def _initial_centroids(sorted_v: np.ndarray, k: int, init: Init, rng: np.random.Generator) -> np.ndarray:
    if init is Init.LINEAR:
        return np.linspace(sorted_v[0], sorted_v[-1], k)
    if init is Init.DENSITY:
        # Evenly spaced points of the empirical CDF, centred in each of k equal-mass bins.
        q = (np.arange(k) + 0.5) / k
        return sorted_v[np.minimum((q * len(sorted_v)).astype(np.int64), len(sorted_v) - 1)].astype(np.float64)
    return np.sort(rng.choice(sorted_v, size=k, replace=False).astype(np.float64))


def kmeans1d(
    values: np.ndarray, k: int, init: Init = Init.LINEAR, iterations: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means on a 1-D array in O(n log n) time and O(n) memory.

    In 1-D each cluster is a contiguous run of the sorted values, bounded by midpoints between
    neighbouring centroids, so one iteration is a ``searchsorted`` of k boundaries plus prefix sums;
    no n-by-k distance matrix is formed. Returns ``(centroids[float32, sorted], codes[uint8])``.
    When there are no more distinct values than ``k`` every distinct value becomes a centroid.
    """
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size == 0:
        return np.zeros(1, np.float32), np.zeros(0, np.uint8)
    if not np.isfinite(values).all():
        raise InvalidModelError("kmeans1d: weights contain NaN or Inf; fix the model before sharing weights")
    sorted_v = np.sort(values)
    distinct = np.unique(sorted_v)
    if distinct.size <= k:
        centroids = distinct.astype(np.float32)
    else:
        rng = np.random.default_rng(seed)
        c = _initial_centroids(sorted_v, k, Init(init), rng)
        csum = np.concatenate([[0.0], np.cumsum(sorted_v, dtype=np.float64)])
        for _ in range(iterations):
            bounds = np.searchsorted(sorted_v, (c[:-1] + c[1:]) / 2.0, side="right")
            edges = np.concatenate([[0], bounds, [sorted_v.size]])
            counts = np.diff(edges)
            sums = csum[edges[1:]] - csum[edges[:-1]]
            new_c = np.where(counts > 0, sums / np.maximum(counts, 1), c)
            new_c.sort()
            if np.array_equal(new_c, c):
                break
            c = new_c
        centroids = c.astype(np.float32)
    codes = _assign(values, centroids)
    return centroids, codes


def _assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each value (centroids sorted ascending)."""
    if centroids.size == 1:
        return np.zeros(values.size, np.uint8)
    mid = (centroids[:-1].astype(np.float64) + centroids[1:]) / 2.0
    out = np.empty(values.size, np.uint8)
    step = 1 << 20  # chunks, so the int64 positions searchsorted returns stay small
    for i in range(0, values.size, step):
        out[i : i + step] = np.searchsorted(mid, values[i : i + step], side="left")
    return out


def _member_means(values: Tensor, codes: Tensor, empty: Tensor) -> Tensor:
    """Each cluster's mean of its members' ``values``; a cluster with none keeps its entry of ``empty`` (whose length
    is the number of clusters)."""
    sums = torch.zeros_like(empty).index_add_(0, codes, values.to(empty.dtype))
    counts = torch.bincount(codes, minlength=empty.numel())
    return torch.where(counts > 0, sums / counts.clamp_min(1), empty)


class SharedWeight(nn.Module):
    """Parametrization ``weight = where(mask, codebook[codes], 0)``.

    The parametrized tensor's ``original`` is the codebook itself (shape ``(k,)``), so the optimizer sees
    k numbers per layer. ``codes`` (uint8) and ``mask`` (bool) are buffers and survive ``state_dict()``.
    """

    codes: Tensor
    mask: Tensor

    def __init__(self, codes: Tensor, mask: Tensor, codebook: Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("codes", codes.to(torch.uint8))
        self.register_buffer("mask", mask.to(torch.bool))
        self._pending_codebook = codebook
        self._index: tuple[tuple[Any, ...], Tensor] | None = None

    def _gather_index(self, k: int) -> Tensor:
        """Codes with pruned positions pointing at an appended zero; cached until codes or mask change (``_version``)."""
        key = (k, self.codes._version, self.mask._version, self.codes.data_ptr(), self.mask.data_ptr())
        if self._index is None or self._index[0] != key:
            # int64: indexing with it is twice as fast as with int32 (measured on a 300x784 layer, forward + backward).
            self._index = (key, torch.where(self.mask, self.codes.long(), k))
        return self._index[1]

    def forward(self, codebook: Tensor) -> Tensor:
        # One gather from [codebook, 0]: the same values as where(mask, codebook[codes], 0), a third of the work.
        return torch.cat([codebook, codebook.new_zeros(1)])[self._gather_index(codebook.numel())]

    def adopt(self, codebook: Tensor) -> None:
        """Make the next registration take ``codebook`` as it is (a tied alias joining the owner's codebook)."""
        self._pending_codebook = codebook

    def right_inverse(self, weight: Tensor) -> Tensor:
        if self._pending_codebook is not None:
            codebook, self._pending_codebook = self._pending_codebook, None
            return codebook.to(weight.dtype)
        # Assigning a dense weight projects it: each centroid becomes the mean of its members.
        k = int(self.codes.max()) + 1 if self.codes.numel() else 1
        flat_codes = self.codes.reshape(-1).long()[self.mask.reshape(-1)]
        flat_w = weight.detach().reshape(-1)[self.mask.reshape(-1)]
        return _member_means(flat_w, flat_codes, torch.zeros(k, dtype=weight.dtype))


class ClusteredWeight(nn.Module):
    """Parametrization ``weight = where(mask, centroids[nearest(original)], 0)``, with the gradient passed straight
    through to ``original`` (the float weights, still trained).

    In training mode, with gradients on, every forward first moves each centroid to the mean of its members (one step
    of Lloyd's algorithm), so the codebook follows the weights as they train; otherwise the centroids stay as they are.
    ``mask`` (bool) and ``centroids`` (sorted) are buffers and survive ``state_dict()``.
    """

    mask: Tensor
    centroids: Tensor

    def __init__(self, mask: Tensor, centroids: Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("centroids", centroids)

    def _nearest(self, w: Tensor) -> Tensor:
        c = self.centroids
        return torch.bucketize(w, (c[:-1] + c[1:]) / 2)

    def forward(self, weight: Tensor) -> Tensor:
        if self.training and torch.is_grad_enabled():
            with torch.no_grad():
                values = weight.detach()[self.mask]
                moved = _member_means(values, self._nearest(values), self.centroids)
                self.centroids.copy_(moved.sort().values)
        kept = torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        quantized = torch.where(self.mask, self.centroids[self._nearest(weight.detach())], 0.0)
        return kept + (quantized - kept).detach()

    def right_inverse(self, weight: Tensor) -> Tensor:
        return weight


def unparametrize_(module: nn.Module, param: str, keep_original: bool = False, aliases: list[Holder] | None = None) -> None:
    """Remove the parametrization of ``module.param``, leaving a plain Parameter (held by every alias too).

    ``keep_original`` leaves the parametrization's ``original`` tensor (cheap: no dense copy);
    otherwise the current parametrized value is baked in.
    """
    requires_grad = module.parametrizations[param].original.requires_grad  # type: ignore[union-attr, index]
    with torch.no_grad():
        value = None if keep_original else getattr(module, param).detach().clone()
    original = drop_parametrization_(module, param)
    new = nn.Parameter(original.detach() if value is None else value, requires_grad=requires_grad)
    set_parameter_(module, param, new)
    for _, amod, aattr in aliases or []:
        if parametrize.is_parametrized(amod, aattr):
            drop_parametrization_(amod, aattr)
        set_parameter_(amod, aattr, new)


def _select(t: Tensor, mask: Tensor) -> Tensor:
    """``t[mask]``; on the CPU through numpy, which needs no (nnz x ndim) int64 index tensor."""
    if t.device.type == "cpu":
        return torch.from_numpy(t.detach().numpy()[mask.numpy()])
    return t.detach()[mask]


def _mask_and_values(name: str, module: nn.Module, param: str) -> tuple[Tensor, Tensor]:
    """The layer's non-zero pattern and its surviving weights, without materialising the dense weight."""
    plist: Any = module.parametrizations[param] if parametrize.is_parametrized(module, param) else None  # type: ignore[union-attr, index]
    if plist is not None and (len(plist) != 1 or not isinstance(plist[0], (PruningMask, ClusteredWeight, SharedWeight))):
        raise InvalidModelError(
            f"layer '{name}': its {param} has a parametrization deepshrink did not install; remove it before sharing weights"
        )
    if plist is not None and isinstance(plist[0], (PruningMask, ClusteredWeight)):
        mask = plist[0].mask  # the parametrization is about to be dropped; its mask tensor lives on here
        values = _select(plist.original, mask)
        if not bool(values.all()):  # a kept weight that is exactly zero counts as pruned
            mask = mask.clone()
            mask[mask.clone()] = values != 0
            values = values[values != 0]
    else:
        weight = getattr(module, param).detach()
        mask = weight != 0
        values = _select(weight, mask)
    if not torch.isfinite(values).all():
        raise InvalidModelError(f"layer '{name}': weight has NaN or Inf values; fix the model before sharing weights")
    return mask, values


def _install(t: Target, p: nn.Module) -> None:
    """Make ``p`` the only parametrization of ``t``'s tensor, on the owner and every tied alias."""
    if parametrize.is_parametrized(t.module, t.param):
        # The original tensor is about to become p's own (a codebook, say); computing the current
        # parametrized value would cost a full-size copy for nothing.
        unparametrize_(t.module, t.param, keep_original=True, aliases=t.aliases)
    parametrize_(t.module, t.param, p)
    attach_aliases_(t.module, t.param, t.aliases)


@torch.no_grad()
def share_weights_(model: nn.Module, config: ShareConfig | None = None, filter_fn: FilterFn | None = None) -> dict[str, int]:
    """Replace each selected layer's weight by a k-means codebook in place; return bits per layer.

    Zero weights (pruned ones) stay exactly zero. Build the optimizer for centroid fine-tuning after
    this call: each layer's trainable tensor is now its codebook. A layer clustered by :func:`cluster_weights_` at the
    same bits keeps its centroids and each weight its nearest one, as its forward in eval mode had them.
    """
    config = config or ShareConfig()
    check_named_layers(model, config.layer_bits, "ShareConfig.layer_bits", others=True)
    bits_used: dict[str, int] = {}
    weights = 0
    for t in compressible_weights(model, filter_fn, others=True):
        bits = config.bits_for(t.name, t.kind, t.module_name)
        if bits is None:
            continue
        clustered = find_parametrization(t.module, t.param, ClusteredWeight)
        mask, values = _mask_and_values(t.name, t.module, t.param)
        # One of the 2**bits symbols is reserved for the zero filler of the sparse index (paper Fig. 2),
        # so a fixed-width code of exactly ``bits`` bits covers centroids and fillers alike.
        if clustered is not None and clustered.centroids.numel() <= 2**bits - 1:
            centroids = clustered.centroids.cpu().numpy().astype(np.float32)
            codes = _assign(values.cpu().numpy().astype(np.float32), centroids)
        else:
            centroids, codes = kmeans1d(values.cpu().numpy(), 2**bits - 1, config.init, config.iterations, config.seed)
        full_codes_np = np.zeros(tuple(mask.shape), np.uint8)
        full_codes_np[mask.cpu().numpy()] = codes
        _install(t, SharedWeight(torch.from_numpy(full_codes_np).to(mask.device), mask, torch.from_numpy(centroids)))
        bits_used[t.name] = bits
        weights += mask.numel()
        log.debug("shared %s: %d centroids, %d weights", t.name, centroids.size, values.numel())
    release_memory(weights)
    return bits_used


@torch.no_grad()
def cluster_weights_(model: nn.Module, config: ShareConfig | None = None, filter_fn: FilterFn | None = None) -> dict[str, int]:
    """Train toward weight sharing: each selected layer's forward uses its weights' nearest k-means centroids
    (:class:`ClusteredWeight`) while the float weights stay the trainable tensors; return bits per layer.

    Train as usual (the optimizer may be built before or after: the parameters are the same objects), then
    :func:`share_weights_` with the same config fixes codebooks and assignments. A shared layer is expanded back to
    float weights first. Pruned weights stay zero. Quantization-aware training takes a smaller learning rate than
    training from scratch: the weights only need to settle into their clusters.
    """
    config = config or ShareConfig()
    check_named_layers(model, config.layer_bits, "ShareConfig.layer_bits", others=True)
    bits_used: dict[str, int] = {}
    for t in compressible_weights(model, filter_fn, others=True):
        bits = config.bits_for(t.name, t.kind, t.module_name)
        if bits is None:
            continue
        if find_parametrization(t.module, t.param, SharedWeight) is not None:
            unparametrize_(t.module, t.param, aliases=t.aliases)
        mask, values = _mask_and_values(t.name, t.module, t.param)
        centroids, _ = kmeans1d(values.cpu().numpy(), 2**bits - 1, config.init, config.iterations, config.seed)
        _install(t, ClusteredWeight(mask, torch.from_numpy(centroids).to(mask.device)))
        bits_used[t.name] = bits
    return bits_used


@torch.no_grad()
def round_codebooks_(model: nn.Module, dtype: torch.dtype = torch.float16, filter_fn: FilterFn | None = None) -> dict[str, float]:
    """Round every shared layer's codebook, in place, to the nearest values of ``dtype`` (float16 or bfloat16).

    A file then stores those codebooks in 2 bytes a centroid instead of 4, losslessly. It is a
    (small: float16 keeps 11 significant bits) change of the model, so measure it: call it after
    fine-tuning and check the metric. Returns each layer's largest relative change.
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"round_codebooks_: dtype must be torch.float16 or torch.bfloat16, not {dtype}")
    changed: dict[str, float] = {}
    for name, cb in codebooks(model, filter_fn).items():
        rounded = cb.to(dtype).to(cb.dtype)
        if not torch.isfinite(rounded).all():
            raise InvalidModelError(f"layer '{name}': a centroid does not fit {dtype}; keep its codebook in float32")
        changed[name] = float(((rounded - cb).abs() / cb.abs().clamp_min(1e-30)).max()) if cb.numel() else 0.0
        cb.copy_(rounded)
    return changed


def codebooks(model: nn.Module, filter_fn: FilterFn | None = None) -> dict[str, nn.Parameter]:
    """Every weight-shared tensor's codebook (the parameter fine-tuning trains), by the registry's name for it (a layer's
    weight: the layer's name)."""
    return {t.name: t.module.parametrizations[t.param].original  # type: ignore[union-attr, index]
            for t in compressible_weights(model, filter_fn, others=True)
            if find_parametrization(t.module, t.param, SharedWeight) is not None}


@torch.no_grad()
def strip_(model: nn.Module) -> nn.Module:
    """Bake masks and codebooks into plain weight tensors (removes all deepshrink parametrizations)."""
    for t in compressible_weights(model, others=True):
        if parametrize.is_parametrized(t.module, t.param):
            unparametrize_(t.module, t.param, aliases=t.aliases)
    return model


@torch.no_grad()
def restore_(model: nn.Module, state_dict: dict[str, Tensor], strict: bool = True) -> nn.Module:
    """Load a ``state_dict`` saved mid-pipeline into a fresh model, re-creating masks and codebooks."""
    for t in compressible_weights(model, others=True):
        prefix = f"{t.module_name}.parametrizations.{t.param}." if t.module_name else f"parametrizations.{t.param}."
        if prefix + "0.codes" in state_dict:
            codes, mask = state_dict[prefix + "0.codes"], state_dict[prefix + "0.mask"]
            if tuple(codes.shape) != tuple(getattr(t.module, t.param).shape):
                raise ModelMismatchError(
                    f"layer '{t.name}': checkpoint codes have shape {tuple(codes.shape)} but the model's weight is "
                    f"{tuple(getattr(t.module, t.param).shape)}; restore into the same architecture"
                )
            _install(t, SharedWeight(codes.clone(), mask.clone(), state_dict[prefix + "original"].clone()))
        elif prefix + "0.centroids" in state_dict:
            _install(t, ClusteredWeight(state_dict[prefix + "0.mask"].clone(), state_dict[prefix + "0.centroids"].clone()))
        elif prefix + "0.mask" in state_dict and not parametrize.is_parametrized(t.module, t.param):
            _install(t, PruningMask(state_dict[prefix + "0.mask"].clone()))
    model.load_state_dict(state_dict, strict=strict)
    return model
