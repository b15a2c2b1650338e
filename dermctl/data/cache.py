"""Decode cache: each training image decoded once, shrunk, and kept as a small raw uint8 file.

A pretraining epoch over full-size originals spends most of its CPU time in JPEG decoding (ISIC images
are often several megapixels); DINO-style training only ever looks at crops resized to 224 / 96 px. So
each image is decoded once (`open_rgb`: upright RGB), resized so that its shorter side is `size` px
(torchvision's `Resize(size, BICUBIC)` on PIL: longer side int(size * long / short), PIL's antialiased
bicubic; never upscaled: an image already at most `size` px on its shorter side is stored as is), and
saved as one `.npy` (uint8, H x W x 3) per image. Originals of at most DIRECT_MAX_PIXELS (64 x 64) that
need no shrinking get no entry and are decoded every time: that costs less than reading an entry back
(a 32 px PNG: 0.16 ms against 0.27 ms), and a tiny-image corpus is not copied into thousands of files.

    <workdir>/cache/decoded/s<size>/<sha256[:2]>/<sha256>.npy

Entries are keyed by the image's SHA-256 from its manifest row and the cache size, so a changed manifest
(new or re-encoded images: new hashes) gets new entries on first use and never reads a stale one;
unchanged images are reused across epochs, runs and manifests. Without a hash the key is derived from the
absolute path, byte size and mtime. Every entry is written atomically (temporary file, rename), so
concurrent loader workers or ranks writing the same entry are harmless, and ends with a CRC-32 of its
bytes (8 bytes after the array, which `np.load` ignores), checked on every read: an entry torn by a power
cut or altered on disk is rebuilt, never read. Entries are not fsynced: an fsync per image was most of a
short run's first epoch (about 14 ms per image, against well under 1 ms to decode a small one), and the
cache only holds what can be rebuilt from the originals. About 262 KB per 4:3 image at 256 px (25k ISIC
images: ~6.5 GB).

Example:
    >>> cache = DecodeCache.in_workspace(Workspace.at("work"), 256)
    >>> img = cache.image(Path("isic/ISIC_0000000.jpg"), sha256="5f1c...")   # PIL, shorter side 256
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.data.images import open_rgb
from dermctl.errors import DataError
from dermctl.workspace import Workspace, disk_full, is_disk_full, remove_stale_temps

CACHE_FOLDER = "decoded"
DEFAULT_CACHE_SIZE = 256  # shorter side for 224 px training (the usual Resize(256) before a 224 crop)
DIRECT_MAX_PIXELS = 64 * 64  # unshrunk originals this small are decoded directly, never stored
CHECK_MAGIC = b"DCRC"  # trailer: magic + little-endian CRC-32 of everything before it
_TRAILER = len(CHECK_MAGIC) + 4


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after shrinking the shorter side to `size` (torchvision's rule); never larger."""
    short, long = min(width, height), max(width, height)
    if short <= size:
        return width, height
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def stored(width: int, height: int, size: int) -> bool:
    """Whether the cache keeps an entry for an original of this size: shrunk ones and larger ones."""
    return resized_size(width, height, size) != (width, height) or width * height > DIRECT_MAX_PIXELS


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


def _npy_view(body: memoryview) -> np.ndarray:
    """The array of `.npy` bytes without copying them (np.load on a BytesIO copies: 3x slower at 256 px)."""
    fh = io.BytesIO(body)
    version = np.lib.format.read_magic(fh)
    read_header = (
        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read_header(fh)
    count = int(np.prod(shape))
    if fortran or dtype.hasobject or fh.tell() + count * dtype.itemsize != len(body):
        raise ValueError("not a C-ordered array filling the entry")
    return np.frombuffer(body, dtype=dtype, count=count, offset=fh.tell()).reshape(shape)


def _remove_stale_temps(target: Path) -> None:
    """A killed worker's temporary of this entry goes (`remove_stale_temps`); the folder is listed first,
    because that glob compiles a pattern per call (1.5 ms, on every entry built)."""
    prefix = f".{target.name}."
    with os.scandir(target.parent) as entries:
        if any(e.name.startswith(prefix) and e.name.endswith(".tmp") for e in entries):
            remove_stale_temps(target)


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
        img = open_rgb(source)
        arr = np.ascontiguousarray(np.asarray(resize_shorter(img, self.size), dtype=np.uint8))
        if stored(img.width, img.height, self.size):
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
        naming it. Small originals that are never stored (`stored`) count as built each time."""
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
            data = target.read_bytes()  # one read; the check needs every byte anyway
        except FileNotFoundError:
            return None
        except OSError:  # unreadable entry (disk trouble): rebuild
            return None
        body = memoryview(data)[:-_TRAILER]
        if (
            len(data) <= _TRAILER
            or data[-_TRAILER:-4] != CHECK_MAGIC
            or zlib.crc32(body) != int.from_bytes(data[-4:], "little")
        ):
            return None  # torn, altered, foreign or from before the check: rebuild
        try:
            arr = _npy_view(body)
        except (OSError, ValueError, EOFError):
            return None
        ok = arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3 and min(arr.shape[:2]) <= self.size
        return arr if ok else None

    def _write(self, target: Path, arr: np.ndarray) -> None:
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        buf.write(CHECK_MAGIC + zlib.crc32(buf.getbuffer()).to_bytes(4, "little"))
        # The writer's pid in the temp's name lets `remove_stale_temps` tell a killed worker's leftover.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(target)
            # os.open with 0o666: the entry gets the mode the umask gives (mkstemp would make it 0600)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with open(fd, "wb", closefd=True) as fh:
                    fh.write(buf.getbuffer())
                os.replace(tmp, target)  # readers see no entry or a whole one
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(target, exc) from exc
            raise DataError(
                f"{target}: cannot write decode cache entry ({exc.strerror or exc}); "
                "set cache_size = 0 to read the original images instead"
            ) from exc
