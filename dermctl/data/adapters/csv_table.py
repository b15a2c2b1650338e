"""`csv` adapter: a CSV table with an image path column, a label column and optional group and id columns.

Paths are relative to the CSV's own folder (absolute paths are kept). `--root` is the CSV file itself or a
folder holding exactly one CSV (or one named metadata.csv / labels.csv).

Columns are found by name, case-insensitively (`Label`, `LABEL` and `label` are one column), among the
aliases below, the first alias present winning; `--label-column` / `--group-column` name one explicitly
(also case-insensitively). A table without a label column is refused unless `--unlabelled` (or
`--role corpus`) says it is a pretraining corpus: a misspelt label column must never turn a task into an
unlabelled corpus without a word.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from dermctl.data.adapters.base import (
    Adapter,
    AdapterOptions,
    AdapterResult,
    Record,
    iter_images,
    register_adapter,
)
from dermctl.errors import DataError, UsageError

PATH_COLUMNS = ("path", "image_path", "file", "filename", "image", "img_path")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "diagnosis", "dx", "target")
# The coarsest unit first: a patient's lesions, and a lesion's photos, must stay in one split.
GROUP_COLUMNS = ("group", "patient_id", "patient", "subject_id", "subject", "lesion_id", "lesion", "case_id")
ID_COLUMNS = ("image_id", "id", "image_name", "isic_id")
PREFERRED_NAMES = ("metadata.csv", "labels.csv", "manifest.csv")
ROLES = ("task", "corpus")


@register_adapter
class CsvTableAdapter(Adapter):
    """A generic table: one row per image; `--label-column` and `--group-column` pick the columns."""

    name = "csv"
    role = "task"
    description = "a CSV with a path column and optional label / group columns (paths relative to the CSV)"

    def read(self, root: Path, options: AdapterOptions) -> AdapterResult:
        csv_path = find_csv(root)
        if options.role is not None and options.role not in ROLES:
            raise UsageError(f"--role: {options.role!r} is not one of {', '.join(ROLES)}")
        try:
            text = csv_path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--root: cannot read {csv_path}: {exc}") from exc
        reader = csv.DictReader(io.StringIO(text))
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        if not header:
            raise DataError(f"--root: {csv_path} is empty (expected a header row with a path column)")
        path_col = find_column(header, PATH_COLUMNS)
        if path_col is None:
            raise DataError(
                f"--root: {csv_path} has no image path column (expected one of {', '.join(PATH_COLUMNS)}; "
                f"columns: {', '.join(header)})"
            )
        label_col = self._label_column(options, header, csv_path)
        group_col = _named_or_found("--group-column", options.group_column, header, GROUP_COLUMNS, csv_path)
        id_col = find_column(header, ID_COLUMNS)
        split_col = find_column(header, ("split",))
        used = {path_col, label_col, group_col, id_col, split_col}
        reserved = {"label", "split", "group", "path"}  # manifest columns: never carried as extras
        extra_cols = [c for c in header if c not in used and c.lower() not in reserved]
        base = csv_path.parent
        records: list[Record] = []
        missing: list[str] = []
        listed: set[Path] = set()
        for lineno, raw in enumerate(reader, start=2):
            rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            rel = rec.get(path_col, "")
            if not rel:
                raise DataError(f"{csv_path}: line {lineno}: empty {path_col!r}")
            p = Path(rel).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                missing.append(rel)
                continue
            listed.add(p.resolve())
            split = rec.get(split_col, "").lower() if split_col else ""
            records.append(
                Record(
                    path=p,
                    label=rec.get(label_col, "") if label_col else "",
                    group=rec.get(group_col, "") if group_col else "",
                    split="test" if split == "test" else "",
                    image_id=rec.get(id_col, "") if id_col else "",
                    extras={c: rec.get(c, "") for c in extra_cols},
                )
            )
        if not records:
            raise DataError(_none_found(csv_path, path_col, missing))
        unlisted = [str(p) for p in iter_images(base) if p.resolve() not in listed]
        variant = f"table {csv_path.name} (path column {path_col!r}"
        variant += f", label column {label_col!r}" if label_col else ", no labels"
        variant += f", group column {group_col!r})" if group_col else ")"
        role = options.role or ("task" if label_col else "corpus")
        if role == "task" and not label_col:
            raise UsageError(f"--role: task needs labels but {csv_path} is read without a label column")
        return AdapterResult(
            records=records, variant=variant, missing_images=missing, unlisted_images=unlisted, role=role
        )

    def _label_column(self, options: AdapterOptions, header: list[str], csv_path: Path) -> str | None:
        if options.unlabelled:
            return None
        found = _named_or_found("--label-column", options.label_column, header, LABEL_COLUMNS, csv_path)
        if found is None and options.role != "corpus":
            raise DataError(
                f"--root: {csv_path} has no label column (expected one of {', '.join(LABEL_COLUMNS)}, in any "
                f"case; columns: {', '.join(header)}): name it with --label-column, or pass --unlabelled to "
                "ingest the images as an unlabelled pretraining corpus"
            )
        return found


def find_column(header: list[str], aliases: tuple[str, ...]) -> str | None:
    """The header's name of the first alias present: spelled exactly, else in any case (`Label`)."""
    by_lower: dict[str, str] = {}
    for name in header:
        by_lower.setdefault(name.lower(), name)
    for alias in aliases:
        if alias in header:
            return alias
        if alias.lower() in by_lower:
            return by_lower[alias.lower()]
    return None


def _named_or_found(
    option: str, named: str | None, header: list[str], aliases: tuple[str, ...], csv_path: Path
) -> str | None:
    """The column `option` names (in any case; an unknown one is an error), else the first alias present."""
    if named is None:
        return find_column(header, aliases)
    found = find_column(header, (named,))
    if found is None:
        raise UsageError(f"{option}: {named!r} is not a column of {csv_path} (columns: {', '.join(header)})")
    return found


def _none_found(csv_path: Path, path_col: str, missing: list[str]) -> str:
    """The one line for a table none of whose images exists: where relative paths were looked for."""
    if not missing:
        return f"--root: {csv_path} lists no images (a header row and no data rows)"
    first = Path(missing[0]).expanduser()
    looked = first if first.is_absolute() else csv_path.parent / first
    return (
        f"--root: none of the {len(missing)} images listed in {csv_path} was found (expected e.g. {looked}): "
        f"relative paths in its {path_col!r} column resolve against the CSV's folder {csv_path.parent}, "
        "not the current folder"
    )


def find_csv(root: Path) -> Path:
    """The CSV given as --root, or the one CSV in the --root folder."""
    if not root.exists():
        raise DataError(f"--root: {root} does not exist")
    if root.is_file():
        if root.suffix.lower() != ".csv":
            raise DataError(
                f"--root: {root} is not a CSV file (expected a .csv table or a folder holding one)"
            )
        return root
    found = sorted(p for p in root.glob("*.csv") if not p.name.startswith("."))
    if len(found) == 1:
        return found[0]
    for name in PREFERRED_NAMES:
        if (root / name).is_file():
            return root / name
    if not found:
        raise DataError(f"--root: {root} holds no CSV table (expected e.g. {root / 'metadata.csv'})")
    raise DataError(
        f"--root: {root} holds {len(found)} CSV files ({', '.join(p.name for p in found[:5])}); "
        f"pass the table itself as --root"
    )
