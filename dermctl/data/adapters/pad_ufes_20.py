"""PAD-UFES-20 (Pacheco et al. 2020): smartphone clinical photos, 6 classes, grouped by patient.

Accepted layouts: `metadata.csv` (the publisher's 26 columns, including `img_id`, `diagnostic`,
`patient_id` and the misspelt `fitspatrick`) anywhere up to three folders below --root, with the PNG images
in `images/imgs_part_1..3/` or flat in `images/` (found by file name = `img_id`). There is no official test
split: the engine makes a seeded split grouped by `patient_id`, as a patient has several lesions and photos.
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
from dermctl.data.adapters.fitzpatrick17k import skin_type
from dermctl.errors import DataError

EXTRA_COLUMNS = ("lesion_id", "diagnostic", "age", "gender", "region", "biopsed")


@register_adapter
class PadUfes20(Adapter):
    name = "pad-ufes-20"
    role = "task"
    description = "PAD-UFES-20 smartphone photos, 6 classes (ACK BCC MEL NEV SCC SEK), grouped by patient_id"
    group_key = "patient_id"
    has_official_test = False
    label_columns = ("diagnostic", "biopsed", "region", "gender")

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        candidates = [p for p in find_named(root, ("metadata.csv",)) if "img_id" in read_table(p)[0]]
        if not candidates:
            raise DataError(
                f"--root: {root} does not look like pad-ufes-20: expected metadata.csv with columns "
                "patient_id,...,diagnostic,...,img_id and images/imgs_part_1..3/PAT_*.png"
            )
        meta_path = candidates[0]
        header, rows = read_table(meta_path)
        label_col = self.choose_label_column(options, header, meta_path)
        notes = []
        index, dups = index_images(iter_images(root), key=lambda p: p.name)
        if dups:
            notes.append(
                f"{len(dups)} image names appear twice on disk (first copy used), e.g. {relative_name(dups[0], root)}"
            )

        records, missing, seen, dirs = [], [], set(), set()
        for row in rows:
            img_id = row.get("img_id", "")
            if not img_id or img_id in seen:
                continue
            seen.add(img_id)
            path = index.get(img_id)
            if path is None:
                missing.append(img_id)
                continue
            dirs.add(path.parent.name)
            extras = {"skin_type": skin_type(row.get("fitspatrick", ""))}
            extras.update({c: row.get(c, "") for c in EXTRA_COLUMNS})
            records.append(
                Record(
                    path=path,
                    label=row.get(label_col, ""),
                    group=row.get("patient_id", ""),
                    image_id=img_id,
                    extras=extras,
                )
            )
        if not records and missing:
            raise DataError(
                f"--root: {root}: none of the {len(missing)} images listed in {meta_path.name} was found "
                f"(expected e.g. images/imgs_part_1/{missing[0]})"
            )
        listed = {r.path for r in records}
        unlisted = [relative_name(p, root) for p in index.values() if p not in listed]
        if any(d.startswith("imgs_part_") for d in dirs):
            layout = f"images in {', '.join(sorted(d for d in dirs if d.startswith('imgs_part_')))}"
        elif dirs:
            layout = f"images flat in {', '.join(sorted(dirs))}/"
        else:
            layout = "no images found"
        if missing:
            notes.append(f"{len(missing)} metadata rows have no image and were dropped")
        unlabelled = [r for r in records if not r.label]
        if unlabelled:
            notes.append(f"{len(unlabelled)} rows have an empty {label_col!r} and were dropped")
            records = [r for r in records if r.label]
        notes.append("no official test split: split grouped by patient_id")
        return AdapterResult(
            records, f"PAD-UFES-20 metadata {meta_path.name}; {layout}", missing, unlisted, notes
        )
