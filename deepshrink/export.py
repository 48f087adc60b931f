"""Export a decoded model to the formats the ecosystem uses: safetensors, ONNX (checked in onnxruntime), Hugging Face.

Each takes a plain model (``load(path, into=model)`` first); their packages are optional extras, and a
missing one raises :class:`~deepshrink.errors.MissingDependencyError` naming the ``pip install``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DeepShrinkError, MissingDependencyError

__all__ = ["ONNX_TOLERANCE", "to_hf", "to_onnx", "to_safetensors"]

# onnxruntime against PyTorch, both fp32 from the same weights: the acceptance bar for an export.
ONNX_TOLERANCE = 1e-5


def _need(module: str, extra: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(f"exporting needs {module.split('.')[0]}: pip install 'deepshrink[{extra}]'") from None


def to_safetensors(model: nn.Module, path: str | os.PathLike[str]) -> int:
    """Write the model's state as safetensors (no pickle; tied tensors stored once); return the file's bytes."""
    st = _need("safetensors.torch", "export")
    st.save_model(model, str(path))
    return Path(path).stat().st_size


def to_onnx(model: nn.Module, example: tuple[torch.Tensor, ...], path: str | os.PathLike[str]) -> float:
    """Export to ONNX and run the file in onnxruntime on ``example``; return the largest relative difference.

    Raises :class:`DeepShrinkError` when onnxruntime and PyTorch differ by more than ``ONNX_TOLERANCE``.
    """
    _need("onnx", "export")
    ort = _need("onnxruntime", "export")
    model = model.eval()
    names = [f"input_{i}" for i in range(len(example))]
    axes = {n: {0: "batch"} for n in names}
    torch.onnx.export(model, example, str(path), dynamo=False, input_names=names, output_names=["output"],
                      dynamic_axes=axes | {"output": {0: "batch"}})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(names, example, strict=True)})[0]
    with torch.no_grad():
        out = model(*example)
    want = (out.logits if hasattr(out, "logits") else out).numpy()
    diff = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
    if diff > ONNX_TOLERANCE:
        raise DeepShrinkError(f"{path}: onnxruntime differs from PyTorch by {diff:.2e} (relative), more than {ONNX_TOLERANCE}")
    return diff


def to_hf(model: nn.Module, directory: str | os.PathLike[str]) -> Path:
    """Write a transformers model as ``config.json`` + ``model.safetensors`` (tied weights once); ``from_pretrained`` loads it."""
    if not hasattr(model, "save_pretrained"):
        raise DeepShrinkError(f"{type(model).__name__} is not a transformers model (no save_pretrained); export to safetensors instead")
    _need("transformers", "hf")
    model.save_pretrained(str(directory))  # type: ignore[operator]
    return Path(directory)
