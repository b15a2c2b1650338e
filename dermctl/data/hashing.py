"""Perceptual hashing for near-duplicate detection: the DCT pHash (Zauner 2010, "Implementation and
Benchmarking of Perceptual Image Hash Functions"), in the widely used `imagehash.phash` form: grayscale,
32x32 Lanczos resize, 2-D DCT-II, the top-left 8x8 coefficients thresholded at their median -> 64 bits,
written as 16 hex digits (first coefficient = most significant bit)."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy.fft import dct

HASH_SIZE = 8
HIGHFREQ_FACTOR = 4
HEX_DIGITS = HASH_SIZE * HASH_SIZE // 4


def phash(image: Image.Image) -> str:
    """64-bit DCT perceptual hash of an image as 16 lowercase hex digits.

    Robust to resizing and JPEG re-encoding (typically a distance of 0-4 bits), while unrelated photos
    differ in about half of the 64 bits.
    """
    side = HASH_SIZE * HIGHFREQ_FACTOR
    gray = image.convert("L").resize((side, side), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    coeffs = dct(dct(pixels, axis=0), axis=1)[:HASH_SIZE, :HASH_SIZE]
    bits = (coeffs > np.median(coeffs)).flatten()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return f"{value:0{HEX_DIGITS}x}"


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths: {a!r} vs {b!r}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


def near_duplicate_pairs(
    hashes: list[str], others: list[str] | None = None, max_distance: int = 4
) -> list[tuple[int, int, int]]:
    """All pairs within `max_distance` bits, sorted: (i, j, distance).

    With `others` None, pairs within `hashes` (i < j); otherwise pairs (i in hashes, j in others).
    Multi-index hashing: split the 64 bits into max_distance + 1 blocks; by pigeonhole two hashes within
    max_distance agree exactly on at least one block, so only bucket-mates are compared (fast on 100k
    images). Empty hashes ("") are skipped.
    """
    if max_distance < 0:
        return []
    bits = HASH_SIZE * HASH_SIZE
    n_blocks = min(max_distance + 1, bits)
    bounds = [round(k * bits / n_blocks) for k in range(n_blocks + 1)]
    a_ids, a_vals = _as_arrays(hashes)
    b_ids, b_vals = (a_ids, a_vals) if others is None else _as_arrays(others)
    found: set[tuple[int, int, int]] = set()
    for k in range(n_blocks):
        lo, hi = bounds[k], bounds[k + 1]
        mask = np.uint64((1 << (hi - lo)) - 1)
        a_key = (a_vals >> np.uint64(lo)) & mask
        b_key = a_key if others is None else (b_vals >> np.uint64(lo)) & mask
        b_buckets = _buckets(b_key)
        for key, a_idx in _buckets(a_key).items():
            b_idx = b_buckets.get(key)
            if b_idx is None:
                continue
            for start in range(0, len(a_idx), 1024):  # chunked: a degenerate bucket stays in memory
                chunk = a_idx[start : start + 1024]
                dist = np.bitwise_count(a_vals[chunk][:, None] ^ b_vals[b_idx][None, :])
                rows, cols = np.nonzero(dist <= max_distance)
                for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
                    i, j = int(a_ids[chunk[r]]), int(b_ids[b_idx[c]])
                    if others is None and j <= i:
                        continue
                    found.add((i, j, int(dist[r, c])))
    return sorted(found)


def _as_arrays(hashes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.array([i for i, h in enumerate(hashes) if h], dtype=np.int64)
    vals = np.array([int(h, 16) for h in hashes if h], dtype=np.uint64)
    return ids, vals


def _buckets(keys: np.ndarray) -> dict[int, np.ndarray]:
    if keys.size == 0:
        return {}
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    return {int(sorted_keys[g[0]]): order[g] for g in np.split(np.arange(keys.size), cuts)}
