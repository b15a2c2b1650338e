from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dermctl.cli.completion import SHELLS, script

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("shell", sorted(SHELLS))
def test_committed_completion_scripts_are_current(shell):
    committed = (ROOT / "completions" / SHELLS[shell]).read_text()
    assert committed == script(shell), (
        f"regenerate with: python -m dermctl.cli.completion completions/ ({shell})"
    )


def test_dynamic_completion_lists_commands_and_options():
    env = dict(os.environ, _DERMCTL_COMPLETE="complete_bash", COMP_WORDS="dermctl k", COMP_CWORD="1")
    out = subprocess.run(
        [sys.executable, "-m", "dermctl"], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["knn"]
    env.update(COMP_WORDS="dermctl --w", COMP_CWORD="1")
    out = subprocess.run(
        [sys.executable, "-m", "dermctl"], env=env, capture_output=True, text=True, check=True
    )
    assert "--workdir" in out.stdout.split()
