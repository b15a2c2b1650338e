"""Values the shell completes for options: registry names, and what the workspace holds.

A TAB must answer in a few tenths of a second, so nothing here imports torch or a registry: the registry
names are copied below (tests/test_completion.py checks they equal the registries), and the workspace is
read by folder and file names only (a manifest's role from its first data row).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Equal to dermctl.methods.method_names(), dermctl.data.adapters.adapter_names(), the demo's methods and
# dermctl.report.FORMATS (tested).
METHODS = ("byol", "colorme", "dino", "ibot", "simclr")
DEMO_METHODS = ("dino", "simclr")
DATASETS = (
    "csv",
    "derm7pt",
    "fitzpatrick17k",
    "folder",
    "ham10000",
    "isic-archive",
    "mednode",
    "pad-ufes-20",
    "ph2",
    "sd260",
)
REPORT_FORMATS = ("md", "csv", "tex", "png", "svg", "html")
REFERENCE_MODELS = ("imagenet", "random")
DEVICES = ("auto", "cpu", "cuda")

# click calls a completer with (ctx, param, incomplete) and shows what it returns.
Completer = Callable[[Any, Any, str], list[str]]


def workdir_of(ctx: Any) -> Path:
    """The workspace of the command line being completed: `-C/--workdir` (or DERMCTL_WORKDIR), else `.`."""
    root = ctx.find_root() if ctx is not None else None
    value = root.params.get("workdir") if root is not None else None
    return Path(value or os.environ.get("DERMCTL_WORKDIR") or ".")


def manifest_names(workdir: Path, role: str | None = None) -> list[str]:
    """Names of `manifests/<name>.csv`; with `role`, only those whose first row has that role."""
    folder = workdir / "manifests"
    try:
        paths = sorted(p for p in folder.glob("*.csv") if not p.name.startswith("."))
    except OSError:
        return []
    return [p.stem for p in paths if role is None or _first_role(p) in (role, None)]


def _first_role(path: Path) -> str | None:
    # Every row of an ingested manifest has the same role: the first one tells; unreadable or hand-made
    # without a role column -> None (offered: the command itself will say what is wrong).
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            row = next(csv.DictReader(fh), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return (row or {}).get("role") or None


def run_names(workdir: Path, exported: bool = False) -> list[str]:
    """Folders in `runs/`; with `exported`, only those holding an exported backbone (backbone.json)."""
    return [d.name for d in _subfolders(workdir / "runs") if not exported or (d / "backbone.json").is_file()]


def embedded_models(workdir: Path) -> list[str]:
    """Model ids with embeddings (`embeddings/<model>/` holding an .h5 file)."""
    return [d.name for d in _subfolders(workdir / "embeddings") if any(d.glob("*.h5"))]


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []


def matching(values: Iterable[str], incomplete: str, comma: bool = False) -> list[str]:
    """`values` starting with `incomplete`, without repeats; `comma`: complete the last item of a
    comma-separated list (`md,c` -> `md,csv`), not offering items already given."""
    head, sep, last = incomplete.rpartition(",") if comma else ("", "", incomplete)
    given = set(head.split(",")) if sep else set()
    out: list[str] = []
    for v in values:
        if v.startswith(last) and v not in given and f"{head}{sep}{v}" not in out:
            out.append(f"{head}{sep}{v}")
    return out


def static(values: Iterable[str], comma: bool = False) -> Completer:
    """A completer offering fixed values."""
    fixed = tuple(values)
    return lambda ctx, param, incomplete: matching(fixed, incomplete, comma)


def tasks(comma: bool = False) -> Completer:
    """Task manifests of the workspace."""
    return lambda ctx, param, incomplete: matching(manifest_names(workdir_of(ctx), "task"), incomplete, comma)


def manifests(comma: bool = False) -> Completer:
    """Every manifest of the workspace (tasks and corpora)."""
    return lambda ctx, param, incomplete: matching(manifest_names(workdir_of(ctx)), incomplete, comma)


def runs(exported: bool = False, extra: tuple[str, ...] = ()) -> Completer:
    """Run names of the workspace (with `exported`, those with a backbone), then `extra` values."""

    def complete(ctx: Any, param: Any, incomplete: str) -> list[str]:
        return matching([*run_names(workdir_of(ctx), exported), *extra], incomplete)

    return complete


def embedded(extra: tuple[str, ...] = ()) -> Completer:
    """Model ids with embeddings in the workspace, then `extra` values (comma-separated lists allowed)."""

    def complete(ctx: Any, param: Any, incomplete: str) -> list[str]:
        return matching([*embedded_models(workdir_of(ctx)), *extra], incomplete, comma=True)

    return complete


# Which values an option takes, by option name; (command, option) entries override the plain ones.
# One table, so that the same option offers the same kind of value in every command.
COMPLETERS: dict[str | tuple[str, str], Completer] = {
    "--method": static(METHODS),
    ("demo", "--method"): static(DEMO_METHODS),
    "--dataset": static(DATASETS),
    "--task": tasks(),
    "--monitor-task": tasks(),
    ("report", "--tasks"): tasks(comma=True),
    ("report", "--format"): static(REPORT_FORMATS, comma=True),
    ("ingest", "--exclude"): manifests(comma=True),
    "--model": runs(exported=True, extra=REFERENCE_MODELS),
    ("knn", "--model"): embedded(),
    ("probe", "--model"): embedded(extra=("stratified",)),
    ("pretrain", "--name"): runs(),
    "--device": static(DEVICES),
}


def completer_for(command: str | None, opts: Iterable[str]) -> Completer | None:
    """The completer of an option of `command` known by any of `opts`, or None."""
    for opt in opts:
        found = COMPLETERS.get((command, opt)) if command else None
        if found is None:
            found = COMPLETERS.get(opt)
        if found is not None:
            return found
    return None
