"""Image decoding: every file becomes an upright 8-bit RGB PIL image, whatever it was stored as; and the
one-file validation the ingest engine runs on every image (decode fully, measure, hash the bytes)."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps

# A truncated JPEG/PNG must be reported, not silently padded with grey (PIL's opt-in behaviour).
ImageFile.LOAD_TRUNCATED_IMAGES = False


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode fully and return upright RGB (EXIF orientation applied; alpha composited on white;
    palette, grayscale, 16-bit and CMYK converted)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(upright(im))


def upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block leaves the pixels as stored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # broken EXIF is common in phone photos and must not lose the image
        return im


def to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: rescale to 8 bits instead of clipping (PIL's default convert clips).
        import numpy as np

        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype("uint8"), mode="L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


@dataclass(frozen=True)
class ImageCheck:
    """The outcome of validating one image file. `reason` is "" when the file decodes."""

    sha256: str
    width: int = 0
    height: int = 0
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason

    def too_small(self, min_size: int) -> str:
        """A reason when the shorter side is below `min_size` pixels, else ""."""
        if self.ok and min(self.width, self.height) < min_size:
            return f"too small ({self.width}x{self.height}, shorter side < {min_size} px)"
        return ""


def decode_checked(path: str | os.PathLike[str]) -> tuple[ImageCheck, Image.Image | None]:
    """Read a file once: SHA-256 of its bytes, a full decode to upright RGB, and its size after EXIF.

    Never raises for a bad image: the reason (empty, corrupt, truncated, too large) is in the result and
    the image is None. Images above PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS) are
    refused without decoding; those merely above the warning limit are decoded normally.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        return ImageCheck(sha256="", reason=f"unreadable ({exc.strerror or exc})"), None
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return ImageCheck(sha256=digest, reason="empty file (0 bytes)"), None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                rgb = to_rgb(upright(im))
    except Image.DecompressionBombError as exc:
        return ImageCheck(sha256=digest, reason=f"too large to decode safely ({exc})"), None
    except Image.UnidentifiedImageError:
        return ImageCheck(sha256=digest, reason="not an image or unknown format"), None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        text = str(exc).strip() or type(exc).__name__
        kind = "truncated" if "truncated" in text.lower() or _looks_truncated(data) else "corrupt"
        return ImageCheck(sha256=digest, reason=f"{kind} ({text})"), None
    except Exception as exc:  # a decoder plug-in can raise anything on hostile input; keep going
        return ImageCheck(sha256=digest, reason=f"corrupt ({type(exc).__name__}: {exc})"), None
    if rgb.width < 1 or rgb.height < 1:
        return ImageCheck(sha256=digest, reason="corrupt (zero-sized image)"), None
    return ImageCheck(sha256=digest, width=rgb.width, height=rgb.height), rgb


def _looks_truncated(data: bytes) -> bool:
    """A JPEG without its end-of-image marker or a PNG without its IEND chunk was cut short."""
    tail = data[-64:].rstrip(b"\x00")
    if data.startswith(b"\xff\xd8"):
        return not tail.endswith(b"\xff\xd9")
    if data.startswith(b"\x89PNG"):
        return b"IEND" not in tail
    return False


def validate_image(path: str | os.PathLike[str], min_size: int = 32) -> ImageCheck:
    """Validate one file: fully decoded, upright size, sha256; reason set when unusable or too small."""
    check, _ = decode_checked(path)
    small = check.too_small(min_size)
    if small:
        return ImageCheck(sha256=check.sha256, width=check.width, height=check.height, reason=small)
    return check
