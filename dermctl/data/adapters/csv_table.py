"""`csv` adapter: a CSV table with an image path column and optional label and group columns.

Paths are relative to the CSV's own folder (absolute paths are kept). `--root` is the CSV file itself or a
folder holding exactly one CSV (or one named metadata.csv / labels.csv).
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
LABEL_COLUMNS = ("label", "class", "diagnosis", "dx", "target")
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
        path_col = next((c for c in PATH_COLUMNS if c in header), None)
        if path_col is None:
            raise DataError(
                f"--root: {csv_path} has no image path column (expected one of {', '.join(PATH_COLUMNS)}; "
                f"columns: {', '.join(header)})"
            )
        label_col = self._label_column(options, header, csv_path)
        group_col = options.group_column or ("group" if "group" in header else None)
        if group_col is not None and group_col not in header:
            raise UsageError(
                f"--group-column: {group_col!r} is not a column of {csv_path} (columns: {', '.join(header)})"
            )
        id_col = next((c for c in ID_COLUMNS if c in header), None)
        used = {path_col, label_col, group_col, id_col}
        extra_cols = [c for c in header if c not in used and c not in ("label", "split", "group", "path")]
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
            split = rec.get("split", "").lower()
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
        if options.label_column is not None:
            if options.label_column not in header:
                raise UsageError(
                    f"--label-column: {options.label_column!r} is not a column of {csv_path} "
                    f"(columns: {', '.join(header)})"
                )
            return options.label_column
        return next((c for c in LABEL_COLUMNS if c in header), None)


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
