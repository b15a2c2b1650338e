"""The one interface every data set adapter implements, and the adapter registry.

An adapter only *reads the published layout*: it finds the metadata and images under a root, says which
published variant it found, and returns one `Record` per image with its label, group and (when the
publisher fixes one) split. Decoding, hashing, de-duplication, splitting and writing the manifest are the
ingest engine's job (`dermctl.data.ingest`), identical for every set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from dermctl.errors import DataError, UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})


@dataclass
class Record:
    """One image as the publisher lists it."""

    path: Path
    label: str = ""
    group: str = ""
    split: str = ""  # "test" when the publisher fixes it; "" lets the engine split
    image_id: str = ""
    extras: dict[str, str] = field(default_factory=dict)


@dataclass
class AdapterResult:
    """What an adapter found under its root."""

    records: list[Record]
    variant: str  # which published layout was found, in words
    missing_images: list[str] = field(default_factory=list)  # metadata rows whose image is absent
    unlisted_images: list[str] = field(default_factory=list)  # images on disk that no metadata row lists
    notes: list[str] = field(default_factory=list)


@dataclass
class AdapterOptions:
    """Options a user may pass to an adapter (`--label-column`, `--labels`)."""

    label_column: str | None = None
    granularity: str | None = None  # Fitzpatrick17k: three | nine | fine


class Adapter:
    """Base class. Subclasses set the class attributes and implement `read`."""

    name: ClassVar[str]
    role: ClassVar[str]  # "task" or "corpus"
    description: ClassVar[str]
    group_key: ClassVar[str | None] = None  # the publisher's grouping column, e.g. lesion_id
    has_official_test: ClassVar[bool] = False
    label_columns: ClassVar[tuple[str, ...]] = ()  # allowed label columns; first is the default

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        raise NotImplementedError

    def choose_label_column(self, options: AdapterOptions, available: list[str], where: Path) -> str:
        """The label column asked for, validated against what the file has."""
        wanted = options.label_column or (self.label_columns[0] if self.label_columns else None)
        if wanted is None:
            raise UsageError(f"--label-column: data set {self.name} has no labels")
        if wanted not in available:
            raise UsageError(
                f"--label-column: {wanted!r} is not a column of {where} (columns: {', '.join(available)})"
            )
        return wanted


_REGISTRY: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available to `dermctl ingest --dataset NAME`."""
    _REGISTRY[cls.name] = cls
    return cls


def get_adapter(name: str) -> Adapter:
    from dermctl.data import adapters  # noqa: F401  (imports every adapter module, filling the registry)

    if name not in _REGISTRY:
        raise UsageError(f"--dataset: unknown data set {name!r} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


def adapter_names() -> list[str]:
    from dermctl.data import adapters  # noqa: F401

    return sorted(_REGISTRY)


def iter_images(root: Path, skip: Callable[[Path], bool] | None = None) -> list[Path]:
    """Image files under root, sorted, without OS junk (.DS_Store, Thumbs.db, __MACOSX/, hidden files)."""
    out = []
    for p in root.rglob("*"):
        rel_parts = p.relative_to(root).parts
        if any(part == "__MACOSX" or part.startswith(".") for part in rel_parts):
            continue
        if p.name.lower() in JUNK_NAMES or p.suffix.lower() not in IMAGE_SUFFIXES or not p.is_file():
            continue
        if skip is not None and skip(p):
            continue
        out.append(p)
    return sorted(out)


def require_root(root: Path) -> Path:
    if not root.exists():
        raise DataError(f"--root: {root} does not exist")
    if not root.is_dir():
        raise DataError(f"--root: {root} is not a folder")
    return root
