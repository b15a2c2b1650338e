"""derm7pt, the seven-point checklist set (Kawahara et al. 2019), as a pretraining corpus.

Accepted layout (--root is `release_v0/` or a folder above it): `meta/meta.csv` with `case_num`,
`diagnosis`, `clinic` and `derm` (image paths relative to `images/`), and the official split by case in
`meta/train_indexes.csv`, `meta/valid_indexes.csv`, `meta/test_indexes.csv` (column `indexes`: 0-based row
positions in meta.csv, as the publisher's own loader reads them with `iloc`). Each case gives two records, the
clinical and the dermoscopic photo, grouped by `case_num`. Cases of test_indexes get split="test" so the
official test cases are never trained on; valid cases are left to the engine (`derm7pt_split` extra keeps
the official name). The diagnosis goes to the `publisher_label` extra; `label` stays empty (corpus).
"""

from __future__ import annotations

from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    find_named,
    iter_images,
    read_table,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError

SPLIT_FILES = {"train": "train_indexes.csv", "valid": "valid_indexes.csv", "test": "test_indexes.csv"}
IMAGE_COLUMNS = ("clinic", "derm")


@register_adapter
class Derm7pt(Adapter):
    name = "derm7pt"
    role = "corpus"
    description = (
        "derm7pt clinical + dermoscopic photo per case (grouped by case); official test cases kept out"
    )
    group_key = "case_num"
    has_official_test = True
    label_columns = ()

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        metas = [p for p in find_named(root, ("meta.csv",)) if p.parent.name == "meta"]
        if not metas:
            raise DataError(
                f"--root: {root} does not look like derm7pt: expected meta/meta.csv (case_num,diagnosis,...,clinic,derm) "
                "and images/"
            )
        meta_path = metas[0]
        release = meta_path.parent.parent
        images_dir = release / "images"
        header, rows = read_table(meta_path)
        for col in ("case_num", *IMAGE_COLUMNS):
            if col not in header:
                raise DataError(
                    f"{meta_path}: missing column {col!r}, expected case_num,diagnosis,...,clinic,derm,..."
                )
        label_col = options.label_column or "diagnosis"
        if options.label_column and label_col not in header:
            raise UsageError(
                f"--label-column: {label_col!r} is not a column of {meta_path} (columns: {', '.join(header)})"
            )

        notes = []
        official = self._official_split(meta_path.parent, len(rows), notes)
        records, missing = [], []
        for pos, row in enumerate(rows):
            case = row.get("case_num", "")
            split_name = official.get(pos, "")
            for kind in IMAGE_COLUMNS:
                listed = row.get(kind, "")
                if not listed:
                    continue
                path = images_dir / listed
                if not path.is_file():
                    missing.append(listed)
                    continue
                records.append(
                    Record(
                        path=path,
                        group=case,
                        split="test" if split_name == "test" else "",
                        image_id=listed,
                        extras={
                            "publisher_label": row.get(label_col, ""),
                            "modality": "clinical" if kind == "clinic" else "dermoscopic",
                            "derm7pt_split": split_name,
                        },
                    )
                )
        if not records and missing:
            raise DataError(
                f"--root: {root}: none of the {len(missing)} images listed in {meta_path.name} was found "
                f"(expected e.g. images/{missing[0]})"
            )
        listed_paths = {r.path.resolve() for r in records}
        unlisted = [
            relative_name(p, root)
            for p in (iter_images(images_dir) if images_dir.is_dir() else [])
            if p.resolve() not in listed_paths
        ]
        if missing:
            notes.append(f"{len(missing)} image paths of meta.csv have no file and were dropped")
        variant = f"derm7pt release (meta/meta.csv, {len(rows)} cases)"
        variant += (
            "; official split by case, test_indexes kept as test" if official else "; no official split files"
        )
        return AdapterResult(records, variant, missing, unlisted, notes)

    def _official_split(self, meta_dir: Path, n_rows: int, notes: list[str]) -> dict[int, str]:
        """Row position -> train | valid | test from the publisher's index files (empty when absent)."""
        split: dict[int, str] = {}
        for name, file in SPLIT_FILES.items():
            path = meta_dir / file
            if not path.is_file():
                continue
            header, rows = read_table(path)
            if "indexes" not in header:
                raise DataError(
                    f"{path}: missing column 'indexes', expected one 0-based row number of meta.csv per line"
                )
            for row in rows:
                try:
                    pos = int(row["indexes"])
                except ValueError as exc:
                    raise DataError(f"{path}: {row['indexes']!r} is not a row number of meta.csv") from exc
                if not 0 <= pos < n_rows:
                    raise DataError(f"{path}: row {pos} is outside meta.csv (0..{n_rows - 1})")
                split[pos] = name
        if split and "test" not in split.values():
            notes.append("official split files found but test_indexes.csv is missing: no test cases fixed")
        if split:
            notes.append("official derm7pt test cases (meta/test_indexes.csv) are marked split=test")
        return split
