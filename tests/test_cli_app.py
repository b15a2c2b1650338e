from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from dermctl import __version__
from dermctl.cli.app import app

runner = CliRunner()
COMMANDS = ("ingest", "pretrain", "embed", "probe", "finetune", "knn", "report", "demo")


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"dermctl {__version__}"


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in result.stdout
        sub = runner.invoke(app, [cmd, "--help"])
        assert sub.exit_code == 0, cmd
        assert len(sub.stdout.strip().splitlines()) > 3, cmd


def test_module_entry_point_for_torchrun():
    out = subprocess.run(
        [sys.executable, "-m", "dermctl", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"dermctl {__version__}"
