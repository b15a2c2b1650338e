"""Fitzpatrick17k (Groh et al. 2021): clinical atlas photos labelled at three granularities, with skin type.

Accepted layouts: `fitzpatrick17k.csv` or the later `fitzpatrick17kv2.csv` (columns `md5hash,
fitzpatrick_scale,fitzpatrick_centaur,label,nine_partition_label,three_partition_label,qc,url,url_alphanum`)
up to three folders below --root, and the images the user fetched from `url`, saved as `<md5hash>.jpg`
(any image suffix), flat or in sub-folders. Rows whose image is absent (dead links) are listed in
`missing_images` and dropped. `--granularity three|nine|fine` picks `three_partition_label` (default; the
task of Gröger et al.), `nine_partition_label` or `label`. `fitzpatrick_scale` becomes the `skin_type` extra
(1-6, -1 unknown) so metrics can be reported per skin type. No official test split and no patient ids.
"""

from __future__ import annotations

from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    find_named,
    index_images,
    iter_images,
    read_table,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError

METADATA_NAMES = ("fitzpatrick17kv2.csv", "fitzpatrick17k.csv")
GRANULARITY_COLUMNS = {"three": "three_partition_label", "nine": "nine_partition_label", "fine": "label"}


@register_adapter
class Fitzpatrick17k(Adapter):
    name = "fitzpatrick17k"
    role = "task"
    description = "Fitzpatrick17k clinical photos; three/nine/114-class labels; skin type 1-6 per image"
    group_key = None
    has_official_test = False
    label_columns = ("three_partition_label", "nine_partition_label", "label")

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        label_col = self.label_column_for(options)
        metas = find_named(root, METADATA_NAMES)
        if not metas:
            raise DataError(
                f"--root: {root} does not look like fitzpatrick17k: expected fitzpatrick17k.csv "
                "(or fitzpatrick17kv2.csv) and <md5hash>.jpg images"
            )
        # Prefer the later release when a copy has both.
        meta_path = sorted(metas, key=lambda p: (p.name != "fitzpatrick17kv2.csv", len(p.parts)))[0]
        notes = []
        if len({p.name for p in metas}) > 1:
            notes.append(
                f"both fitzpatrick17k.csv and fitzpatrick17kv2.csv found; using {relative_name(meta_path, root)}"
            )
        header, rows = read_table(meta_path)
        if "md5hash" not in header:
            raise DataError(
                f"{meta_path}: missing column 'md5hash', expected md5hash,fitzpatrick_scale,...,label,..."
            )
        label_col = self.choose_label_column(AdapterOptions(label_column=label_col), header, meta_path)
        index, dups = index_images(iter_images(root), key=lambda p: p.stem.lower())
        if dups:
            notes.append(
                f"{len(dups)} md5 hashes appear twice on disk (first copy used), e.g. {relative_name(dups[0], root)}"
            )

        records, missing, seen, dup_rows = [], [], set(), 0
        for row in rows:
            md5 = row.get("md5hash", "").lower()
            if not md5:
                continue
            if md5 in seen:
                dup_rows += 1
                continue
            seen.add(md5)
            path = index.get(md5)
            if path is None:
                missing.append(md5)
                continue
            extras = {
                "skin_type": skin_type(row.get("fitzpatrick_scale", "")),
                "fitzpatrick_centaur": row.get("fitzpatrick_centaur", ""),
                "qc": row.get("qc", ""),
            }
            records.append(Record(path=path, label=row.get(label_col, ""), image_id=md5, extras=extras))
        if not records and missing:
            raise DataError(
                f"--root: {root}: none of the {len(missing)} images listed in {meta_path.name} was found "
                f"(expected e.g. {missing[0]}.jpg, fetched from the url column)"
            )
        listed = {r.path for r in records}
        unlisted = [relative_name(p, root) for p in index.values() if p not in listed]
        if dup_rows:
            notes.append(f"{dup_rows} rows repeat an md5hash already listed (first row used)")
        if missing:
            notes.append(f"{len(missing)} of {len(seen)} rows have no image (dead links?) and were dropped")
        unlabelled = [r for r in records if not r.label]
        if unlabelled:
            notes.append(f"{len(unlabelled)} rows have an empty {label_col!r} and were dropped")
            records = [r for r in records if r.label]
        layout = "flat" if len({r.path.parent for r in records}) <= 1 else "in sub-folders"
        variant = (
            f"Fitzpatrick17k metadata {meta_path.name}; images <md5hash>.jpg {layout}; labels {label_col}"
        )
        return AdapterResult(records, variant, missing, unlisted, notes)

    def label_column_for(self, options: AdapterOptions) -> str:
        """--label-column wins; otherwise --granularity (three by default) names the column."""
        if options.granularity is not None and options.granularity not in GRANULARITY_COLUMNS:
            raise UsageError(
                f"--granularity: {options.granularity!r} is not one of {', '.join(GRANULARITY_COLUMNS)}"
            )
        if options.label_column:
            return options.label_column
        return GRANULARITY_COLUMNS[options.granularity or "three"]


def skin_type(value: str) -> str:
    """Fitzpatrick skin type "1".."6"; "-1" (the publisher's unknown) for anything else."""
    try:
        number = int(float(value))
    except ValueError:
        return "-1"
    return str(number) if 1 <= number <= 6 else "-1"
