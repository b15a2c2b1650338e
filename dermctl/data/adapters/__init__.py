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

__all__ = [
    "Adapter",
    "AdapterOptions",
    "AdapterResult",
    "Record",
    "adapter_names",
    "get_adapter",
    "register_adapter",
]

# Generic adapters (folder of class sub-folders, CSV table); published-set adapters are imported below.
from dermctl.data.adapters import csv_table, folder  # noqa: E402, F401

# isort: split
# Published data sets (one module each; importing registers the adapter).
from dermctl.data.adapters import (  # noqa: E402, F401
    derm7pt,
    fitzpatrick17k,
    ham10000,
    isic_archive,
    mednode,
    pad_ufes_20,
    ph2,
    sd260,
)
