"""The manifest: one CSV per data set, the interface between `ingest` and every later command.

Columns (in this order when dermctl writes them; extra columns are kept and carried along):

    path     image file; absolute, or relative to the manifest's own folder
    label    class name ("" for unlabelled corpora)
    split    train | val | test
    group    grouping key (patient, lesion, case); rows sharing a group never straddle splits ("" = none)
    source   data set name (ham10000, isic-archive, ...)
    role     task (labelled, used for evaluation) | corpus (pretraining only)
    sha256   SHA-256 of the image file's bytes
    width    decoded width in pixels (after EXIF orientation)
    height   decoded height in pixels
    image_id published id where the set has one (ISIC_0024306, PAT_..., md5hash), else ""
    phash    64-bit perceptual hash, 16 hex digits (near-duplicate detection), else ""

Adapter extras follow, e.g. `skin_type` (Fitzpatrick 1-6, -1 unknown) or `dx_type`.

Hand-made manifests need only `path`; `label` is needed for tasks. Missing columns get defaults:
split=train, group="", source=<file stem>, role inferred (task when it has labels and a test split),
sha256/width/height/image_id/phash empty (computed on demand by commands that need them).
"""

from __future__ import annotations

import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dermctl.errors import DataError
from dermctl.provenance import sha256_file
from dermctl.workspace import atomic_write_text

COLUMNS = (
    "path",
    "label",
    "split",
    "group",
    "source",
    "role",
    "sha256",
    "width",
    "height",
    "image_id",
    "phash",
)
SPLITS = ("train", "val", "test")
ROLES = ("task", "corpus")


@dataclass
class Row:
    """One image of a manifest."""

    path: str
    label: str = ""
    split: str = "train"
    group: str = ""
    source: str = ""
    role: str = ""
    sha256: str = ""
    width: int = 0
    height: int = 0
    image_id: str = ""
    phash: str = ""
    extras: dict[str, str] = field(default_factory=dict)


@dataclass
class Manifest:
    """A data set as rows plus where it came from. `path` is the CSV it was read from (if any)."""

    name: str
    rows: list[Row]
    path: Path | None = None
    extra_columns: list[str] = field(default_factory=list)

    @property
    def role(self) -> str:
        roles = {r.role for r in self.rows if r.role}
        if len(roles) == 1:
            return roles.pop()
        if len(roles) > 1:
            return "task" if "task" in roles else "corpus"
        has_labels = any(r.label for r in self.rows)
        has_test = any(r.split == "test" for r in self.rows)
        return "task" if has_labels and has_test else "corpus"

    @property
    def is_task(self) -> bool:
        return self.role == "task"

    @property
    def classes(self) -> list[str]:
        """Sorted class names; the index of a class in this list is its integer label everywhere."""
        return sorted({r.label for r in self.rows if r.label})

    def split_rows(self, split: str) -> list[Row]:
        return [r for r in self.rows if r.split == split]

    def counts(self) -> dict[str, dict[str, int]]:
        """{split: {label: count}}."""
        out: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        for r in self.rows:
            out.setdefault(r.split, Counter())[r.label] += 1
        return {s: dict(sorted(c.items())) for s, c in out.items()}

    def resolve(self, row: Row) -> Path:
        """Absolute image path of a row (relative paths are relative to the manifest's folder)."""
        p = Path(row.path).expanduser()
        if not p.is_absolute() and self.path is not None:
            p = self.path.parent / p
        return p

    def content_hash(self) -> str:
        """Hash of the manifest's content as written (stable across re-reads of the same file)."""
        return _hash_text(to_csv_text(self))


def _hash_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest CSV, written by `ingest` or by hand. Errors name the file and the problem."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: manifest not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a manifest CSV file")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read manifest: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "path" not in header:
        raise DataError(f"{p}: manifest has no 'path' column (columns found: {', '.join(header) or 'none'})")
    extra_cols = [h for h in header if h not in COLUMNS]
    rows: list[Row] = []
    stem = p.stem
    for lineno, raw in enumerate(reader, start=2):
        rec = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not rec.get("path"):
            raise DataError(f"{p}: line {lineno}: empty 'path'")
        split = rec.get("split") or "train"
        if split not in SPLITS:
            raise DataError(f"{p}: line {lineno}: split {split!r} is not one of {', '.join(SPLITS)}")
        role = rec.get("role", "")
        if role and role not in ROLES:
            raise DataError(f"{p}: line {lineno}: role {role!r} is not one of {', '.join(ROLES)}")
        try:
            width = int(float(rec.get("width") or 0))
            height = int(float(rec.get("height") or 0))
        except ValueError as exc:
            raise DataError(f"{p}: line {lineno}: width/height must be integers") from exc
        rows.append(
            Row(
                path=rec["path"],
                label=rec.get("label", ""),
                split=split,
                group=rec.get("group", ""),
                source=rec.get("source") or stem,
                role=role,
                sha256=rec.get("sha256", ""),
                width=width,
                height=height,
                image_id=rec.get("image_id", ""),
                phash=rec.get("phash", ""),
                extras={c: rec.get(c, "") for c in extra_cols},
            )
        )
    if not rows:
        raise DataError(f"{p}: manifest has no rows")
    return Manifest(name=stem, rows=rows, path=p.resolve(), extra_columns=extra_cols)


def to_csv_text(manifest: Manifest) -> str:
    buf = io.StringIO()
    extra = list(manifest.extra_columns)
    for r in manifest.rows:
        for k in r.extras:
            if k not in extra:
                extra.append(k)
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*COLUMNS, *extra])
    for r in manifest.rows:
        writer.writerow(
            [
                r.path,
                r.label,
                r.split,
                r.group,
                r.source,
                r.role,
                r.sha256,
                r.width,
                r.height,
                r.image_id,
                r.phash,
            ]
            + [r.extras.get(c, "") for c in extra]
        )
    return buf.getvalue()


def write_manifest(manifest: Manifest, path: str | os.PathLike[str]) -> Path:
    """Write atomically; the manifest's `path` is updated to the written file."""
    out = atomic_write_text(path, to_csv_text(manifest))
    manifest.path = Path(out).resolve()
    return manifest.path


def validate_task(manifest: Manifest) -> None:
    """A labelled task needs labels on every row and every class in train and test."""
    where = manifest.path or manifest.name
    unlabelled = [r for r in manifest.rows if not r.label]
    if unlabelled:
        raise DataError(f"{where}: {len(unlabelled)} rows have no label (first: {unlabelled[0].path})")
    counts = manifest.counts()
    for split in ("train", "test"):
        missing = [c for c in manifest.classes if counts.get(split, {}).get(c, 0) == 0]
        if missing:
            raise DataError(f"{where}: the {split} split has no image of class {', '.join(missing)}")


def check_images(manifest: Manifest) -> list[Path]:
    """Resolved image paths of every row; a missing file (e.g. deleted after ingest) is a DataError naming it."""
    paths = [manifest.resolve(r) for r in manifest.rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{missing[0]}: image listed in {manifest.path} not found{more}")
    return paths


def find_manifests(source: str | os.PathLike[str]) -> list[Path]:
    """Manifest CSVs given as a file or a folder of them (ingest reports and hidden files skipped)."""
    p = Path(source)
    if p.is_file():
        return [p]
    if p.is_dir():
        found = sorted(q for q in p.glob("*.csv") if not q.name.startswith("."))
        if not found:
            raise DataError(f"{p}: no manifest CSV files in this folder")
        return found
    raise DataError(f"{p}: no such manifest file or folder")


def find_task(workspace_manifests: Path, task: str) -> Path:
    """A task by name (`pad-ufes-20`) in the workspace's manifests, or a path to a manifest."""
    as_path = Path(task)
    if as_path.suffix == ".csv" or as_path.exists():
        if not as_path.is_file():
            raise DataError(f"{as_path}: task manifest not found")
        return as_path
    candidate = workspace_manifests / f"{task}.csv"
    if candidate.is_file():
        return candidate
    known = sorted(q.stem for q in workspace_manifests.glob("*.csv")) if workspace_manifests.is_dir() else []
    raise DataError(
        f"unknown task {task!r}: no {candidate}"
        + (f" (tasks here: {', '.join(known)})" if known else " (run `dermctl ingest` first)")
    )


def fill_hashes(manifest: Manifest) -> Manifest:
    """Compute missing sha256 values of a (hand-made) manifest in place."""
    for r in manifest.rows:
        if not r.sha256:
            path = manifest.resolve(r)
            try:
                r.sha256 = sha256_file(path)
            except OSError as exc:
                raise DataError(
                    f"{path}: cannot read image listed in {manifest.path}: {exc.strerror or exc}"
                ) from exc
    return manifest
