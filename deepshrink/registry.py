"""Which weights of which module types deepshrink compresses.

A layer kind ("conv" or "fc") picks default bit widths; users add their own module types with
:func:`register_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from torch import nn

from .errors import ConfigError, UnsupportedLayerError

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
) -> Iterator[tuple[str, nn.Module, LayerSpec]]:
    """Yield ``(module_name, module, spec)`` for every registered layer that ``filter_fn`` accepts."""
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        spec = _spec_for(module)
        if spec is not None and (filter_fn is None or filter_fn(module, name)):
            yield name, module, spec


def check_named_layers(model: nn.Module, names: Iterable[str], what: str) -> None:
    """Fail early if a config names a layer that does not exist or cannot be compressed."""
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise ConfigError(f"{what} names layer '{name}', which the model does not have")
        if _spec_for(modules[name]) is None:
            raise UnsupportedLayerError(
                f"{what} names layer '{name}' of type {type(modules[name]).__name__}, which cannot be compressed; "
                f"supported types: {', '.join(supported_types())}. Register it with deepshrink.register_layer."
            )
