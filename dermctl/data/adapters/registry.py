"""Finding an adapter by name (`dermctl ingest --dataset NAME`): every adapter module is imported here,
which registers it (`dermctl.data.adapters.base.register_adapter`)."""

from __future__ import annotations

from dermctl.data.adapters import (  # noqa: F401  (registers the adapters)
    csv_table,
    derm7pt,
    fitzpatrick17k,
    folder,
    ham10000,
    isic_archive,
    mednode,
    pad_ufes_20,
    ph2,
    sd260,
)
from dermctl.data.adapters.base import ADAPTERS, Adapter
from dermctl.errors import UsageError


def get_adapter(name: str) -> Adapter:
    if name not in ADAPTERS:
        raise UsageError(f"--dataset: unknown data set {name!r} (known: {', '.join(sorted(ADAPTERS))})")
    return ADAPTERS[name]()


def adapter_names() -> list[str]:
    return sorted(ADAPTERS)
