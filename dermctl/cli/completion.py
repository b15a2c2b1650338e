"""Shell completion: the scripts in `completions/` are generated from here, never written by hand.

The scripts call back into `dermctl` (Typer/Click dynamic completion), so they complete every command and
option of the installed version. Regenerate after changing the script templates:

    python -m dermctl.cli.completion completions/
"""

from __future__ import annotations

import sys
from pathlib import Path

SHELLS = {"bash": "dermctl.bash", "zsh": "_dermctl", "fish": "dermctl.fish"}
PROG = "dermctl"
COMPLETE_VAR = "_DERMCTL_COMPLETE"


def init() -> None:
    """Register Typer's completion classes (the app is built with add_completion=False)."""
    from typer._completion_classes import completion_init

    completion_init()


def script(shell: str) -> str:
    """The completion script for `shell` (bash, zsh or fish)."""
    from typer._completion_shared import get_completion_script

    init()
    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell).rstrip("\n") + "\n"


def write_all(folder: Path) -> list[Path]:
    from dermctl.workspace import atomic_write_text

    return [atomic_write_text(folder / name, script(shell)) for shell, name in SHELLS.items()]


if __name__ == "__main__":
    for path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "completions")):
        print(path)
