"""Data set adapters: one module per published layout (plus a folder and a CSV table adapter), each
registered with `base.register_adapter`; `registry` finds them by name."""

from dermctl.data.adapters.base import Adapter, AdapterOptions, AdapterResult, Record, register_adapter
from dermctl.data.adapters.registry import adapter_names, get_adapter

__all__ = [
    "Adapter",
    "AdapterOptions",
    "AdapterResult",
    "Record",
    "adapter_names",
    "get_adapter",
    "register_adapter",
]
