"""Synthetic, derm-like demo data where self-supervised pretraining genuinely helps.

Like clinical photos, the classes differ only in lesion *morphology*, while nuisances that carry no label
vary widely and dominate the raw pixels:

- morphology (the label): border shape and regularity, edge sharpness and the pattern inside the lesion
  (homogeneous, variegated blotches, dots and pits, a pale centre with a pigment ring);
- nuisances (drawn from the same distributions for every class): skin tone across Fitzpatrick types I-VI,
  lighting (brightness, white balance, an illumination gradient), lesion pigment strength, scale, rotation,
  aspect, position, hairs and sensor noise.

Features of a randomly initialised network mostly encode the nuisances (tone, brightness, size); a network
pretrained with the usual colour / crop / flip augmentations learns to ignore them and keeps the shape
and pattern, which is the point the demo makes. Nothing about the label is in the colour.

The labelled set is laid out like a published one: `images/<class>/<image_id>.jpg` plus `metadata.csv`
with `image_id,patient_id,label,path,skin_type` (`skin_type` = Fitzpatrick 1-6, the column the
skin-type breakdown reads). A patient has 1-3 photos of one lesion (same shape, new lighting, pose and
hairs) and one skin type, so patient-grouped splitting matters. Everything is seeded: the same seed gives
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
from PIL import Image, ImageDraw

from dermctl.workspace import atomic_write_text


@dataclass(frozen=True)
class LesionClass:
    """How one synthetic class looks: morphology only (no colour)."""

    name: str
    irregularity: float  # amplitude of the border's harmonics (0 = smooth ellipse)
    edge_softness: float  # width of the border's fade, as a fraction of the radius
    pattern: str  # "homogeneous" | "variegated" | "dots" | "ring"


DEMO_CLASSES: tuple[LesionClass, ...] = (
    LesionClass("melanoma", 0.30, 0.08, "variegated"),
    LesionClass("nevus", 0.02, 0.06, "homogeneous"),
    LesionClass("keratosis", 0.07, 0.04, "dots"),
    LesionClass("dermatofibroma", 0.03, 0.35, "ring"),
)

# Skin tones of Fitzpatrick types I-VI (index 0 = type I), RGB.
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


@dataclass(frozen=True)
class Lesion:
    """One patient's lesion: its class and shape, fixed across that patient's photos."""

    cls: LesionClass
    harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) of border harmonics 2..7
    aspect: float
    texture_seed: int


def draw_lesion(rng: np.random.Generator, cls: LesionClass) -> Lesion:
    harmonics = tuple(
        (cls.irregularity * rng.uniform(0.4, 1.0) / k**0.5, rng.uniform(0, 2 * np.pi)) for k in range(2, 8)
    )
    return Lesion(cls, harmonics, float(rng.uniform(0.65, 1.0)), int(rng.integers(2**31)))


def render_lesion(rng: np.random.Generator, size: int, lesion: Lesion, skin_type: int) -> np.ndarray:
    """One size x size x 3 uint8 photo of `lesion` on skin of Fitzpatrick type `skin_type` (1-6); every
    nuisance is drawn from `rng` with the same distribution whatever the class."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Skin: tone (per-person variation), lighting (brightness, white balance, a gradient), mottling, noise.
    tone = np.asarray(SKIN_TONES[skin_type - 1], np.float32) * rng.uniform(0.92, 1.08, 3).astype(np.float32)
    light = rng.uniform(0.7, 1.2) * rng.uniform(0.85, 1.15, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.0, 0.5) * ((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle))
    shade = shade + 0.06 * _smooth_noise(rng, size, cells=3)
    # Lesion pose: scale, position and rotation; the shape itself is the patient's.
    r0 = rng.uniform(0.14, 0.28)
    cy, cx = rng.uniform(0.36, 0.64, 2)
    rot = rng.uniform(0, 2 * np.pi)
    du, dv = xx - cx, yy - cy
    u = du * np.cos(rot) + dv * np.sin(rot)
    v = (-du * np.sin(rot) + dv * np.cos(rot)) / lesion.aspect
    theta = np.arctan2(v, u)
    dist = np.hypot(u, v) / r0  # 1 at the unperturbed border
    border = np.ones_like(theta)
    for k, (amp, phase) in enumerate(lesion.harmonics, start=2):
        border += amp * np.cos(k * theta + phase)
    cls = lesion.cls
    alpha = np.clip((border - dist) / max(cls.edge_softness, 1.5 / (r0 * size)), 0.0, 1.0)
    # Pigment: darker than the skin by a class-independent amount, modulated by the class's pattern.
    pigment = rng.uniform(0.5, 0.8) * _pattern(
        np.random.default_rng(lesion.texture_seed), cls, size, dist, u, v, r0
    )
    lesion_rgb = 1.0 - pigment[..., None] * np.asarray([1.0, 1.12, 1.25], np.float32)
    img = tone * light * shade[..., None] * (1.0 - alpha[..., None] + alpha[..., None] * lesion_rgb)
    img = _hairs(rng, img, size)
    img = img + rng.normal(0, rng.uniform(2.0, 7.0), img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pattern(
    rng: np.random.Generator,
    cls: LesionClass,
    size: int,
    dist: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    r0: float,
) -> np.ndarray:
    """Pigment strength (about 0-1.3) inside the lesion, in the lesion's own frame (it rotates with it)."""
    if cls.pattern == "homogeneous":
        return np.full_like(dist, 1.0)
    if cls.pattern == "variegated":  # blotches of dark and light pigment
        return np.clip(0.8 + 0.9 * _smooth_noise(rng, size, cells=5), 0.15, 1.4)
    if cls.pattern == "ring":  # pale central patch, pigment towards the border
        return 0.15 + 0.95 * np.clip((dist - 0.25) / 0.45, 0.0, 1.0)
    if cls.pattern == "dots":  # milia-like pale dots and dark pits on a mid-tone lesion
        out = np.full_like(dist, 0.7)
        n = int(rng.integers(10, 18))
        pos = rng.uniform(-0.8, 0.8, (n, 2))
        sign = np.where(rng.random(n) < 0.5, -0.6, 0.6)
        width = (0.16 * r0) ** 2
        for (pu, pv), s in zip(pos, sign, strict=True):
            out = out + s * np.exp(-((u - pu * r0) ** 2 + (v - pv * r0) ** 2) / width)
        return np.clip(out, 0.0, 1.4)
    raise ValueError(f"unknown pattern {cls.pattern!r}")


def _hairs(rng: np.random.Generator, img: np.ndarray, size: int) -> np.ndarray:
    """1-5 dark curved hairs across the image (on a third of the photos)."""
    if rng.random() < 0.65:
        return img
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(int(rng.integers(1, 6))):
        p0, p1, c = rng.uniform(-0.1, 1.1, (3, 2)) * size
        t = np.linspace(0, 1, 12)[:, None]
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * c + t**2 * p1  # a quadratic Bezier curve
        draw.line([tuple(p) for p in pts], fill=int(rng.integers(120, 230)), width=1)
    dark = np.asarray(mask, np.float32)[..., None] / 255.0
    return img * (1.0 - 0.8 * dark) + 20.0 * dark


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


METADATA_COLUMNS = ("image_id", "patient_id", "label", "path", "skin_type")


def generate_demo(root: Path, n_per_class: int = 60, size: int = 64, seed: int = 0) -> Path:
    """Write a labelled demo set under `root` and return the path of its `metadata.csv`.

    Layout: `root/images/<class>/<image_id>.jpg` and `root/metadata.csv` with columns
    `image_id,patient_id,label,path,skin_type` (path relative to root; skin_type = Fitzpatrick 1-6, drawn
    uniformly for every class). A patient has 1-3 photos of one lesion and one skin type. Readable with
    `dermctl ingest --dataset csv --root root --label-column label --group-column patient_id` (skin_type is
    carried as an extra column) or `dermctl ingest --dataset folder --root root/images`.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, _LABELLED_STREAM])
    rows: list[tuple[str, str, str, str, str]] = []
    patient = 0
    counter = 0
    for cls in DEMO_CLASSES:
        made = 0
        while made < n_per_class:
            patient += 1
            skin_type = int(rng.integers(1, len(SKIN_TONES) + 1))
            lesion = draw_lesion(rng, cls)
            for _ in range(min(int(rng.integers(1, 4)), n_per_class - made)):
                counter += 1
                image_id = f"DEMO_{counter:05d}"
                rel = f"images/{cls.name}/{image_id}.jpg"
                _write_image(root / rel, _jpeg_bytes(render_lesion(rng, size, lesion, skin_type)))
                rows.append((image_id, f"PAT_{patient:04d}", cls.name, rel, str(skin_type)))
                made += 1
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(METADATA_COLUMNS)
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
        skin_type = int(rng.integers(1, len(SKIN_TONES) + 1))
        lesion = draw_lesion(rng, cls)
        _write_image(root / f"corpus_{i:05d}.jpg", _jpeg_bytes(render_lesion(rng, size, lesion, skin_type)))
    return root
