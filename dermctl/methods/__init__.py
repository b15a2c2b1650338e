"""Pretraining methods, one module each, behind a registry (`get_method`, `method_names`)."""

# Importing a method module registers it.
from dermctl.methods import byol, colorme, dino, ibot, simclr  # noqa: F401
from dermctl.methods.base import (
    PretrainMethod,
    StepContext,
    get_method,
    method_names,
    register_method,
    resolve_config,
)

__all__ = ["PretrainMethod", "StepContext", "get_method", "method_names", "register_method", "resolve_config"]
