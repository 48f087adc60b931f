"""``load(..., mode="sparse")``: replace a model's weight-shared layers by modules that compute from the compressed form."""

from __future__ import annotations

from torch import Tensor, nn

from ..compressed import SharedSparse
from .kernels import CompressedConv2d, CompressedLinear, SparseCodebookMatrix, supports

__all__ = ["swap_in", "swappable"]


def swappable(model: nn.Module, tensor_name: str) -> str | None:
    """The name of the module whose weight is ``tensor_name``, if sparse mode can replace that module."""
    module_name, _, attr = tensor_name.rpartition(".")
    if attr != "weight":
        return None
    try:
        module = model.get_submodule(module_name)
    except AttributeError:
        return None
    return module_name if supports(module) else None


def swap_in(model: nn.Module, module_name: str, form: SharedSparse, what: str) -> None:
    """Replace ``model.<module_name>`` (an ``nn.Linear`` or ``nn.Conv2d``) by its compressed-form twin."""
    module = model.get_submodule(module_name)
    weight: Tensor = module.weight  # type: ignore[assignment]
    bias: Tensor | None = module.bias  # type: ignore[assignment]
    pos, codes = form.positions(weight.numel(), what)
    matrix = SparseCodebookMatrix.from_positions((int(weight.shape[0]), weight[0].numel()), pos, codes, form.codebook)
    new: nn.Module = CompressedConv2d(matrix, bias, module) if isinstance(module, nn.Conv2d) else CompressedLinear(matrix, bias)
    parent_name, _, child = module_name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
