"""Which tensors of which module types deepshrink compresses, and of what kind each is.

A module type maps to one or several ``(param, kind)`` pairs; ``param`` may be a name or a function of
the module that lists names (an LSTM's ``weight_ih_l0, weight_hh_l0, ...``). The kind picks default
bit widths (``ShareConfig``); kinds are an open set of strings, with four built in. Users add their
own module types with :func:`register_layer`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from torch import nn
from torch.nn.utils import parametrize

from ..errors import ConfigError, UnsupportedLayerError
from .ties import Holder, model_modules, storage_key, tie_groups

__all__ = [
    "FilterFn", "LayerKind", "LayerSpec", "ParamSelector", "Target", "compressible_weights", "register_layer", "supported_types",
]

FilterFn = Callable[[nn.Module, str], bool]
ParamSelector = str | Callable[[nn.Module], Iterable[str]]


class LayerKind(str, Enum):
    """The built-in kinds; any other non-empty string is a kind too (its bits: ``ShareConfig.kind_bits``).

    ``OTHER`` is every floating-point parameter no registered layer claims (biases, normalisation
    scales): never pruned, and shared only when ``ShareConfig.other_bits`` asks for it.
    """

    CONV = "conv"
    FC = "fc"
    EMBEDDING = "embedding"
    RECURRENT = "recurrent"
    OTHER = "other"


@dataclass(frozen=True)
class LayerSpec:
    """What to compress in one module type: ``(param selector, kind)`` pairs."""

    entries: tuple[tuple[ParamSelector, str], ...]

    def params(self, module: nn.Module) -> list[tuple[str, str]]:
        """``(param name, kind)`` for each tensor of ``module`` this spec selects that the module holds."""
        out = []
        for selector, kind in self.entries:
            names = [selector] if isinstance(selector, str) else list(selector(module))
            out += [(n, kind) for n in names if _holds(module, n)]
        return out


def _holds(module: nn.Module, name: str) -> bool:
    from torch.nn.utils import parametrize

    return parametrize.is_parametrized(module, name) or module._parameters.get(name) is not None


def _rnn_weights(module: nn.Module) -> list[str]:
    # Biases stay raw; input-hidden, hidden-hidden and projection matrices, every layer and direction.
    return [n for n in module._flat_weights_names if n.startswith(("weight_ih_", "weight_hh_", "weight_hr_"))]  # type: ignore[union-attr]


def _attention_weights(module: nn.Module) -> list[str]:
    # One packed in-projection, or separate q/k/v projections when key/value dims differ; out_proj is a Linear.
    return ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"]


def _spec(*entries: tuple[ParamSelector, str | LayerKind]) -> LayerSpec:
    return LayerSpec(tuple((sel, LayerKind(kind).value if isinstance(kind, LayerKind) else kind) for sel, kind in entries))


_REGISTRY: dict[type[nn.Module], LayerSpec] = {
    nn.Linear: _spec(("weight", LayerKind.FC)),
    nn.Bilinear: _spec(("weight", LayerKind.FC)),
    nn.Conv1d: _spec(("weight", LayerKind.CONV)),
    nn.Conv2d: _spec(("weight", LayerKind.CONV)),
    nn.Conv3d: _spec(("weight", LayerKind.CONV)),
    nn.ConvTranspose1d: _spec(("weight", LayerKind.CONV)),
    nn.ConvTranspose2d: _spec(("weight", LayerKind.CONV)),
    nn.ConvTranspose3d: _spec(("weight", LayerKind.CONV)),
    nn.Embedding: _spec(("weight", LayerKind.EMBEDDING)),
    nn.EmbeddingBag: _spec(("weight", LayerKind.EMBEDDING)),
    nn.RNN: _spec((_rnn_weights, LayerKind.RECURRENT)),
    nn.LSTM: _spec((_rnn_weights, LayerKind.RECURRENT)),
    nn.GRU: _spec((_rnn_weights, LayerKind.RECURRENT)),
    nn.MultiheadAttention: _spec((_attention_weights, LayerKind.FC)),
}


# Types of optional packages, matched by qualified name so that deepshrink never imports them: a model
# that holds one has already imported its package. transformers' Conv1D (GPT-2's projections) is a
# Linear whose weight is stored transposed, (in, out); pruning and sharing are layout-blind, and sparse
# mode replaces only exact nn.Linear / nn.Conv2d, so Conv1D stays dense there.
_BY_QUALNAME: dict[str, LayerSpec] = {
    "transformers.pytorch_utils.Conv1D": _spec(("weight", LayerKind.FC)),
}


def register_layer(
    module_type: type[nn.Module],
    param: str | Sequence[str] | Callable[[nn.Module], Iterable[str]] = "weight",
    kind: LayerKind | str = LayerKind.FC,
) -> None:
    """Let deepshrink compress ``param`` of every ``module_type`` instance (a name, several, or a function listing them)."""
    kind_name = kind.value if isinstance(kind, LayerKind) else str(kind)
    if not kind_name:
        raise ConfigError(f"register_layer({module_type.__name__}): kind must be a non-empty string")
    selectors: list[ParamSelector] = [param] if isinstance(param, str) or callable(param) else list(param)
    _REGISTRY[module_type] = LayerSpec(tuple((sel, kind_name) for sel in selectors))


def supported_types() -> list[str]:
    return sorted([t.__name__ for t in _REGISTRY] + [f"{q.rsplit('.', 1)[1]} ({q.split('.')[0]})" for q in _BY_QUALNAME])


def _spec_for(module: nn.Module) -> LayerSpec | None:
    # parametrize swaps the class for a generated subclass, so look up through the MRO.
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
        spec = _BY_QUALNAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


class Target(NamedTuple):
    """One compressible tensor: ``name`` is the module name for a ``weight``, else ``module_name.param``."""

    name: str
    module_name: str
    module: nn.Module
    param: str
    kind: str
    aliases: list[Holder]


def _other_params(module: nn.Module) -> list[tuple[str, str]]:
    """Floating-point parameters (not buffers) of ``module`` that no registered spec of it claims."""
    spec = _spec_for(module)
    claimed = {p for p, _ in spec.params(module)} if spec is not None else set()
    names = [n for n, p in module._parameters.items() if p is not None and p.is_floating_point()]
    if parametrize.is_parametrized(module):
        names += [n for n in module.parametrizations if n not in names]  # type: ignore[union-attr]
    return [(n, LayerKind.OTHER.value) for n in names if n not in claimed]


def compressible_weights(model: nn.Module, filter_fn: FilterFn | None = None, others: bool = False) -> Iterator[Target]:
    """Every registered tensor of every module that ``filter_fn(module, module_name)`` accepts.

    With ``others``, then every other floating-point parameter too (kind ``"other"``: biases,
    normalisation scales), which only weight sharing with ``other_bits`` and the steps that undo or
    restore it touch. A tensor held by several modules (tied weights) is yielded once, for its first
    holder that ``filter_fn`` accepts; ``aliases`` lists its other holders, registered or not, which
    must share whatever is done to it.
    """
    groups = tie_groups(model)
    # By holder, not by tensor: the caller may give the group a new tensor before the next step.
    done: set[tuple[int, str]] = set()
    for pass_others in (False, True) if others else (False,):
        yield from _targets(model, filter_fn, groups, done, pass_others)


def _targets(model: nn.Module, filter_fn: FilterFn | None, groups: dict[int, list[Holder]], done: set[tuple[int, str]],
             others: bool) -> Iterator[Target]:
    for module_name, module in model_modules(model):
        spec = _spec_for(module)
        if (spec is None and not others) or (filter_fn is not None and not filter_fn(module, module_name)):
            continue
        params = _other_params(module) if others else spec.params(module)  # type: ignore[union-attr]
        for param, kind in params:
            key = storage_key(module, param)
            if key is None or (id(module), param) in done:
                continue
            group = groups[key]
            done.update((id(h[1]), h[2]) for h in group)
            # A layer's weight goes by its module's name; any other tensor (and every "other" one) by its own.
            name = module_name if param == "weight" and not others else f"{module_name}.{param}" if module_name else param
            aliases = [h for h in group if h[1] is not module or h[2] != param]
            yield Target(name, module_name, module, param, kind, aliases)


def check_named_layers(model: nn.Module, names: Iterable[str], what: str, others: bool = False) -> None:
    """Fail early if a config names a layer that does not exist, cannot be compressed, or is a tied alias.

    A name is a module name (every compressible tensor of that module) or a target's own name
    (``lstm.weight_hh_l0``, and with ``others`` a bias: ``ip1.bias``).
    """
    targets = list(compressible_weights(model, others=others))
    known = {t.name for t in targets} | {t.module_name for t in targets}
    alias_of = {a[0]: t.module_name for t in targets for a in t.aliases}
    modules = dict(model.named_modules())
    for name in names:
        if name in known:
            continue
        if name in alias_of:
            raise ConfigError(
                f"{what} names layer '{name}', whose weight is tied to '{alias_of[name]}'; the tied tensor is "
                f"compressed once, as '{alias_of[name]}': name that layer instead"
            )
        if name in modules:
            raise UnsupportedLayerError(
                f"{what} names layer '{name}' of type {type(modules[name]).__name__}, which cannot be compressed; "
                f"supported types: {', '.join(supported_types())}. Register it with deepshrink.register_layer."
            )
        raise ConfigError(f"{what} names layer '{name}', which the model does not have")
