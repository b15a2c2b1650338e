"""Where things live under a workdir, and how files are written so that none is ever torn.

Layout (every command reads and writes these by default; explicit paths always win)::

    <workdir>/
      manifests/   <name>.csv manifests, <name>.report.json ingest reports, .hashcache.json
      runs/        runs/<name>/ pretraining and fine-tuning runs (config, metrics.csv, checkpoints, backbone)
      embeddings/  embeddings/<model>/<task>.h5
      results/     results/<protocol>/<model>/<task>.json
      reports/     tables, figures and report.html
      cache/       decoded/resized image caches and downloaded weights
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dermctl.errors import ConflictError, DataError

SUBDIRS = ("manifests", "runs", "embeddings", "results", "reports", "cache")
# A killed writer's temp file untouched this long is removed by the next write of the same file.
STALE_TEMP_AGE_S = 60.0


@dataclass(frozen=True)
class Workspace:
    """The folders of one workdir. Creating the object touches nothing on disk."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> Workspace:
        return cls(Path(root).expanduser().resolve())

    @property
    def manifests(self) -> Path:
        return self.root / "manifests"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def ensure(self, *names: str) -> None:
        """Create the named sub-folders (all of them when none is named)."""
        for name in names or SUBDIRS:
            path = self.root / name
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise DataError(f"cannot create workspace folder {path}: {exc.strerror or exc}") from exc

    def embedding_path(self, model: str, task: str) -> Path:
        return self.embeddings / model / f"{task}.h5"

    def result_path(self, protocol: str, model: str, task: str) -> Path:
        return self.results / protocol / model / f"{task}.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`.

    Readers see either the old complete file or the new complete one, never a torn file, and a
    crash leaves at most a `.tmp` file behind. With `overwrite=False` an existing target is an error.
    """
    target = Path(path)
    if not overwrite and target.exists():
        raise ConflictError(f"{target} exists; refusing to overwrite it (pass --force to replace it)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        # The writer's pid is in the name so that a later write can tell a dead writer's leftover.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent
        )
    except OSError as exc:
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "w", *, overwrite: bool = True, **kwargs: Any
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing that replaces `path` atomically when the block succeeds."""
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = True) -> Path:
    with atomic_open(path, "w", overwrite=overwrite, encoding="utf-8", newline="") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_open(path, "wb", overwrite=overwrite) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, overwrite: bool = True) -> Path:
    return atomic_write_text(
        path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", overwrite=overwrite
    )


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, naming the path in the error when it is missing or malformed."""
    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{p}: file not found") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc


def remove_stale_temps(target: str | os.PathLike[str], min_age_s: float | None = None) -> list[Path]:
    """Delete `.<name>.<pid>.*.tmp` files next to `target` left by a killed writer; return them.

    Only temps whose writer pid no longer runs on this machine and that have not been touched for
    `min_age_s` (default STALE_TEMP_AGE_S) go: a live writer's temp, or one written from another host
    sharing the folder (pid unknown here, but still being written), is left alone.
    """
    t = Path(target)
    age = STALE_TEMP_AGE_S if min_age_s is None else min_age_s
    prefix = f".{t.name}."
    removed: list[Path] = []
    now = time.time()
    for tmp in t.parent.glob(glob.escape(prefix) + "*.tmp"):
        pid_text = tmp.name[len(prefix) :].split(".", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            if now - tmp.stat().st_mtime < age:
                continue
            tmp.unlink()
        except OSError:  # gone already, or not ours to remove: leave it
            continue
        removed.append(tmp)
    return removed


def check_writable(root: str | os.PathLike[str]) -> None:
    """Refuse up front (DataError naming the folder) when `root`, or the nearest existing folder above
    it that would hold it, cannot be written (read-only file system, no permission)."""
    path = Path(root).expanduser().absolute()
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{probe}: workspace path is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "workspace" if probe == path else f"folder {probe} holding workspace {path}"
        raise DataError(f"{probe}: cannot write the {where} (read-only file system or no permission)")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we can judge: keep the file
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _fsync_dir(folder: Path) -> None:
    # Make the rename itself durable; not all file systems allow opening a folder.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
