"""Decode cache: each training image decoded once, shrunk, and kept as a small raw uint8 file.

A pretraining epoch over full-size originals spends most of its CPU time in JPEG decoding (ISIC images
are often several megapixels); DINO-style training only ever looks at crops resized to 224 / 96 px. So
each image is decoded once (`open_rgb`: upright RGB), resized so that its shorter side is `size` px
(torchvision's `Resize(size, BICUBIC)` on PIL: longer side int(size * long / short), PIL's antialiased
bicubic; never upscaled: an image already at most `size` px on its shorter side is stored as is), and
saved as one `.npy` (uint8, H x W x 3) per image:

    <workdir>/cache/decoded/s<size>/<sha256[:2]>/<sha256>.npy

Entries are keyed by the image's SHA-256 from its manifest row and the cache size, so a changed manifest
(new or re-encoded images: new hashes) gets new entries on first use and never reads a stale one;
unchanged images are reused across epochs, runs and manifests. Without a hash the key is derived from the
absolute path, byte size and mtime. Every entry is written atomically (temporary file, fsync, rename), so
concurrent loader workers or ranks writing the same entry are harmless and a crash leaves no torn file;
an unreadable entry is rebuilt. About 262 KB per 4:3 image at 256 px (25k ISIC images: ~6.5 GB).

Example:
    >>> cache = DecodeCache.in_workspace(Workspace.at("work"), 256)
    >>> img = cache.image(Path("isic/ISIC_0000000.jpg"), sha256="5f1c...")   # PIL, shorter side 256
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.data.images import open_rgb
from dermctl.errors import DataError
from dermctl.workspace import Workspace, atomic_open

CACHE_FOLDER = "decoded"
DEFAULT_CACHE_SIZE = 256  # shorter side for 224 px training (the usual Resize(256) before a 224 crop)


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after shrinking the shorter side to `size` (torchvision's rule); never larger."""
    short, long = min(width, height), max(width, height)
    if short <= size:
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """The cache's resize: shorter side to `size` with PIL bicubic (antialiased), never upscaling."""
    target = resized_size(img.width, img.height, size)
    if target == img.size:
        return img
    return img.resize(target, Image.Resampling.BICUBIC)


def path_key(path: Path) -> str:
    """A key for an image without a known SHA-256: absolute path, byte size and mtime (changes on edit)."""
    st = path.stat()
    text = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return "p" + hashlib.sha256(text.encode("utf-8")).hexdigest()[1:]


@dataclass
class DecodeCache:
    """Resized uint8 copies of images under `root` (one folder per `size`). `hits` / `misses` count this
    process's lookups (each loader worker has its own counts)."""

    root: Path
    size: int = DEFAULT_CACHE_SIZE
    hits: int = field(default=0, compare=False)
    misses: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise DataError(f"decode cache size {self.size!r}: expected a positive number of pixels")
        self.root = Path(self.root)

    @classmethod
    def in_workspace(cls, workspace: Workspace, size: int = DEFAULT_CACHE_SIZE) -> DecodeCache:
        """The cache of a workdir: `<workdir>/cache/decoded/s<size>/`."""
        return cls(workspace.cache / CACHE_FOLDER / f"s{size}", size)

    def entry(self, key: str) -> Path:
        """Where the image with this key (SHA-256) is stored."""
        return self.root / key[:2] / f"{key}.npy"

    def load(self, path: str | os.PathLike[str], sha256: str | None = None) -> np.ndarray:
        """The resized image as uint8 (H, W, 3): from the cache, or decoded, stored, then returned.
        Raises OSError/ValueError for an original that cannot be decoded, DataError when the entry
        cannot be written."""
        source = Path(path)
        target = self.entry(sha256 or path_key(source))
        arr = self._read(target)
        if arr is not None:
            self.hits += 1
            return arr
        self.misses += 1
        arr = np.ascontiguousarray(np.asarray(resize_shorter(open_rgb(source), self.size), dtype=np.uint8))
        self._write(target, arr)
        return arr

    def image(self, path: str | os.PathLike[str], sha256: str | None = None) -> Image.Image:
        """`load` as a PIL RGB image."""
        return Image.fromarray(self.load(path, sha256), mode="RGB")

    def contains(self, path: str | os.PathLike[str], sha256: str | None = None) -> bool:
        return self.entry(sha256 or path_key(Path(path))).is_file()

    def warm(
        self,
        paths: Sequence[Path],
        hashes: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:
        """Build every missing entry up front; (built, already cached). A bad original is a DataError
        naming it."""
        built = reused = 0
        for i, p in enumerate(paths):
            sha = hashes[i] if hashes else None
            if self.contains(p, sha):
                reused += 1
            else:
                try:
                    self.load(p, sha)
                except (OSError, ValueError) as exc:
                    raise DataError(f"{p}: cannot decode image: {exc}") from exc
                built += 1
            if progress is not None:
                progress(i + 1, len(paths))
        return built, reused

    def _read(self, target: Path) -> np.ndarray | None:
        try:
            arr = np.load(target, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):  # damaged entry (disk trouble, foreign file): rebuild
            return None
        ok = arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) <= self.size
        return arr if ok else None

    def _write(self, target: Path, arr: np.ndarray) -> None:
        try:
            with atomic_open(target, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        except OSError as exc:
            raise DataError(
                f"{target}: cannot write decode cache entry ({exc.strerror or exc}); "
                "set cache_size = 0 to read the original images instead"
            ) from exc
