"""Synthetic, derm-like demo data: lesion-like blobs on skin-toned backgrounds.

Four classes differ the way real lesion classes tend to (ABCD rule: asymmetry, border, colour,
diameter): colour, border irregularity, size and texture. The labelled set is laid out like a published
one (`images/<class>/<image_id>.jpg` plus `metadata.csv` with `image_id,patient_id,label,path`), with
1-3 images per patient so that grouped splitting matters. Everything is seeded: the same seed gives
byte-identical files.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.workspace import atomic_write_text


@dataclass(frozen=True)
class LesionClass:
    """How one synthetic class looks."""

    name: str
    colour: tuple[float, float, float]  # mean RGB of the lesion, 0-255
    colour_spread: float  # variegation: how much the colour varies inside the lesion
    radius: tuple[float, float]  # lesion radius as a fraction of the image side (min, max)
    irregularity: float  # amplitude of the border's harmonics (0 = ellipse)
    texture: float  # strength of fine-grained texture inside the lesion


DEMO_CLASSES: tuple[LesionClass, ...] = (
    LesionClass("melanoma", (70, 45, 40), 40.0, (0.26, 0.36), 0.30, 0.25),
    LesionClass("nevus", (140, 95, 70), 8.0, (0.14, 0.22), 0.05, 0.05),
    LesionClass("keratosis", (160, 130, 95), 15.0, (0.20, 0.30), 0.14, 0.55),
    LesionClass("vascular", (185, 60, 75), 12.0, (0.10, 0.18), 0.10, 0.10),
)

# Skin tones from light to dark (roughly Fitzpatrick I-VI), RGB.
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (243, 214, 196),
    (232, 190, 160),
    (210, 161, 126),
    (176, 124, 90),
    (128, 86, 60),
    (86, 58, 42),
)

_LABELLED_STREAM = 1
_UNLABELLED_STREAM = 2


def render_lesion(
    rng: np.random.Generator, size: int, cls: LesionClass, skin: tuple[int, int, int]
) -> np.ndarray:
    """One size x size x 3 uint8 image of a lesion of class `cls` on skin of tone `skin`."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Skin: the tone with an illumination gradient, blotchy low-frequency mottling and pore-scale noise
    # (the varied backgrounds also keep different images far apart in pHash, like real photos).
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.1, 0.3) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    shade = shade + 0.08 * _smooth_noise(rng, size, cells=3)
    tone = np.asarray(skin, np.float32) * rng.uniform(0.93, 1.07, 3).astype(np.float32)
    img = tone[None, None, :] * shade[..., None] + rng.normal(0, 4.0, (size, size, 3)).astype(np.float32)
    # Lesion: a polar radius with random harmonics gives an irregular, asymmetric border.
    cy, cx = rng.uniform(0.3, 0.7, 2)
    r0 = rng.uniform(*cls.radius)
    aspect = rng.uniform(0.75, 1.25)
    theta = np.arctan2(yy - cy, (xx - cx) * aspect)
    dist = np.hypot(yy - cy, (xx - cx) * aspect)
    border = np.ones_like(theta)
    for k in range(2, 7):
        amp = cls.irregularity * rng.uniform(0.3, 1.0) / k**0.5
        border += amp * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    edge_noise = rng.normal(0, cls.irregularity * 0.15, (size, size)).astype(np.float32)
    inside = (r0 * border + edge_noise * r0 - dist) / (0.06 * r0 + 1.0 / size)
    alpha = np.clip(inside, 0.0, 1.0)
    # Colour: the class colour with variegation (a low-frequency field) and texture (high frequency).
    colour = np.asarray(cls.colour, np.float32) * rng.uniform(0.9, 1.1)
    low = _smooth_noise(rng, size, cells=4)[..., None] * cls.colour_spread
    high = rng.normal(0, 1, (size, size, 1)).astype(np.float32) * cls.texture * 40.0
    lesion = colour[None, None, :] + low + high
    out = img * (1 - alpha[..., None]) + lesion * alpha[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    return np.asarray(
        Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
    )


def _jpeg_bytes(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_image(path: Path, data: bytes) -> None:
    """Temp file + rename, so no image is ever torn; not fsynced (demo data is regenerable and an fsync
    per image would dominate the run). The index (metadata.csv) is written last with a full atomic write,
    so an interrupted run leaves at most images that no metadata row lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate_demo(root: Path, n_per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Write a labelled demo set under `root` and return the path of its `metadata.csv`.

    Layout: `root/images/<class>/<image_id>.jpg` and `root/metadata.csv` with columns
    `image_id,patient_id,label,path` (path relative to root). Patients have 1-3 images of one class and
    one skin tone. Readable with `dermctl ingest --dataset csv --root root --label-column label
    --group-column patient_id` or `dermctl ingest --dataset folder --root root/images`.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, _LABELLED_STREAM])
    rows: list[tuple[str, str, str, str]] = []
    patient = 0
    counter = 0
    for cls in DEMO_CLASSES:
        made = 0
        while made < n_per_class:
            patient += 1
            skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
            for _ in range(min(int(rng.integers(1, 4)), n_per_class - made)):
                counter += 1
                image_id = f"DEMO_{counter:05d}"
                rel = f"images/{cls.name}/{image_id}.jpg"
                _write_image(root / rel, _jpeg_bytes(render_lesion(rng, size, cls, skin)))
                rows.append((image_id, f"PAT_{patient:04d}", cls.name, rel))
                made += 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "patient_id", "label", "path"])
    writer.writerows(rows)
    return atomic_write_text(root / "metadata.csv", buf.getvalue())


def generate_unlabelled(root: Path, n: int = 200, size: int = 64, seed: int = 0) -> Path:
    """Write `n` unlabelled images (same generator, all classes mixed) flat into `root`; return `root`.

    Drawn from a random stream separate from `generate_demo`'s, so the images differ from the labelled
    set's for every seed (a pretraining corpus disjoint from the evaluation data).
    """
    root = Path(root)
    rng = np.random.default_rng([seed, _UNLABELLED_STREAM])
    for i in range(n):
        cls = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
        skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        _write_image(root / f"corpus_{i:05d}.jpg", _jpeg_bytes(render_lesion(rng, size, cls, skin)))
    return root
