"""SIGINT/SIGTERM (how SLURM pre-empts): stop at the next step boundary and checkpoint before leaving."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from dermctl.errors import EXIT_INTERRUPTED, DermctlError


class RunInterrupted(DermctlError):
    """SIGINT/SIGTERM: a checkpoint of the current state was written; `--resume` continues the run."""

    exit_code = EXIT_INTERRUPTED


class StopFlag:
    """Set by SIGINT/SIGTERM; training loops check it after each step and checkpoint before leaving."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def handler(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `flag` inside the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, flag.handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
