"""Pretraining methods, one module each, behind a registry (`get_method`, `method_names`)."""

from dermctl.methods.base import PretrainMethod, StepContext, register_method
from dermctl.methods.registry import get_method, method_names, resolve_config

__all__ = ["PretrainMethod", "StepContext", "get_method", "method_names", "register_method", "resolve_config"]
