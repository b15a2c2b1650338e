"""Data set adapters. Importing this package registers every adapter (see `base.register_adapter`)."""

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    adapter_names,
    get_adapter,
    register_adapter,
)

__all__ = ["Adapter", "AdapterOptions", "AdapterResult", "Record", "adapter_names", "get_adapter", "register_adapter"]
