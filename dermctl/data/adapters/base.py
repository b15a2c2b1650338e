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
    role: str | None = None  # overrides Adapter.role when the layout decides it (e.g. folder without classes)


@dataclass
class AdapterOptions:
    """Options a user may pass to an adapter (`--label-column`, `--labels`)."""

    label_column: str | None = None
    granularity: str | None = None  # Fitzpatrick17k: three | nine | fine
    role: str | None = None  # "task" | "corpus"; None lets the adapter decide
    group_column: str | None = None  # generic csv adapter: the column holding the group (e.g. patient_id)
    unlabelled: bool = False  # ignore labels: read the images as a pretraining corpus


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


ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available to `dermctl ingest --dataset NAME`."""
    ADAPTERS[cls.name] = cls
    return cls


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


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a publisher's CSV (comma, or tab for dataverse `.tab` copies; BOM tolerated).

    Cells are stripped; a file that cannot be read or has no header raises a one-line DataError.
    """
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")  # some mirrors re-save metadata in Windows-1252
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    first = text.split("\n", 1)[0]
    delimiter = "\t" if first.count("\t") > first.count(",") else ","
    reader = csv.reader(text.splitlines(), delimiter=delimiter)
    header = [h.strip() for h in next(reader, [])]
    if not any(header):
        raise DataError(f"{path}: empty file, expected a CSV header line")
    rows = []
    for cells in reader:
        if not any(c.strip() for c in cells):
            continue
        rows.append({h: (cells[i].strip() if i < len(cells) else "") for i, h in enumerate(header)})
    return header, rows


def find_named(root: Path, names: tuple[str, ...], max_depth: int = 3) -> list[Path]:
    """Files under root (at most max_depth folders down) whose name is one of names, shallowest first."""
    wanted = {n.lower() for n in names}
    found = []
    for p in root.rglob("*"):
        rel = p.relative_to(root).parts
        if len(rel) > max_depth + 1 or any(part == "__MACOSX" or part.startswith(".") for part in rel):
            continue
        if p.name.lower() in wanted and p.is_file():
            found.append(p)
    return sorted(found, key=lambda p: (len(p.relative_to(root).parts), str(p)))


def index_images(images: list[Path], key: Callable[[Path], str]) -> tuple[dict[str, Path], list[Path]]:
    """Map key(path) -> path; a second file with the same key is returned in the duplicates list."""
    index: dict[str, Path] = {}
    duplicates = []
    for p in images:
        k = key(p)
        if k in index:
            duplicates.append(p)
        else:
            index[k] = p
    return index, duplicates


def relative_name(path: Path, root: Path) -> str:
    """path relative to root, with forward slashes (how missing/unlisted images are reported)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)
