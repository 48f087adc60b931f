"""A user's task file: their own Python code defining the model and how to measure (and train) it.

Required: ``model()`` returns the trained model (or builds one, with ``WEIGHTS = "file.pt"`` naming a
state_dict to load with ``weights_only=True``), ``evaluate(model)`` returns a float, higher is better.
Optional: ``validate(model)`` (the same metric on a validation split, used for every decision),
``train(model, epochs)`` (without it the model is compressed post-training), ``example_input()`` (a
tuple of tensors, for ONNX export). Running the file runs the user's own code, as ``python TASK.py`` would.
"""

from __future__ import annotations

import importlib.util
import numbers
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["Task", "TaskError"]


class TaskError(ConfigError):
    """The task file is missing something, returned the wrong thing, or raised: the message says which and where."""


class Task:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise TaskError(f"{self.path}: no such task file")
        spec = importlib.util.spec_from_file_location(f"deepshrink_task_{self.path.stem}", self.path)
        if spec is None or spec.loader is None:
            raise TaskError(f"{self.path}: not a Python file")
        self.module: ModuleType = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(self.path.parent.resolve()))  # the task's own helper modules, as python TASK.py sees them
        try:
            spec.loader.exec_module(self.module)
        except Exception as exc:
            raise TaskError(f"{self.path}: running the file raised {type(exc).__name__}: {exc}") from exc
        for name in ("model", "evaluate"):
            if not callable(getattr(self.module, name, None)):
                raise TaskError(f"{self.path}: defines no {name}(); a task file needs model() and evaluate(model)")

    def has(self, name: str) -> bool:
        return callable(getattr(self.module, name, None))

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.module, name)(*args)
        except Exception as exc:
            raise TaskError(f"{self.path}: {name}() raised {type(exc).__name__}: {exc}") from exc

    def model(self) -> nn.Module:
        m = self._call("model")
        if not isinstance(m, nn.Module):
            raise TaskError(f"{self.path}: model() returned {type(m).__name__}; it must return a torch.nn.Module")
        weights = getattr(self.module, "WEIGHTS", None)
        if weights is not None:
            file = (self.path.parent / str(weights)) if not Path(str(weights)).is_absolute() else Path(str(weights))
            if not file.exists():
                raise TaskError(f"{self.path}: WEIGHTS names {file}, which does not exist; train and save it first")
            try:
                m.load_state_dict(torch.load(file, weights_only=True, map_location="cpu"))
            except Exception as exc:
                raise TaskError(f"{file}: cannot load it into model() with weights_only=True ({exc})") from exc
        return m

    def metric(self, name: str) -> Callable[[nn.Module], float]:
        def call(model: nn.Module) -> float:
            value = self._call(name, model)
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, numbers.Real) or isinstance(value, bool):
                raise TaskError(f"{self.path}: {name}(model) returned {type(value).__name__}; it must return a float")
            return float(value)

        return call

    def train(self) -> Callable[[nn.Module, int], Any] | None:
        if not self.has("train"):
            return None
        return lambda model, epochs: self._call("train", model, epochs)

    def example_input(self) -> tuple[torch.Tensor, ...]:
        if not self.has("example_input"):
            raise TaskError(f"{self.path}: defines no example_input(); ONNX export needs one (a tuple of input tensors)")
        x = self._call("example_input")
        x = (x,) if isinstance(x, torch.Tensor) else tuple(x)
        if not all(isinstance(t, torch.Tensor) for t in x):
            raise TaskError(f"{self.path}: example_input() must return a tensor or a tuple of tensors")
        return x
