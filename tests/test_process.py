"""dermctl.runtime.process: a command's process ends with its threads joined, atexit run and output
flushed, but without the interpreter's teardown (unless a profiler, a tracer or DERMCTL_FULL_EXIT wants it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dermctl import __version__
from dermctl.runtime.process import FULL_EXIT_ENV, exit_code, full_exit_wanted

# A program that ends through end_process with: a non-daemon thread still writing a file, an atexit
# handler, unflushed output on a pipe, and an object whose finaliser marks a normal teardown.
PROGRAM = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from dermctl.runtime.process import end_process

    out = Path(sys.argv[1])

    def slow_write():
        time.sleep(0.3)
        (out / "thread").write_text("done")

    class Finalised:
        def __del__(self):
            (out / "teardown").write_text("ran")

    keep = Finalised()
    keep.cycle = keep  # alive until the interpreter tears down
    threading.Thread(target=slow_write, daemon=False).start()
    atexit.register(lambda: (out / "atexit").write_text("ran"))
    sys.stdout.write("no newline, not flushed")
    end_process(int(sys.argv[2]))
    """
)


def _run(tmp_path: Path, code: int, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != FULL_EXIT_ENV}
    return subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path), str(code)],
        capture_output=True,
        text=True,
        env={**environ, **env},
        timeout=60,
    )


@pytest.mark.parametrize("code", [0, 3])
def test_end_process_joins_threads_runs_atexit_flushes_and_skips_teardown(tmp_path: Path, code: int) -> None:
    proc = _run(tmp_path, code)
    assert proc.returncode == code
    assert proc.stdout == "no newline, not flushed"
    assert (tmp_path / "thread").read_text() == "done"  # a checkpoint being written is finished
    assert (tmp_path / "atexit").read_text() == "ran"
    assert not (tmp_path / "teardown").exists()  # the teardown was skipped


def test_full_exit_env_keeps_the_interpreter_teardown(tmp_path: Path) -> None:
    proc = _run(tmp_path, 4, **{FULL_EXIT_ENV: "1"})
    assert proc.returncode == 4 and proc.stdout == "no newline, not flushed"
    assert (tmp_path / "thread").exists() and (tmp_path / "atexit").exists()
    assert (tmp_path / "teardown").read_text() == "ran"


def test_a_profiler_or_tracer_keeps_the_full_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FULL_EXIT_ENV, raising=False)
    old_trace, old_profile = sys.gettrace(), sys.getprofile()
    try:
        sys.settrace(None), sys.setprofile(None)
        assert not full_exit_wanted()
        sys.setprofile(lambda *a: None)  # as cProfile does: its results are written after main returns
        assert full_exit_wanted()
    finally:
        sys.settrace(old_trace), sys.setprofile(old_profile)
    monkeypatch.setenv(FULL_EXIT_ENV, "1")
    assert full_exit_wanted()
    monkeypatch.setenv(FULL_EXIT_ENV, "0")
    assert full_exit_wanted() is (sys.gettrace() is not None or sys.getprofile() is not None)


def test_exit_code_follows_python() -> None:
    assert exit_code(SystemExit()) == 0 and exit_code(SystemExit(None)) == 0
    assert exit_code(SystemExit(3)) == 3 and exit_code(SystemExit(130)) == 130
    assert exit_code(SystemExit(-1)) == 255 and exit_code(SystemExit(256 + 2)) == 2
    assert exit_code(SystemExit(True)) == 1


def test_exit_code_of_a_message_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_code(SystemExit("bad thing")) == 1
    assert capsys.readouterr().err.strip() == "bad thing"


CLI_PROGRAM = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from dermctl.cli.app import main

    out = Path(sys.argv[1])

    class Finalised:
        def __del__(self):
            (out / "teardown").write_text("ran")

    keep = Finalised()
    keep.cycle = keep
    sys.argv = ["dermctl", *sys.argv[2:]]
    main()
    """
)


@pytest.mark.parametrize(("args", "code"), [(["--version"], 0), (["knn", "--nope"], 2)])
def test_the_cli_ends_through_it_with_the_command_status(tmp_path: Path, args: list[str], code: int) -> None:
    environ = {k: v for k, v in os.environ.items() if k != FULL_EXIT_ENV}
    proc = subprocess.run(
        [sys.executable, "-c", CLI_PROGRAM, str(tmp_path), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=60,
    )
    assert proc.returncode == code
    assert (proc.stdout.strip() == f"dermctl {__version__}") if code == 0 else ("--nope" in proc.stderr)
    assert not (tmp_path / "teardown").exists()  # main() left through end_process, not a normal exit
