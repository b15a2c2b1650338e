"""Image validation: every odd format decodes to upright RGB; every broken file gets a reason."""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from dermctl.data.images import decode_checked, open_rgb, validate_image


def _photo(w: int = 80, h: int = 60, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)


def _save(im: Image.Image, path: Path, fmt: str, **kw: object) -> Path:
    im.save(path, format=fmt, **kw)
    return path


def test_valid_jpeg_size_and_sha256(tmp_path: Path) -> None:
    p = _save(_photo(80, 60), tmp_path / "a.jpg", "JPEG")
    check = validate_image(p, min_size=32)
    assert check.ok and (check.width, check.height) == (80, 60)
    assert check.sha256 == hashlib.sha256(p.read_bytes()).hexdigest()


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    check = validate_image(p)
    assert not check.ok and check.reason.startswith("empty file")


def test_truncated_jpeg_is_rejected_not_padded(tmp_path: Path) -> None:
    data = (_save(_photo(200, 150), tmp_path / "full.jpg", "JPEG", quality=95)).read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    check = validate_image(p)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert not check.ok and "truncated" in check.reason


def test_truncated_png_is_rejected(tmp_path: Path) -> None:
    data = _save(_photo(120, 90), tmp_path / "full.png", "PNG").read_bytes()
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) * 2 // 3])
    assert not validate_image(p).ok


def test_garbage_bytes_are_not_an_image(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"this is not an image at all" * 20)
    check = validate_image(p)
    assert not check.ok and "not an image" in check.reason


def test_corrupt_jpeg_body(tmp_path: Path) -> None:
    data = bytearray(_save(_photo(120, 90), tmp_path / "a.jpg", "JPEG").read_bytes())
    data[200:] = b"\x00" * (len(data) - 200)  # header kept, entropy-coded data destroyed
    p = tmp_path / "bad.jpg"
    p.write_bytes(bytes(data))
    assert not validate_image(p).ok


def test_too_small_uses_shorter_side(tmp_path: Path) -> None:
    p = _save(_photo(100, 20), tmp_path / "thin.png", "PNG")
    check = validate_image(p, min_size=32)
    assert not check.ok and "too small" in check.reason and "100x20" in check.reason
    assert validate_image(p, min_size=16).ok


def test_cmyk_jpeg(tmp_path: Path) -> None:
    p = _save(_photo().convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG")
    check, image = decode_checked(p)
    assert check.ok and image is not None and image.mode == "RGB" and image.size == (80, 60)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path: Path) -> None:
    arr = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(arr).save(p)
    assert Image.open(p).mode.startswith("I")
    check, image = decode_checked(p)
    assert check.ok and image is not None
    px = np.asarray(image)
    assert px.max() >= 250 and px.min() <= 5 and 100 < px.mean() < 155  # a full ramp, not all white


def test_palette_and_alpha(tmp_path: Path) -> None:
    pal = _photo().convert("P", palette=Image.Palette.ADAPTIVE)
    p1 = _save(pal, tmp_path / "pal.png", "PNG")
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    p2 = _save(rgba, tmp_path / "alpha.png", "PNG")
    assert validate_image(p1).ok
    check, image = decode_checked(p2)
    assert check.ok and image is not None
    assert image.getpixel((5, 5)) == (255, 255, 255)  # transparent -> composited on white


def test_exif_orientation_swaps_width_and_height(tmp_path: Path) -> None:
    im = _photo(80, 40)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    p = tmp_path / "rot.jpg"
    im.save(p, format="JPEG", exif=exif.tobytes())
    check = validate_image(p)
    assert (check.width, check.height) == (40, 80)
    assert open_rgb(p).size == (40, 80)


def test_decompression_bomb_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = _save(_photo(64, 64), tmp_path / "big.png", "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 x limit: a "bomb"
    check = validate_image(p)
    assert not check.ok and "too large" in check.reason
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # above the warning limit only: decoded quietly
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_image(p).ok


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    check = validate_image(tmp_path / "nope.jpg")
    assert not check.ok and "unreadable" in check.reason


def test_open_rgb_roundtrip_bytes(tmp_path: Path) -> None:
    buf = io.BytesIO()
    _photo().save(buf, format="PNG")
    p = tmp_path / "a.png"
    p.write_bytes(buf.getvalue())
    assert np.array_equal(np.asarray(open_rgb(p)), np.asarray(_photo()))
