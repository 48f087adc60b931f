"""The exceptions deepshrink raises. Every one derives from :class:`DeepShrinkError`."""

from __future__ import annotations

__all__ = [
    "ConfigError", "DeepShrinkError", "FormatError", "InvalidModelError", "MissingDependencyError", "ModelMismatchError",
    "UnsupportedLayerError",
]


class DeepShrinkError(Exception):
    """Base class: catch this to handle any deepshrink failure."""


class ConfigError(DeepShrinkError, ValueError):
    """A configuration value is out of range or inconsistent."""


class UnsupportedLayerError(DeepShrinkError, TypeError):
    """A module type has no entry in the layer registry."""


class FormatError(DeepShrinkError, ValueError):
    """A file is damaged, truncated or of the wrong kind: a .dsz file, or a data file the experiments read."""


class InvalidModelError(DeepShrinkError, ValueError):
    """The model's own tensors cannot be compressed as they are: NaN or Inf values, a parametrization of someone else's."""


class MissingDependencyError(DeepShrinkError, ImportError):
    """An optional dependency (matplotlib, tqdm, scipy, ...) is not installed; the message names the pip install."""


class ModelMismatchError(FormatError):
    """A file (or checkpoint) does not fit the model it is loaded into.

    A FormatError too, so that ``except FormatError`` covers every way a file can fail to load.
    """
