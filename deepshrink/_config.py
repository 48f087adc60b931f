"""Helpers shared by the config dataclasses: dict round trips for file headers."""

from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")
C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin for the config dataclasses: ``to_dict`` / ``from_dict`` round trips (configs go in file headers)."""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        return config_from_dict(cls, data)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[f.name] = value.value if isinstance(value, Enum) else (dict(value) if isinstance(value, dict) else value)
    return out


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {sorted(unknown)}; known fields: {sorted(names)}")
    return cls(**data)
