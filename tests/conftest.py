"""Shared test fixtures: tests run on CPU with tiny models, tiny images and tiny data."""

from __future__ import annotations

import os

os.environ.setdefault("DERMCTL_NO_DOWNLOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
