"""The command line: Typer parsing and rich rendering only; all work happens in the core library."""
