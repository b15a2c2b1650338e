"""pHash: matches an independent DCT implementation, survives resize + re-encode, separates photos."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from dermctl.data.demo import DEMO_CLASSES, draw_lesion, render_lesion
from dermctl.data.hashing import hamming, near_duplicate_pairs, phash


def _photo(seed: int, w: int = 600, h: int = 450) -> Image.Image:
    rng = np.random.default_rng(seed)
    lesion = draw_lesion(rng, DEMO_CLASSES[seed % 4])
    arr = render_lesion(rng, max(w, h), lesion, seed % 6 + 1)
    return Image.fromarray(arr).crop((0, 0, w, h))


def _reencode(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def _reference_phash(im: Image.Image) -> str:
    """imagehash.phash, written out with an explicit DCT-II matrix (no scipy)."""
    x = np.asarray(im.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    n = np.arange(32)
    c = 2 * np.cos(np.pi * n[:, None] * (2 * n[None, :] + 1) / 64)  # unnormalised DCT-II, like scipy's
    low = (c @ x @ c.T)[:8, :8]
    bits = "".join("1" if v > np.median(low) else "0" for v in low.flatten())
    return f"{int(bits, 2):016x}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_implementation(seed: int) -> None:
    im = _photo(seed, 120, 90)
    assert phash(im) == _reference_phash(im)


def test_format_is_16_hex_digits() -> None:
    h = phash(_photo(0, 64, 64))
    assert len(h) == 16 and int(h, 16) >= 0 and h == h.lower()


def test_robust_to_resize_and_jpeg_reencode() -> None:
    for seed in range(4):
        original = _photo(seed)
        resized = original.resize((300, 225), Image.Resampling.BILINEAR)
        assert hamming(phash(original), phash(resized)) <= 4
        assert hamming(phash(original), phash(_reencode(original, 70))) <= 4
        assert hamming(phash(original), phash(_reencode(resized, 70))) <= 4


def test_different_photos_differ() -> None:
    hashes = [phash(_photo(seed)) for seed in range(8)]
    distances = [hamming(a, b) for i, a in enumerate(hashes) for b in hashes[i + 1 :]]
    assert min(distances) > 8


def test_hamming() -> None:
    assert hamming("0000000000000000", "0000000000000000") == 0
    assert hamming("0000000000000000", "ffffffffffffffff") == 64
    assert hamming("8000000000000001", "0000000000000000") == 2
    with pytest.raises(ValueError):
        hamming("00", "000")


def _brute(hashes: list[str], others: list[str] | None, d: int) -> list[tuple[int, int, int]]:
    out = []
    for i, a in enumerate(hashes):
        for j, b in enumerate(hashes if others is None else others):
            if (others is None and j <= i) or not a or not b:
                continue
            if hamming(a, b) <= d:
                out.append((i, j, hamming(a, b)))
    return sorted(out)


@pytest.mark.parametrize("distance", [0, 1, 4, 6])
def test_near_duplicate_pairs_equal_brute_force(distance: int) -> None:
    rnd = random.Random(distance)
    base = [rnd.getrandbits(64) for _ in range(150)]
    planted = [v ^ sum(1 << b for b in rnd.sample(range(64), rnd.randint(0, 7))) for v in base[:60]]
    hashes = [f"{v:016x}" for v in base + planted] + [""]
    others = [f"{v:016x}" for v in planted[::2]] + [""]
    assert near_duplicate_pairs(hashes, None, distance) == _brute(hashes, None, distance)
    assert near_duplicate_pairs(hashes, others, distance) == _brute(hashes, others, distance)
    assert near_duplicate_pairs(hashes, None, distance)  # the planted copies are found
