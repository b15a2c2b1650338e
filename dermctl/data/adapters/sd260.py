"""SD-198 / SD-260 (Sun et al. 2016): clinical photos in one folder per condition, as a pretraining corpus.

Accepted layout: `<condition name>/*.jpg` directly under --root, or under a single wrapper folder (e.g.
`SD-260/images/<condition>/`); single-child folders are descended until the class folders appear. Images
in nested folders below a condition folder belong to it. The condition name goes to the `publisher_label`
extra; `label` stays empty (corpus). No groups, no test split.
"""

from __future__ import annotations

from pathlib import Path

from dermctl.data.adapters.base import (
    IMAGE_SUFFIXES,
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    iter_images,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError


@register_adapter
class Sd260(Adapter):
    name = "sd260"
    role = "corpus"
    description = "SD-198 / SD-260 clinical photos, one folder per condition; pretraining corpus"
    label_columns = ()

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        if options.label_column:
            raise UsageError("--label-column: sd260 has no label columns (its classes are folder names)")
        base = root
        # Descend through wrappers (e.g. SD-198/images/) while exactly one sub-folder holds images; sibling
        # folders without images (split lists) do not stop the descent.
        while not any(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in base.iterdir()):
            with_images = [d for d in _subdirs(base) if iter_images(d)]
            if len(with_images) != 1:
                break
            base = with_images[0]
        tables = sorted(p.name for p in base.glob("*.csv"))
        if tables:
            # A metadata table beside the folders means another published layout (e.g. HAM10000 parts).
            raise DataError(
                f"--root: {root} does not look like sd260: expected only condition folders, found {tables[0]} "
                "(use the adapter of that data set, or --dataset csv)"
            )
        classes = [d for d in _subdirs(base) if iter_images(d)]
        if len(classes) < 2:
            raise DataError(
                f"--root: {root} does not look like sd260: expected one folder of images per condition "
                f"(<condition>/*.jpg), found {len(classes)} such folder(s)"
            )
        records = [
            Record(path=p, extras={"publisher_label": d.name}) for d in classes for p in iter_images(d)
        ]
        listed = {r.path for r in records}
        unlisted = [relative_name(p, root) for p in iter_images(base) if p not in listed]
        name = (
            "SD-198"
            if len(classes) == 198 or "198" in str(base)
            else "SD-260"
            if len(classes) == 260 or "260" in str(base)
            else "SD-198/SD-260-style"
        )
        variant = f"{name}: one folder per condition ({len(classes)} conditions under {relative_name(base, root) if base != root else base.name})"
        notes = ["corpus: condition folder names are kept as publisher_label only"]
        if unlisted:
            notes.append(f"{len(unlisted)} images lie outside any condition folder and were not listed")
        return AdapterResult(records, variant, [], unlisted, notes)


def _subdirs(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_dir() and p.name != "__MACOSX" and not p.name.startswith(".")
    )
