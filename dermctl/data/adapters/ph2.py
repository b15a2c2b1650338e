"""PH2 (Mendonça et al. 2013): 200 dermoscopic images, as a pretraining corpus.

Accepted layout: `PH2Dataset/PH2 Dataset images/IMDxxx/IMDxxx_Dermoscopic_Image/IMDxxx.bmp` (--root anywhere
above the case folders). Only the dermoscopic image of each case is read: the `IMDxxx_lesion/` and
`IMDxxx_roi/` masks are never images to train on. When `PH2_dataset.txt` is present its "Clinical
Diagnosis" code (0 common nevus, 1 atypical nevus, 2 melanoma) goes to the `publisher_label` extra; the
`.xlsx` copy is not read. `label` stays empty (corpus). No groups, no test split.
"""

from __future__ import annotations

import re
from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    find_named,
    iter_images,
    register_adapter,
    relative_name,
    require_root,
)
from dermctl.errors import DataError, UsageError

CLINICAL_DIAGNOSIS = {"0": "common_nevus", "1": "atypical_nevus", "2": "melanoma"}
_CASE = re.compile(r"^IMD\d+$")


@register_adapter
class Ph2(Adapter):
    name = "ph2"
    role = "corpus"
    description = (
        "PH2 dermoscopic images (IMDxxx_Dermoscopic_Image/IMDxxx.bmp, masks skipped); pretraining corpus"
    )
    label_columns = ()

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        if options.label_column:
            raise UsageError(
                "--label-column: ph2 has no label columns to choose from (labels come from PH2_dataset.txt)"
            )
        images = [p for p in iter_images(root) if _is_dermoscopic(p)]
        if not images:
            raise DataError(
                f"--root: {root} does not look like ph2: expected PH2 Dataset images/IMDxxx/"
                "IMDxxx_Dermoscopic_Image/IMDxxx.bmp"
            )
        notes = ["only IMDxxx_Dermoscopic_Image files are read; lesion/roi masks are skipped"]
        txts = find_named(root, ("PH2_dataset.txt",))
        labels = read_diagnoses(txts[0]) if txts else {}
        records = [
            Record(path=p, image_id=p.stem, extras={"publisher_label": labels.get(p.stem, "")})
            for p in images
        ]
        missing: list[str] = []
        if txts:
            on_disk = {p.stem for p in images}
            missing = sorted(case for case in labels if case not in on_disk)
            # The case folders, not the table, define PH2's images: a case the table lacks is still read.
            unlabelled = [p.stem for p in images if p.stem not in labels]
            if unlabelled:
                notes.append(
                    f"{len(unlabelled)} cases have no row in PH2_dataset.txt (no publisher_label), e.g. {unlabelled[0]}"
                )
            variant = f"PH2 case folders with {relative_name(txts[0], root)} ({len(labels)} cases listed)"
        else:
            variant = "PH2 case folders without PH2_dataset.txt (no publisher labels)"
        return AdapterResult(records, variant, missing, [], notes)


def _is_dermoscopic(path: Path) -> bool:
    case = path.stem
    return bool(_CASE.match(case)) and path.parent.name == f"{case}_Dermoscopic_Image"


def read_diagnoses(path: Path) -> dict[str, str]:
    """Case name -> clinical diagnosis from the `||`-separated PH2_dataset.txt table."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    name_col, diag_col = 1, 3
    out: dict[str, str] = {}
    for line in lines:
        cells = [c.strip() for c in line.split("||")]
        if "Name" in cells and "Clinical Diagnosis" in cells:
            name_col, diag_col = cells.index("Name"), cells.index("Clinical Diagnosis")
            continue
        if len(cells) > max(name_col, diag_col) and _CASE.match(cells[name_col]):
            out[cells[name_col]] = CLINICAL_DIAGNOSIS.get(cells[diag_col], cells[diag_col])
    return out
