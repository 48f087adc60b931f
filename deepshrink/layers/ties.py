"""Tensors held by more than one module (tied weights), kept tied through every deepshrink step.

Language models tie their output projection to the token embedding (``head.weight = emb.weight``).
Parametrizing only one holder would break the tie silently: the other keeps computing with the
unmasked, unshared tensor. So every holder of a tied tensor gets the *same* parametrization objects
over the *same* ``original`` tensor, one mask and one codebook for the group, and the file stores the
tensor once with the other names as aliases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "Holder",
    "attach_aliases_",
    "drop_parametrization_",
    "find_parametrization",
    "holders",
    "model_modules",
    "parametrize_",
    "set_parameter_",
    "storage_key",
    "tie_groups",
]

# (module name, module, attribute name)
Holder = tuple[str, nn.Module, str]


def storage_key(module: nn.Module, attr: str) -> int | None:
    """Identity of the tensor behind ``module.attr``: the parametrization's ``original`` when parametrized."""
    if parametrize.is_parametrized(module, attr):
        return id(module.parametrizations[attr].original)  # type: ignore[union-attr, index]
    t: Tensor | None = module._parameters.get(attr)
    if t is None:
        t = module._buffers.get(attr)
    return None if t is None else id(t)


P = TypeVar("P", bound=nn.Module)


def find_parametrization(module: nn.Module, attr: str, kind: type[P]) -> P | None:
    """The parametrization of type ``kind`` on ``module.attr``, if there is one."""
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((p for p in module.parametrizations[attr] if isinstance(p, kind)), None)  # type: ignore[union-attr, index]


def model_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``named_modules()`` without the modules ``torch.nn.utils.parametrize`` inserts (they hold no model tensors)."""
    for name, module in model.named_modules():
        if "parametrizations" not in name.split("."):
            yield name, module


def holders(model: nn.Module) -> Iterator[Holder]:
    """Every ``(module_name, module, attr)`` holding a parameter, buffer or parametrized tensor, in module order.

    Modules are visited once each (``named_modules`` removes duplicates); the same tensor may be held
    under several names.
    """
    for mname, module in model_modules(model):
        names = [n for n, p in module._parameters.items() if p is not None]
        names += [n for n, b in module._buffers.items() if b is not None]
        if parametrize.is_parametrized(module):
            names += list(module.parametrizations)  # type: ignore[arg-type]
        for attr in names:
            yield mname, module, attr


def tie_groups(model: nn.Module) -> dict[int, list[Holder]]:
    """Storage key -> every holder of that tensor, first holder first."""
    groups: dict[int, list[Holder]] = {}
    for h in holders(model):
        key = storage_key(h[1], h[2])
        if key is not None:
            groups.setdefault(key, []).append(h)
    return groups


def parametrize_(module: nn.Module, attr: str, p: nn.Module) -> None:
    """Register ``p`` on ``module.attr`` (unsafe: deepshrink's parametrizations keep shape and dtype)."""
    parametrize.register_parametrization(module, attr, p, unsafe=True)
    _refresh_rnn(module)


def set_parameter_(module: nn.Module, attr: str, value: Tensor) -> None:
    """Make ``module.attr`` the plain tensor ``value`` (no parametrization), keeping an RNN's cache in step."""
    module._parameters[attr] = value  # type: ignore[assignment]
    _refresh_rnn(module)


def _refresh_rnn(module: nn.Module) -> None:
    """Keep an RNN's cached ``_flat_weights`` in step with its (re)parametrized weights.

    ``RNNBase`` caches its weight tensors and only re-reads them through weak references that edits of
    ``_parameters`` bypass. While parametrized, the cache holds computed tensors after each forward;
    a hook detaches them then, so that ``copy.deepcopy`` of a model mid-training keeps working.
    """
    if not isinstance(module, nn.RNNBase):
        return
    with torch.no_grad():
        module._init_flat_weights()
    if not getattr(module, "_deepshrink_detach_hook", False):
        module.register_forward_hook(_detach_flat_weights)
        module._deepshrink_detach_hook = True


def _detach_flat_weights(module: nn.Module, inputs: Any, output: Any) -> None:
    if parametrize.is_parametrized(module):
        module._flat_weights = [None if w is None else w.detach() for w in module._flat_weights]  # type: ignore[union-attr, assignment]


def attach_aliases_(owner: nn.Module, attr: str, aliases: list[Holder]) -> None:
    """Give each alias the owner's parametrization of ``attr``: the same ``original`` and the same modules.

    The owner must already be parametrized. Any stale parametrization an alias had is dropped first
    (without baking it: the owner's ``original`` is the one tensor of the group).
    """
    plist: Any = owner.parametrizations[attr]  # type: ignore[union-attr, index]
    original: Tensor = plist.original
    for _, amod, aattr in aliases:
        if parametrize.is_parametrized(amod, aattr):
            drop_parametrization_(amod, aattr)
        amod._parameters[aattr] = original  # type: ignore[assignment]
        for p in plist:
            # right_inverse must hand back ``original`` unchanged; see SharedWeight.adopt.
            if hasattr(p, "adopt"):
                p.adopt(original)
            parametrize_(amod, aattr, p)


def drop_parametrization_(module: nn.Module, attr: str) -> Tensor:
    """Remove the parametrization of ``module.attr``, leaving its ``original`` there as a plain tensor.

    Nothing is computed or copied. ``torch``'s ``remove_parametrizations`` deletes the property from
    the injected class, which ``copy.deepcopy`` shares between a model and its copy, so stripping a copy
    would break the original. Here the module gets its own class back and any other parametrized
    tensors are registered again (same ``original`` tensors, same parametrization modules).
    """
    plists: dict[str, Any] = dict(module.parametrizations.items())  # type: ignore[union-attr, operator]
    module.__class__ = parametrize.type_before_parametrizations(module)
    delattr(module, "parametrizations")
    for name, plist in plists.items():
        module._parameters[name] = plist.original
    for name, plist in plists.items():
        if name != attr:
            for p in plist:
                if hasattr(p, "adopt"):
                    p.adopt(plist.original)
                parametrize.register_parametrization(module, name, p, unsafe=True)
    _refresh_rnn(module)
    return plists[attr].original  # type: ignore[no-any-return]
