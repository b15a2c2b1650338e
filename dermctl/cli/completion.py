"""Shell completion: the scripts in `completions/` are generated from here, never written by hand.

The scripts call back into `dermctl` (Typer/Click dynamic completion), so they complete every command and
option of the installed version. Regenerate after changing the script templates:

    python -m dermctl.cli.completion completions/
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

SHELLS = {"bash": "dermctl.bash", "zsh": "_dermctl", "fish": "dermctl.fish"}
PROG = "dermctl"
COMPLETE_VAR = "_DERMCTL_COMPLETE"


def init() -> None:
    """Register the completion classes (the app is built with add_completion=False): Typer's, with zsh's
    and fish's candidates printed one per line."""
    from typer._click.shell_completion import add_completion_class
    from typer._completion_classes import FishComplete, ZshComplete, completion_init

    completion_init()

    # zsh and fish read one candidate per line. Typer renders a description through rich, which wraps it at
    # 80 columns, and each wrapped fragment became a candidate of its own: a description is printed as one
    # line of plain text instead (and rich is not imported for a TAB).
    class OneLineZsh(ZshComplete):
        def format_completion(self, item: Any) -> str:
            value = _zsh_escape(item.value)
            return f'"{value}":"{_zsh_escape(one_line(item.help))}"' if item.help else f'"{value}"'

    class OneLineFish(FishComplete):
        def format_completion(self, item: Any) -> str:
            return f"{item.value}\t{one_line(item.help)}" if item.help else f"{item.value}"

    add_completion_class(OneLineZsh, "zsh")
    add_completion_class(OneLineFish, "fish")


def one_line(text: str) -> str:
    """`text` with every run of white space (line breaks included) made one space."""
    return " ".join(text.split())


def _zsh_escape(s: str) -> str:
    # As Typer's zsh class: the candidate sits in a double-quoted _arguments spec inside single quotes.
    return (
        s.replace('"', '""').replace("'", "''").replace("$", "\\$").replace("`", "\\`").replace(":", r"\\:")
    )


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
