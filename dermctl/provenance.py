"""What produced an artifact: the command line, versions and hashes of inputs."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import sys
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


# import name -> distribution names to ask importlib.metadata (first installed wins)
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "torchvision": ("torchvision",),
    "timm": ("timm",),
    "numpy": ("numpy",),
    "sklearn": ("scikit-learn",),
    "faiss": ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu", "faiss"),
    "h5py": ("h5py",),
    "PIL": ("pillow",),
}


def versions() -> dict[str, str]:
    """Versions of dermctl and of the libraries that change numbers. A library not imported yet is read
    from its installed metadata rather than imported (importing sklearn, faiss and h5py just for their
    version strings cost ~1.4 s of CPU per command)."""
    from importlib import metadata

    out = {"dermctl": __version__, "python": platform.python_version()}
    for name, dists in _DISTRIBUTIONS.items():
        module = sys.modules.get(name)
        if module is not None:
            out[name] = str(getattr(module, "__version__", "unknown"))
            continue
        for dist in dists:
            try:
                out[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:  # an optional package must not break provenance
                continue
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
