"""How a dermctl process ends: everything a normal exit does that matters, then no interpreter teardown.

Tearing the interpreter down once torch, torchvision and timm are loaded costs about a second on every
command (finalising thousands of modules and objects: 1.0-1.6 s measured on a 2-core machine), after
the command's work is done and its files are closed. `end_process` does what that teardown would do that
anyone can observe, in the order the interpreter does it, then leaves with `os._exit`:

1. joins every non-daemon thread (a checkpoint still being written finishes, as on a normal exit);
2. runs the atexit handlers (multiprocessing reaps loader workers, logging flushes, weakref finalizers
   such as temporary folders run);
3. flushes stdout and stderr.

What it skips: finalizers (`__del__`) of objects still alive at exit, and C libraries' own exit hooks
(HDF5's library shutdown). dermctl closes every file it writes, HDF5 included, before renaming it into
place (atomic writes), so nothing it leaves on disk depends on either.

A profiler or tracer (cProfile, coverage, a debugger) writes its results after the program returns: with
one active, or with DERMCTL_FULL_EXIT=1 in the environment, the normal exit is kept.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

FULL_EXIT_ENV = "DERMCTL_FULL_EXIT"


def exit_code(exc: SystemExit) -> int:
    """The status a SystemExit gives the process (None: 0; a message: printed to stderr, 1), as Python does."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):  # the low byte, as the operating system keeps it (-1: 255; True: 1)
        return code % 256
    print(code, file=sys.stderr)
    return 1


def full_exit_wanted() -> bool:
    """Whether to keep the interpreter's own exit: asked for, or a profiler/tracer is recording."""
    if os.environ.get(FULL_EXIT_ENV, "") not in ("", "0"):
        return True
    if sys.gettrace() is not None or sys.getprofile() is not None:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+: coverage and debuggers may use it
    if monitoring is not None:
        for tool in range(6):  # the tool ids in use: debugger, coverage, profiler, optimizer, ...
            if monitoring.get_tool(tool) is not None:
                return True
    return False


def _join_threads() -> None:
    main = threading.main_thread()
    for thread in threading.enumerate():
        if thread is not main and not thread.daemon and thread.is_alive():
            thread.join()


def _flush_std() -> int:
    """Flush stdout and stderr; 120 if stdout could not be flushed (Python's status for that), else 0."""
    status = 0
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`dermctl ... | head`) or a closed stream
            if stream is sys.stdout:
                status = 120
    return status


def end_process(code: int) -> NoReturn:
    """Leave the process with status `code`, as described in the module docstring."""
    if full_exit_wanted():
        sys.exit(code)
    _join_threads()
    atexit._run_exitfuncs()  # noqa: SLF001 - the interpreter's own list of exit handlers
    flushed = _flush_std()
    os._exit(code or flushed)


__all__ = ["FULL_EXIT_ENV", "end_process", "exit_code", "full_exit_wanted"]
