"""Training checkpoints that can be loaded without executing code and whose damage is detected.

A checkpoint is `torch.save` of plain containers only (tensors, numbers, strings, None, lists, tuples,
dicts), written atomically, with its SHA-256 in a sidecar `<file>.sha256` (`sha256sum` format; while a
checkpoint is being replaced the sidecar briefly lists the new and the old hash, either verifies). Loading
checks the hash first (a truncated or altered file is named and refused), then uses
`torch.load(weights_only=True)`, so a file that needs pickle code execution is refused and its payload
never runs. Pretraining (`dermctl.train.engine`) and fine-tuning (`dermctl.train.finetune`) checkpoints
both go through here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from dermctl.errors import DataError
from dermctl.provenance import sha256_file
from dermctl.workspace import atomic_path, atomic_write_text

_PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.dtype, torch.device)


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".sha256")


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value that is not a plain container (numpy, custom classes)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str | int):
                raise TypeError(f"{where}: key {k!r} is not str/int")
            check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__name__} is not a plain container value")


class _HashingWriter:
    """A write-only file object that hashes what passes through it: the checkpoint's SHA-256 without
    reading a file of hundreds of MB back."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.sha = fh, hashlib.sha256()

    def write(self, data: bytes | memoryview) -> int:
        self.sha.update(data)
        return self.fh.write(data)

    def flush(self) -> None:
        self.fh.flush()


def save_checkpoint(
    state: dict[str, Any], path: str | os.PathLike[str], copies: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Write `state` atomically and its hash to `<path>.sha256`; returns the path. Each of `copies`
    (e.g. best.pt beside last.pt) gets the same bytes and hash without serialising `state` again."""
    check_plain(state)
    target = Path(path)
    with atomic_path(target) as tmp:
        # Through a Python file object, not a path: torch's own writer turns a full disk into a bare
        # "unexpected pos" RuntimeError, while Python's keeps the OSError (ENOSPC) for atomic_path to name.
        with open(tmp, "wb") as fh:
            writer = _HashingWriter(fh)
            torch.save(state, writer)  # type: ignore[arg-type]  # torch only calls write/flush
        digest = writer.sha.hexdigest()
        _swap_sidecar(target, digest)
    atomic_write_text(sidecar_path(target), f"{digest}  {target.name}\n")
    for copy in copies:
        dest = Path(copy)
        with atomic_path(dest) as tmp:
            _link_or_copy(target, tmp)
            _swap_sidecar(dest, digest)
        atomic_write_text(sidecar_path(dest), f"{digest}  {dest.name}\n")
    return target


def _swap_sidecar(target: Path, digest: str) -> None:
    """Two files cannot be renamed at once: list the new and the old hash while the checkpoint is
    swapped, so a kill between the two renames leaves a pair that still verifies."""
    side = sidecar_path(target)
    old = _sidecar_hashes(side)[:1]
    atomic_write_text(side, "".join(f"{h}  {target.name}\n" for h in [digest, *old]))


def _link_or_copy(source: Path, tmp: Path) -> None:
    """Put `source`'s bytes at `tmp`: a hard link when the file system has them (the source is only
    ever replaced by rename, never rewritten in place, so the link keeps these bytes), else a copy."""
    try:
        tmp.unlink()
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)


def _sidecar_hashes(side: Path) -> list[str]:
    try:
        lines = side.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [line.split()[0].lower() for line in lines if line.split()]


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Verify the sidecar hash, then load weights-only onto the CPU. Errors name the file."""
    p = Path(path)
    side = sidecar_path(p)
    if not p.is_file():
        raise DataError(f"{p}: checkpoint not found")
    if not side.is_file():
        raise DataError(f"{p}: no hash file {side.name} next to it; refusing an unverified checkpoint")
    expected = _sidecar_hashes(side)
    if not expected:
        raise DataError(f"{side}: cannot read the checkpoint hash")
    if sha256_file(p) not in expected:
        raise DataError(f"{p}: content hash does not match {side.name} (truncated or altered checkpoint)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for refused or damaged files
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            raise DataError(f"{p}: refusing to load: the checkpoint needs pickle code execution") from exc
        first = text.splitlines()[0][:160] if text else ""
        raise DataError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {first})") from exc
    if not isinstance(state, dict):
        raise DataError(f"{p}: not a dermctl checkpoint (expected a dict, found {type(state).__name__})")
    return state


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint state that training can no longer change: tensors copied to the CPU,
    containers rebuilt, other values shared (they are immutable)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in a background thread while training goes on, one at a time.

    `submit` first waits for the previous write (so at most one is in flight and the files are
    replaced in order), then snapshots the state and starts writing it with `save_checkpoint` (atomic,
    hashed). An error of a write (a full disk) is raised in the training thread by the next `submit` or
    `wait`. The thread is not a daemon: an interpreter that exits still finishes the write it started.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(
        self,
        state: dict[str, Any],
        path: str | os.PathLike[str],
        copies: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.wait()
        check_plain(state)  # in the caller's thread: a bad value is a bug to raise here, with its stack
        frozen, targets = snapshot(state), [Path(c) for c in copies]
        self._thread = threading.Thread(
            target=self._write, args=(frozen, Path(path), targets), name="dermctl-checkpoint", daemon=False
        )
        self._thread.start()

    def _write(self, state: dict[str, Any], path: Path, copies: list[Path]) -> None:
        try:
            save_checkpoint(state, path, copies)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        """Block until the write in flight is on disk; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
