"""Which weights of which module types deepshrink compresses.

A layer kind ("conv" or "fc") picks default bit widths; users add their own module types with
:func:`register_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from torch import nn

from ..errors import ConfigError, UnsupportedLayerError
from .ties import Holder, model_modules, storage_key, tie_groups

__all__ = ["FilterFn", "LayerKind", "LayerSpec", "compressible_weights", "register_layer", "supported_types"]

FilterFn = Callable[[nn.Module, str], bool]


class LayerKind(str, Enum):
    CONV = "conv"
    FC = "fc"


@dataclass(frozen=True)
class LayerSpec:
    param: str
    kind: LayerKind


_REGISTRY: dict[type[nn.Module], LayerSpec] = {
    nn.Linear: LayerSpec("weight", LayerKind.FC),
    nn.Conv1d: LayerSpec("weight", LayerKind.CONV),
    nn.Conv2d: LayerSpec("weight", LayerKind.CONV),
    nn.Conv3d: LayerSpec("weight", LayerKind.CONV),
}


def register_layer(module_type: type[nn.Module], param: str = "weight", kind: LayerKind | str = LayerKind.FC) -> None:
    """Let deepshrink compress ``param`` of every ``module_type`` instance."""
    _REGISTRY[module_type] = LayerSpec(param, LayerKind(kind))


def supported_types() -> list[str]:
    return sorted(t.__name__ for t in _REGISTRY)


def _spec_for(module: nn.Module) -> LayerSpec | None:
    # parametrize swaps the class for a generated subclass, so look up through the MRO.
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    return None


def compressible_weights(
    model: nn.Module, filter_fn: FilterFn | None = None
) -> Iterator[tuple[str, nn.Module, LayerSpec, list[Holder]]]:
    """Yield ``(module_name, module, spec, aliases)`` for every registered layer that ``filter_fn`` accepts.

    A tensor held by several modules (tied weights) is yielded once, for its first registered holder
    that ``filter_fn`` accepts; ``aliases`` lists its other holders, registered or not, which must share
    whatever is done to it.
    """
    groups = tie_groups(model)
    # By holder, not by tensor: the caller may give the group a new tensor before the next step.
    done: set[tuple[int, str]] = set()
    for name, module in model_modules(model):
        spec = _spec_for(module)
        if spec is None or (filter_fn is not None and not filter_fn(module, name)):
            continue
        key = storage_key(module, spec.param)
        if key is None or (id(module), spec.param) in done:
            continue
        group = groups[key]
        done.update((id(h[1]), h[2]) for h in group)
        yield name, module, spec, [h for h in group if h[1] is not module or h[2] != spec.param]


def check_named_layers(model: nn.Module, names: Iterable[str], what: str) -> None:
    """Fail early if a config names a layer that does not exist, cannot be compressed, or is a tied alias."""
    modules = dict(model.named_modules())
    owners = {name: [a[0] for a in aliases] for name, _, _, aliases in compressible_weights(model)}
    alias_of = {a: owner for owner, aliases in owners.items() for a in aliases}
    for name in names:
        if name not in modules:
            raise ConfigError(f"{what} names layer '{name}', which the model does not have")
        if name in alias_of:
            raise ConfigError(
                f"{what} names layer '{name}', whose weight is tied to '{alias_of[name]}'; the tied tensor is "
                f"compressed once, as '{alias_of[name]}': name that layer instead"
            )
        if _spec_for(modules[name]) is None:
            raise UnsupportedLayerError(
                f"{what} names layer '{name}' of type {type(modules[name]).__name__}, which cannot be compressed; "
                f"supported types: {', '.join(supported_types())}. Register it with deepshrink.register_layer."
            )
