"""The exceptions deepshrink raises. Every one derives from :class:`DeepShrinkError`."""

from __future__ import annotations

__all__ = ["ConfigError", "DeepShrinkError", "FormatError", "ModelMismatchError", "UnsupportedLayerError"]


class DeepShrinkError(Exception):
    """Base class: catch this to handle any deepshrink failure."""


class ConfigError(DeepShrinkError, ValueError):
    """A configuration value is out of range or inconsistent."""


class UnsupportedLayerError(DeepShrinkError, TypeError):
    """A module type has no entry in the layer registry."""


class FormatError(DeepShrinkError, ValueError):
    """A .dsz file is damaged, truncated or not a .dsz file at all."""


class ModelMismatchError(FormatError):
    """A file (or checkpoint) does not fit the model it is loaded into.

    A FormatError too, so that ``except FormatError`` covers every way a file can fail to load.
    """
