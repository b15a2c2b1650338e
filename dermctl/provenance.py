"""What produced an artifact: the command line, versions and hashes of inputs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import sys
from pathlib import Path
from typing import Any

from dermctl import __version__

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def versions() -> dict[str, str]:
    """Versions of dermctl and of the libraries that change numbers."""
    out = {"dermctl": __version__, "python": platform.python_version()}
    for name in ("torch", "torchvision", "timm", "numpy", "sklearn", "faiss", "h5py", "PIL"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except Exception:  # an optional or broken package must not break provenance
                continue
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def provenance(config: dict[str, Any] | None = None, inputs: dict[str, str] | None = None) -> dict[str, Any]:
    """The record every artifact carries: command line, config, versions, input hashes, time."""
    return {
        "command": " ".join(sys.argv),
        "config": config or {},
        "inputs": inputs or {},
        "versions": versions(),
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def file_inputs(paths: dict[str, str | os.PathLike[str]]) -> dict[str, str]:
    """{name: sha256} for named input files."""
    return {name: sha256_file(Path(p)) for name, p in paths.items()}
