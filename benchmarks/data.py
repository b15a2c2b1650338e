"""Data-path throughput of DINO multi-crop (2 x 224 px + 8 x 96 px views), one process, one CPU core.

Three numbers (docs/data-path.md):

1. official  the official DINO pipeline (`DataAugmentationDINO` of facebookresearch/dino, reproduced here
             with torchvision PIL transforms): decode the original 600 x 450 JPEG, then per view
             RandomResizedCrop, flip, colour jitter, grayscale, Gaussian blur, solarisation on PIL,
             ToTensor, Normalize; collated into batches. Samples/s per core.
2. worker    dermctl's loader work with `cache_size = 256` and `gpu_augment` on: read the decode-cache
             entry, per view RandomResizedCrop + flip to uint8 and the photometric parameter draws,
             seeded per image as in training; collated. Samples/s per core (the cache is built first and
             its one-off cost reported separately).
3. device    `augment_batch` (colour jitter, grayscale, blur, solarisation, normalisation) on collated
             uint8 batches on the device: CPU here (one thread), CUDA when present.

Images are synthetic 600 x 450 JPEGs (quality 90, smooth colour fields plus fine texture), written to a
temporary folder. Nothing is downloaded.

Usage: python benchmarks/data.py [--images 48] [--samples 192] [--batch 32] [--device auto|cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torch.utils.data import default_collate
from torchvision import transforms as T

from dermctl.data.cache import DecodeCache
from dermctl.methods.multicrop import MultiCrop
from dermctl.methods.photometric import augment_batch
from dermctl.provenance import sha256_file
from dermctl.train.data import ImageDataset


# -- the official DINO pipeline (main_dino.py DataAugmentationDINO, utils.GaussianBlur / Solarization) ------
class _DinoGaussianBlur:
    def __init__(self, p: float = 0.5, radius_min: float = 0.1, radius_max: float = 2.0) -> None:
        self.prob, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if not random.random() <= self.prob:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class _DinoSolarization:
    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


class OfficialDataAugmentationDINO:
    def __init__(self, global_crops_scale=(0.4, 1.0), local_crops_scale=(0.05, 0.4), local_crops_number=8):
        bicubic = Image.BICUBIC
        flip_and_color_jitter = T.Compose(
            [
                T.RandomHorizontalFlip(p=0.5),
                T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
                T.RandomGrayscale(p=0.2),
            ]
        )
        normalize = T.Compose([T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
        self.global_transfo1 = T.Compose(
            [
                T.RandomResizedCrop(224, scale=global_crops_scale, interpolation=bicubic),
                flip_and_color_jitter,
                _DinoGaussianBlur(1.0),
                normalize,
            ]
        )
        self.global_transfo2 = T.Compose(
            [
                T.RandomResizedCrop(224, scale=global_crops_scale, interpolation=bicubic),
                flip_and_color_jitter,
                _DinoGaussianBlur(0.1),
                _DinoSolarization(0.2),
                normalize,
            ]
        )
        self.local_crops_number = local_crops_number
        self.local_transfo = T.Compose(
            [
                T.RandomResizedCrop(96, scale=local_crops_scale, interpolation=bicubic),
                flip_and_color_jitter,
                _DinoGaussianBlur(p=0.5),
                normalize,
            ]
        )

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        crops = [self.global_transfo1(image), self.global_transfo2(image)]
        crops += [self.local_transfo(image) for _ in range(self.local_crops_number)]
        return crops


def _pil_loader(path: Path) -> Image.Image:  # torchvision ImageFolder's default loader
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


# -- helpers -------------------------------------------------------------------------------------------------
def make_jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = Image.fromarray(rng.integers(60, 220, (9, 12, 3), dtype=np.uint8)).resize(
            (600, 450), Image.BICUBIC
        )
        texture = rng.normal(0, 12, (450, 600, 1))
        arr = np.clip(np.asarray(base, dtype=np.float64) + texture, 0, 255).astype(np.uint8)
        p = folder / f"ISIC_{i:07d}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    return paths


def _rate(fn: Any, samples: int) -> float:
    """Samples per CPU-second of this process (one thread): per-core throughput, insensitive to other
    processes sharing the machine."""
    t0 = time.process_time()
    fn()
    return samples / (time.process_time() - t0)


def run(images: int, samples: int, batch: int, device: str, rounds: int = 3) -> dict[str, Any]:
    torch.set_num_threads(1)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    )
    out: dict[str, Any] = {
        "images": images,
        "samples": samples,
        "batch": batch,
        "threads": 1,
        "rounds": rounds,
    }
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "img", images)
        hashes = [sha256_file(p) for p in paths]
        order = [i % images for i in range(samples)]

        official = OfficialDataAugmentationDINO()
        random.seed(0)
        torch.manual_seed(0)

        def official_epoch() -> None:
            for s in range(0, samples, batch):
                default_collate([official(_pil_loader(paths[i])) for i in order[s : s + batch]])

        cache = DecodeCache(Path(tmp) / "cache", 256)
        t0 = time.process_time()
        cache.warm(paths, hashes)
        out["cache_build_images_per_s"] = images / (time.process_time() - t0)
        out["cache_entry_kb"] = float(np.mean([cache.entry(h).stat().st_size for h in hashes]) / 1024)
        views = MultiCrop(224, 96, (0.4, 1.0), (0.05, 0.4), n_local=8, device_photometric=True)
        ds = ImageDataset(paths, views, 0, cache=cache, hashes=hashes)
        batches: list[Any] = []

        def worker_epoch() -> None:
            for s in range(0, samples, batch):
                batches.append(default_collate([ds[(i, 0)] for i in order[s : s + batch]]))

        official_rates, worker_rates = [], []
        for _ in range(rounds):  # interleaved, best of `rounds`
            official_rates.append(_rate(official_epoch, samples))
            batches.clear()
            worker_rates.append(_rate(worker_epoch, samples))
        official_epoch_rate, worker_rate = max(official_rates), max(worker_rates)

        def to_dev(b: Any) -> Any:
            if isinstance(b, torch.Tensor):
                return b.to(dev)
            if isinstance(b, dict):
                return {k: to_dev(v) for k, v in b.items()}
            return [to_dev(v) for v in b]

        dev_batches = [to_dev(b) for b in batches[:4]]
        augment_batch(dev_batches[0])  # warm-up (kernels, allocator)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        reps = 10 if dev.type == "cuda" else 1
        n = sum(int(b["globals"][0].shape[0]) for b in dev_batches) * reps
        clock = time.perf_counter if dev.type == "cuda" else time.process_time
        t0 = clock()
        for _ in range(reps):
            for b in dev_batches:
                augment_batch(b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        device_rate = n / (clock() - t0)

    out.update(
        official_samples_per_s_per_core=official_epoch_rate,
        worker_samples_per_s_per_core=worker_rate,
        speedup=worker_rate / official_epoch_rate,
        device=str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        device_photometric_samples_per_s=device_rate,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--samples", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    r = run(a.images, a.samples, a.batch, a.device, a.rounds)
    if a.json:
        print(json.dumps(r, indent=2))
        return
    print(
        f"DINO multi-crop 2x224 + 8x96, {r['samples']} samples from {r['images']} 600x450 JPEGs, 1 thread, "
        f"per CPU-second, best of {r['rounds']}"
    )
    print(
        f"  official PIL pipeline (decode + all views) : {r['official_samples_per_s_per_core']:8.1f} samples/s/core"
    )
    print(
        f"  cache read + geometric crops to uint8      : {r['worker_samples_per_s_per_core']:8.1f} samples/s/core"
    )
    print(f"  speed-up                                   : {r['speedup']:8.1f} x")
    print(
        f"  cache build (decode + resize + write)      : {r['cache_build_images_per_s']:8.1f} images/s (once)"
    )
    print(f"  cache entry                                : {r['cache_entry_kb']:8.1f} KB/image")
    print(
        f"  batched photometric step on {r['device']:<14}: {r['device_photometric_samples_per_s']:8.1f} samples/s"
    )


if __name__ == "__main__":
    main()
