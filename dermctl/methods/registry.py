"""Finding a method by name: every method module is imported here, which registers it
(`dermctl.methods.base.register_method`); a test's or a user's own method registers the same way."""

from __future__ import annotations

from typing import Any

from dermctl.errors import UsageError
from dermctl.methods import byol, colorme, dino, ibot, simclr  # noqa: F401  (registers the methods)
from dermctl.methods.base import METHODS, PretrainMethod


def get_method(name: str) -> type[PretrainMethod]:
    key = name.lower()
    if key not in METHODS:
        raise UsageError(f"--method: unknown method {name!r} (known: {', '.join(sorted(METHODS))})")
    return METHODS[key]


def method_names() -> list[str]:
    return sorted(METHODS)


def resolve_config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Method defaults updated with overrides; unknown keys are an error naming the key."""
    cfg = get_method(name).defaults()
    for key, value in (overrides or {}).items():
        if key not in cfg:
            raise UsageError(f"config key {key!r} is not known to method {name} (see --print-config)")
        cfg[key] = value
    cfg["method"] = name.lower()
    return cfg
