"""HAM10000 (Tschandl et al. 2018) with the ISIC 2018 Task 3 test set as its official test split.

Accepted layouts (any depth up to three folders below --root):
- metadata `HAM10000_metadata.csv`, `HAM10000_metadata` (no extension) or `HAM10000_metadata.tab`
  (dataverse tab-separated copy), columns `lesion_id,image_id,dx,dx_type,age,sex,localization[,dataset]`;
- or the ISIC 2018 Task 3 training release of the same images: one-hot
  `ISIC2018_Task3_Training_GroundTruth.csv` with lesion ids in `ISIC2018_Task3_Training_LesionGroupings.csv`
  (`image,lesion_id,diagnosis_confirm_type`) and images in `ISIC2018_Task3_Training_Input/`;
- images `ISIC_xxxxxxx.jpg` in `HAM10000_images_part_1/` + `HAM10000_images_part_2/`, or merged in one folder;
- optional test set: `ISIC2018_Task3_Test_GroundTruth.csv` either one-hot (`image,MEL,NV,...,VASC`, maybe
  with extra columns such as `score_weight`) or in the metadata format with a `dx` column (dataverse), and
  its images (`ISIC2018_Task3_Test_Images/` or `ISIC2018_Task3_Test_Input/`).

Labels are `dx` (akiec, bcc, bkl, df, mel, nv, vasc); the group is `lesion_id`, so every image of one lesion
stays on one side of a split (Gröger et al. split HAM10000 by lesion). Test rows get split="test".
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

METADATA_NAMES = ("HAM10000_metadata.csv", "HAM10000_metadata", "HAM10000_metadata.tab")
TEST_TRUTH_NAMES = (
    "ISIC2018_Task3_Test_GroundTruth.csv",
    "ISIC2018_Task3_Test_GroundTruth",
    "ISIC2018_Task3_Test_GroundTruth.tab",
)
# The ISIC 2018 challenge's own release of the HAM10000 images: one-hot labels, lesion ids in a second file.
TRAIN_TRUTH_NAMES = ("ISIC2018_Task3_Training_GroundTruth.csv", "ISIC2018_Task3_Training_GroundTruth")
LESION_GROUPING_NAMES = ("ISIC2018_Task3_Training_LesionGroupings.csv",)
CONFIRM_TYPES = {
    "histopathology": "histo",
    "serial imaging showing no change": "follow_up",
    "single image expert consensus": "consensus",
    "confocal microscopy with consensus dermoscopy": "confocal",
}
# The challenge's one-hot columns, in the challenge's order, and the HAM10000 `dx` code of each.
ONE_HOT = {"MEL": "mel", "NV": "nv", "BCC": "bcc", "AKIEC": "akiec", "BKL": "bkl", "DF": "df", "VASC": "vasc"}
EXTRA_COLUMNS = ("dx_type", "age", "sex", "localization", "dataset")


@register_adapter
class Ham10000(Adapter):
    name = "ham10000"
    role = "task"
    description = "HAM10000 dermoscopy, 7 classes, grouped by lesion_id; ISIC 2018 Task 3 test set as test"
    group_key = "lesion_id"
    has_official_test = True
    label_columns = ("dx", "dx_type", "localization", "sex")

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        root = require_root(root)
        metas = find_named(root, METADATA_NAMES)
        notes = []
        if metas:
            meta_path = metas[0]
            if len(metas) > 1:
                notes.append(f"several HAM10000 metadata files found; using {relative_name(meta_path, root)}")
            header, meta_rows = read_table(meta_path)
            for col in ("lesion_id", "image_id"):
                if col not in header:
                    raise DataError(
                        f"{meta_path}: missing column {col!r}, expected lesion_id,image_id,dx,dx_type,age,sex,localization"
                    )
            source = f"HAM10000 metadata {meta_path.name}"
        else:
            training = find_named(root, TRAIN_TRUTH_NAMES)
            if not training:
                raise DataError(
                    f"--root: {root} does not look like ham10000: expected HAM10000_metadata.csv "
                    "(or HAM10000_metadata) with HAM10000_images_part_1/part_2"
                )
            meta_path = training[0]
            header, meta_rows = _challenge_training_rows(meta_path, root, notes)
            source = f"ISIC 2018 Task 3 training release ({meta_path.name})"
        label_col = self.choose_label_column(options, header, meta_path)

        index, dups = index_images(iter_images(root), key=lambda p: p.stem)
        if dups:
            notes.append(
                f"{len(dups)} image ids appear twice on disk (first copy used), e.g. {relative_name(dups[0], root)}"
            )

        records: list[Record] = []
        missing: list[str] = []
        seen: set[str] = set()
        used_dirs: set[Path] = set()
        for row in meta_rows:
            image_id = row.get("image_id", "")
            if not image_id or image_id in seen:
                continue
            seen.add(image_id)
            path = index.get(image_id)
            if path is None:
                missing.append(image_id)
                continue
            used_dirs.add(path.parent)
            records.append(
                Record(
                    path=path,
                    label=_label(row.get(label_col, ""), label_col),
                    group=row.get("lesion_id", ""),
                    image_id=image_id,
                    extras={c: row.get(c, "") for c in EXTRA_COLUMNS},
                )
            )
        variant = f"{source}; images {_image_layout(used_dirs)}"

        truths = find_named(root, TEST_TRUTH_NAMES)
        if truths:
            test_records, test_missing, test_variant = self._read_test(
                truths[0], index, seen, label_col, root
            )
            records.extend(test_records)
            missing.extend(test_missing)
            variant += f"; ISIC 2018 Task 3 test set, {test_variant}"
        else:
            variant += "; no ISIC 2018 Task 3 test ground truth found (the engine will split off a test set)"

        if not records and missing:
            raise DataError(
                f"--root: {root}: none of the {len(missing)} images listed in {meta_path.name} was found "
                f"(expected e.g. HAM10000_images_part_1/{missing[0]}.jpg)"
            )
        listed = {r.path for r in records}
        # Lesion masks shipped beside the images (ISIC_0024306_segmentation.png) are not unlisted images.
        unlisted = [
            relative_name(p, root)
            for p in index.values()
            if p not in listed and not p.stem.endswith("_segmentation")
        ]
        if missing:
            notes.append(f"{len(missing)} metadata rows have no image and were dropped")
        unlabelled = [r for r in records if not r.label]
        if unlabelled:
            notes.append(f"{len(unlabelled)} rows have an empty {label_col!r} and were dropped")
            records = [r for r in records if r.label]
        return AdapterResult(records, variant, missing, unlisted, notes)

    def _read_test(
        self, truth: Path, index: dict[str, Path], seen: set[str], label_col: str, root: Path
    ) -> tuple[list[Record], list[str], str]:
        header, rows = read_table(truth)
        one_hot = "image" in header and all(c in header for c in ONE_HOT)
        if one_hot:
            if label_col != "dx":
                raise UsageError(
                    f"--label-column: {label_col!r} is not a column of {truth} (one-hot ground truth has only dx)"
                )
            kind = f"one-hot challenge ground truth ({truth.name})"
        elif "image_id" in header and "dx" in header:
            self.choose_label_column(AdapterOptions(label_column=label_col), header, truth)
            kind = f"metadata format with dx column ({truth.name})"
        else:
            raise DataError(
                f"{truth}: unknown ground-truth format, expected columns image,MEL,NV,BCC,AKIEC,BKL,DF,VASC "
                "or lesion_id,image_id,dx,..."
            )
        records, missing = [], []
        for row in rows:
            image_id = row.get("image" if one_hot else "image_id", "")
            if not image_id or image_id in seen:
                continue
            seen.add(image_id)
            label = _one_hot_label(row, truth) if one_hot else _label(row.get(label_col, ""), label_col)
            path = index.get(image_id)
            if path is None:
                missing.append(image_id)
                continue
            records.append(
                Record(
                    path=path,
                    label=label,
                    group="" if one_hot else row.get("lesion_id", ""),
                    split="test",
                    image_id=image_id,
                    extras={c: ("" if one_hot else row.get(c, "")) for c in EXTRA_COLUMNS},
                )
            )
        return records, missing, kind


def _challenge_training_rows(
    truth: Path, root: Path, notes: list[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """ISIC2018_Task3_Training_GroundTruth.csv (+ LesionGroupings) as rows in the HAM10000 metadata format."""
    header, rows = read_table(truth)
    if "image" not in header or not all(c in header for c in ONE_HOT):
        raise DataError(f"{truth}: expected columns image,MEL,NV,BCC,AKIEC,BKL,DF,VASC")
    groupings: dict[str, dict[str, str]] = {}
    found = find_named(root, LESION_GROUPING_NAMES)
    if found:
        groupings = {r.get("image", ""): r for r in read_table(found[0])[1]}
    else:
        notes.append(
            "ISIC2018_Task3_Training_LesionGroupings.csv not found: no lesion ids, so images of one lesion "
            "may land on both sides of a split"
        )
    out = []
    for row in rows:
        image_id = row.get("image", "")
        if not image_id:
            continue
        group = groupings.get(image_id, {})
        confirm = group.get("diagnosis_confirm_type", "")
        out.append(
            {
                "lesion_id": group.get("lesion_id", ""),
                "image_id": image_id,
                "dx": _one_hot_label(row, truth),
                "dx_type": CONFIRM_TYPES.get(confirm, confirm),
            }
        )
    return ["lesion_id", "image_id", "dx", "dx_type"], out


def _label(value: str, column: str) -> str:
    # dx codes are lower case in every release; normalise stray capitals from re-saved copies.
    return value.lower() if column == "dx" else value


def _one_hot_label(row: dict[str, str], where: Path) -> str:
    """The single class whose one-hot value is 1 (values are `1.0`/`0.0`, sometimes `1`/`0`)."""
    hot = []
    for col, code in ONE_HOT.items():
        try:
            if float(row.get(col, "0") or 0) >= 0.5:
                hot.append(code)
        except ValueError as exc:
            raise DataError(
                f"{where}: image {row.get('image')}: {col}={row.get(col)!r} is not 0 or 1"
            ) from exc
    if len(hot) != 1:
        raise DataError(
            f"{where}: image {row.get('image')}: expected exactly one class set to 1.0, found {len(hot)}"
        )
    return hot[0]


def _image_layout(dirs: set[Path]) -> str:
    names = sorted({d.name for d in dirs})
    if any(n.endswith("part_1") for n in names) and any(n.endswith("part_2") for n in names):
        return "in part_1/part_2 folders"
    if len(names) == 1 and names[0].startswith("ISIC2018_"):
        return f"in {names[0]}"
    if len(names) == 1:
        return f"merged in one folder ({names[0]})"
    if not names:
        return "not found"
    return f"in {len(names)} folders ({', '.join(names[:4])})"
