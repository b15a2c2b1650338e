"""The ISIC archive as a pretraining corpus (images `ISIC_xxxxxxx.jpg`, labels unused).

Accepted layouts: the folder `isic image download` (isic-cli) writes, i.e. the images plus a metadata CSV
with an `isic_id` column (any `*.csv` up to three folders below --root that has one), or a bare folder of
`ISIC_*.jpg`. The publisher's diagnosis (`diagnosis`, else the most specific of `diagnosis_5`..`diagnosis_1`)
is kept as the `publisher_label` extra; `label` stays empty. Images of the HAM10000 and ISIC 2018 test sets
are in the archive too: ingest this corpus with `--exclude` on the HAM10000 manifest, as Gröger et al. did.
"""

from __future__ import annotations

import re
from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    index_images,
    iter_images,
    read_table,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError

# ISIC 2019 ships some images as ISIC_0000000_downsampled.jpg: the same archive id.
_ISIC_FILE = re.compile(r"^(ISIC_\d{7})(?:_downsampled)?$")
DIAGNOSIS_COLUMNS = ("diagnosis", "diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2", "diagnosis_1")
EXTRA_COLUMNS = ("image_type", "patient_id", "attribution", "copyright_license")


def isic_id_of(path: Path) -> str:
    """The archive id an image file is named for (ISIC_0024306.jpg, ISIC_0000000_downsampled.jpg), else ""."""
    match = _ISIC_FILE.match(path.stem)
    return match.group(1) if match else ""


@register_adapter
class IsicArchive(Adapter):
    name = "isic-archive"
    role = "corpus"
    description = "ISIC archive images ISIC_xxxxxxx.jpg (+ isic-cli metadata.csv); pretraining corpus"
    group_key = "lesion_id"
    has_official_test = False
    label_columns = ()

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        csvs = [p for p in root.rglob("*.csv") if _depth(p, root) <= 4 and "__MACOSX" not in p.parts]
        metas = [p for p in sorted(csvs) if "isic_id" in read_table(p)[0]]
        images = iter_images(root)
        index, dups = index_images([p for p in images if isic_id_of(p)], key=isic_id_of)
        if not metas and not index:
            raise DataError(
                f"--root: {root} does not look like isic-archive: expected ISIC_xxxxxxx.jpg images "
                "and (optionally) a metadata CSV with an isic_id column"
            )
        notes = []
        if dups:
            notes.append(
                f"{len(dups)} ISIC ids appear twice on disk (first copy used), e.g. {relative_name(dups[0], root)}"
            )
        records: list[Record] = []
        missing: list[str] = []
        if metas:
            meta_rows: list[dict[str, str]] = []
            header: list[str] = []
            for meta in metas:
                h, rows = read_table(meta)
                header += [c for c in h if c not in header]
                meta_rows += rows
            label_col = self._label_column(options, header, metas[0])
            seen: set[str] = set()
            for row in meta_rows:
                isic_id = row.get("isic_id", "")
                if not isic_id or isic_id in seen:
                    continue
                seen.add(isic_id)
                path = index.get(isic_id)
                if path is None:
                    missing.append(isic_id)
                    continue
                extras = {"publisher_label": row.get(label_col, "") if label_col else ""}
                extras.update({c: row.get(c, "") for c in EXTRA_COLUMNS})
                records.append(
                    Record(path=path, group=row.get("lesion_id", ""), image_id=isic_id, extras=extras)
                )
            names = ", ".join(relative_name(m, root) for m in metas)
            variant = f"ISIC archive images with isic-cli metadata ({names})"
            if missing:
                notes.append(f"{len(missing)} metadata rows have no image and were dropped")
        else:
            if options.label_column:
                raise UsageError(
                    f"--label-column: {root} has no metadata CSV (isic_id column) to take labels from"
                )
            for isic_id, path in index.items():
                records.append(Record(path=path, image_id=isic_id, extras={"publisher_label": ""}))
            variant = "bare folder of ISIC_*.jpg images (no metadata CSV)"
        if not records and missing:
            raise DataError(
                f"--root: {root}: none of the {len(missing)} images listed in {metas[0].name} was found "
                f"(expected e.g. {missing[0]}.jpg)"
            )
        listed = {r.path for r in records}
        unlisted = [relative_name(p, root) for p in images if p not in listed and p not in dups]
        if unlisted:
            notes.append(
                f"{len(unlisted)} images are not listed (no metadata row, or not named ISIC_xxxxxxx)"
            )
        notes.append("corpus: labels unused; exclude HAM10000 / ISIC 2018 test images with --exclude")
        return AdapterResult(records, variant, missing, unlisted, notes)

    def _label_column(self, options: AdapterOptions, header: list[str], where: Path) -> str | None:
        if options.label_column:
            if options.label_column not in header:
                raise UsageError(
                    f"--label-column: {options.label_column!r} is not a column of {where} (columns: {', '.join(header)})"
                )
            return options.label_column
        return next((c for c in DIAGNOSIS_COLUMNS if c in header), None)


def _depth(path: Path, root: Path) -> int:
    return len(path.relative_to(root).parts)
