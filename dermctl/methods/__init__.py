"""Pretraining methods, one module each, behind a registry (`get_method`, `method_names`)."""

import contextlib
import importlib

from dermctl.methods.base import PretrainMethod, StepContext, get_method, method_names, register_method, resolve_config

# Importing a method module registers it. A module still missing must not break the others.
for _name in ("colorme", "simclr", "byol", "dino", "ibot"):
    with contextlib.suppress(ModuleNotFoundError):
        importlib.import_module(f"dermctl.methods.{_name}")

__all__ = ["PretrainMethod", "StepContext", "get_method", "method_names", "register_method", "resolve_config"]
