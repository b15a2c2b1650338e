"""dermctl.provenance: versions without importing the libraries they describe."""

from __future__ import annotations

import subprocess
import sys


def test_versions_read_metadata_without_importing_heavy_libraries():
    code = (
        "import sys; from dermctl.provenance import versions; v = versions(); "
        "assert all(k in v for k in ('torch', 'sklearn', 'faiss', 'h5py', 'numpy')), v; "
        "print(sorted(m for m in ('torch', 'sklearn', 'faiss', 'h5py') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_versions_of_loaded_modules_come_from_the_module():
    import numpy

    from dermctl.provenance import versions

    assert versions()["numpy"] == numpy.__version__
