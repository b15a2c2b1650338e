"""Image decoding: every file becomes an upright 8-bit RGB PIL image, whatever it was stored as."""

from __future__ import annotations

import os

from PIL import Image, ImageOps


def open_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Decode fully and return upright RGB (EXIF orientation applied; alpha composited on white;
    palette, grayscale, 16-bit and CMYK converted)."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
        return to_rgb(im)


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
