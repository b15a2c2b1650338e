"""Errors the command line turns into one line and a documented exit code.

Exit codes (documented in the README):
    0  success
    1  unexpected internal error (a bug: please report it)
    2  bad option or option value (also Typer's own usage errors)
    3  bad input data: a missing/unreadable path, a malformed manifest, image, HDF5 or checkpoint
    4  training stopped: loss became NaN/Inf or the run collapsed (a resumable checkpoint is kept)
    5  conflict: an output exists and would be overwritten, or another process holds the lock
    6  not available: a feature needs something absent here (weights offline, a GPU, a package)
    7  disk full: no space left on the device holding the named path (nothing torn is left behind)
    130 interrupted (SIGINT/SIGTERM) after a final checkpoint
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_TRAINING = 4
EXIT_CONFLICT = 5
EXIT_UNAVAILABLE = 6
EXIT_DISK_FULL = 7
EXIT_INTERRUPTED = 130


class DermctlError(Exception):
    """An error with a one-line message meant for the user and an exit code."""

    exit_code: int = EXIT_INTERNAL

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(DermctlError):
    """An option or its value is wrong. Name the option, the value and what was expected."""

    exit_code = EXIT_USAGE


class DataError(DermctlError):
    """An input file or folder is missing, unreadable or malformed. Name the path."""

    exit_code = EXIT_DATA


class TrainingError(DermctlError):
    """Training cannot go on (NaN/Inf loss, collapse). A resumable checkpoint has been written."""

    exit_code = EXIT_TRAINING


class ConflictError(DermctlError):
    """An output exists and would be overwritten, or a lock is held by another process."""

    exit_code = EXIT_CONFLICT


class UnavailableError(DermctlError):
    """Something this needs is not available here (offline weights, a GPU, an optional package)."""

    exit_code = EXIT_UNAVAILABLE


class DiskFullError(DermctlError):
    """No space left on the device (ENOSPC) while writing the named path; the old file, if any, is kept."""

    exit_code = EXIT_DISK_FULL
