"""Where things live under a workdir, and how files are written so that none is ever torn.

Layout (every command reads and writes these by default; explicit paths always win)::

    <workdir>/
      manifests/   <name>.csv manifests, <name>.report.json ingest reports, .hashcache.json
      runs/        runs/<name>/ pretraining and fine-tuning runs (config, metrics.csv, checkpoints, backbone)
      embeddings/  embeddings/<model>/<task key>.h5 (see Workspace.task_key)
      results/     results/<protocol>/<model>/<task>.json
      reports/     tables, figures and report.html
      cache/       decoded/resized image caches and downloaded weights
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import hashlib
import io
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from dermctl.errors import ConflictError, DataError, DermctlError, DiskFullError

SUBDIRS = ("manifests", "runs", "embeddings", "results", "reports", "cache")
# A killed writer's temp file untouched this long is removed by the next write of the same file.
STALE_TEMP_AGE_S = 60.0
# "No space left": a full device, or a full quota (shared servers) -- the same remedy for the user.
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_UMASK_LOCK = threading.Lock()


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
                if is_disk_full(exc):
                    raise disk_full(path, exc) from exc
                raise DataError(f"cannot create workspace folder {path}: {exc.strerror or exc}") from exc

    def task_key(self, manifest: str | os.PathLike[str]) -> str:
        """The name a task's derived files (embeddings) are stored under: `<name>` for the workspace's
        `manifests/<name>.csv`; for a manifest elsewhere its stem plus 8 hex digits of its absolute path, so
        two CSV tasks with the same file name in different folders never share (overwrite) a file."""
        p = Path(manifest).expanduser().resolve()
        if p.parent == self.manifests.resolve():
            return p.stem
        return f"{p.stem}-{hashlib.sha256(str(p).encode('utf-8')).hexdigest()[:8]}"

    def embedding_path(self, model: str, task: str) -> Path:
        """`embeddings/<model>/<task>.h5`; `task` is a task key (`task_key`), the name for workspace tasks."""
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
        if is_disk_full(exc):
            raise disk_full(target, exc) from exc
        raise DataError(f"cannot write {target}: {exc.strerror or exc}") from exc
    try:
        # mkstemp makes 0600 files; the renamed file must get the mode open() would give it (the umask's).
        os.fchmod(fd, 0o666 & ~current_umask())
    except OSError:
        pass  # a file system without modes (some network mounts): keep what it gives
    finally:
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()  # frees the space the partial file took
        if is_disk_full(exc):
            raise disk_full(target, exc) from exc
        raise


def is_disk_full(exc: BaseException) -> bool:
    """True when `exc`, or an error it was raised from, is ENOSPC/EDQUOT. torch.save reports a failed
    write as `RuntimeError: ... unexpected pos ...` with the OSError only in its context; HDF5 puts the
    errno in the message. A DermctlError (already one line) is never re-labelled."""
    if isinstance(exc, DermctlError):
        return False
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and (
            e.errno in _DISK_FULL_ERRNOS or "No space left on device" in str(e) or "errno = 28," in str(e)
        ):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full(path: str | os.PathLike[str], exc: BaseException | None = None) -> DiskFullError:
    """The one-line error for a full disk (or quota) while writing `path`."""
    quota = isinstance(exc, OSError) and exc.errno == errno.EDQUOT
    what = "disk quota exceeded" if quota else "no space left on device"
    return DiskFullError(
        f"{path}: {what}; nothing was half-written (earlier files are intact): free some space, then run "
        "the command again"
    )


def current_umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it, which would
    briefly give files created by other threads the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:  # no /proc (macOS): set and restore at once
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


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


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str], command: str = "dermctl") -> Iterator[bool]:
    """Hold `<run_dir>/.lock` (holding this process's PID) for the block: one process per run folder.

    The folder is created when missing and removed again afterwards when the block left it empty (a run
    refused at its first check leaves nothing behind); the block receives whether the folder existed.
    A lock whose process is gone is taken over. Another live holder is a ConflictError naming its PID."""
    folder = Path(run_dir)
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(folder, exc) from exc
        raise DataError(f"cannot create run folder {folder}: {exc.strerror or exc}") from exc
    lock = folder / ".lock"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text(encoding="ascii").strip() or 0)
            except FileNotFoundError:
                continue  # released meanwhile: try again
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise ConflictError(
                    f"{folder}: run in use by PID {pid} (another `{command}` of this run); wait for it to "
                    "end, or use --name for another run"
                ) from None
            if not pid:
                # Created but not yet written by a starting process, or damaged: a young one is live.
                with contextlib.suppress(OSError):
                    if time.time() - lock.stat().st_mtime < 5:
                        raise ConflictError(f"{folder}: run in use (lock {lock} is being taken)") from None
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()  # left by a dead process
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(lock, exc) from exc
            raise DataError(f"{lock}: cannot take the run lock: {exc.strerror or exc}") from exc
    else:
        raise ConflictError(f"{folder}: cannot take the run lock {lock} (contended)")
    try:
        os.write(fd, str(os.getpid()).encode("ascii"))
    finally:
        os.close(fd)
    try:
        yield existed
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        if not existed:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds when nothing was written


# -- run folders -------------------------------------------------------------------------------------

# run.json "status" of a pretraining run
RUN_STATUSES = ("running", "finished", "early_stopped", "diverged", "collapsed", "interrupted")
DONE_STATUSES = ("finished", "early_stopped", "collapsed")  # ended by itself: --resume has nothing to do
FAILED_STATUSES = ("collapsed", "diverged")  # the numbers exist but come from a failed run
INCOMPLETE_STATUSES = ("running", "interrupted")  # resumable (or still going)


@dataclass(frozen=True)
class RunFolder:
    """`runs/<name>/`, the one description of a run folder's files for pretraining and fine-tuning:
    config.json (config + provenance), metrics.csv (a row per epoch), run.json (status, pretraining),
    last.pt / best.pt (+ .sha256) and the `.lock` of `run_lock`. Pretraining keeps its checkpoints in
    checkpoints/, fine-tuning beside config.json (their 0.1.0 layouts, which resumable runs still have)."""

    root: Path
    checkpoints: Path

    @classmethod
    def pretraining(cls, root: str | os.PathLike[str]) -> RunFolder:
        return cls(Path(root), Path(root) / "checkpoints")

    @classmethod
    def finetuning(cls, root: str | os.PathLike[str]) -> RunFolder:
        return cls(Path(root), Path(root))

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def status(self) -> Path:
        return self.root / "run.json"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    def lock(self, command: str) -> contextlib.AbstractContextManager[bool]:
        return run_lock(self.root, command)


def write_rows_csv(path: str | os.PathLike[str], columns: list[str], rows: list[list[str]]) -> None:
    """A CSV file (header + rows, "\\n" line ends) written atomically: metrics.csv of every run."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
