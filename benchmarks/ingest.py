"""Benchmark of ingest's validate + hash step (full decode, sha256, pHash) with a cold and a warm cache.

    .venv/bin/python benchmarks/ingest.py [--n 2000] [--workers N] [--dir /tmp/dermctl-bench]

Generates N 600x450 JPEGs with the demo generator (kept in --dir between runs), then times
`examine_all` on an empty hash cache and again on the cache it wrote, and prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.data.demo import DEMO_CLASSES, SKIN_TONES, render_lesion
from dermctl.data.ingest import CACHE_NAME, HashCache, default_workers, examine_all


def make_images(folder: Path, n: int, width: int = 600, height: int = 450, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"bench_{i:05d}.jpg" for i in range(n)]
    missing = [p for p in paths if not p.exists()]
    rng = np.random.default_rng(seed)
    for p in missing:
        cls = DEMO_CLASSES[int(rng.integers(len(DEMO_CLASSES)))]
        skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
        # Rendered at 1/3 size and upscaled (the generator is the slow part here, not what is timed),
        # with full-resolution sensor-like noise so that JPEG files have realistic sizes.
        small = Image.fromarray(render_lesion(rng, max(width, height) // 3, cls, skin))
        big = np.asarray(small.resize((max(width, height),) * 2, Image.Resampling.BICUBIC))[:height, :width]
        noise = rng.integers(-6, 7, big.shape, dtype=np.int16)
        arr = np.clip(big.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        p.write_bytes(buf.getvalue())
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=default_workers())
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "dermctl-bench")
    args = parser.parse_args()

    start = time.perf_counter()
    paths = make_images(args.dir / "images", args.n)
    print(
        f"images: {len(paths)} x 600x450 JPEG in {args.dir / 'images'} (prepared in {time.perf_counter() - start:.1f} s)"
    )
    cache_path = args.dir / CACHE_NAME
    cache_path.unlink(missing_ok=True)

    cache = HashCache(cache_path)
    start = time.perf_counter()
    cold = examine_all(paths, cache, args.workers)
    cache.save()
    t_cold = time.perf_counter() - start
    bad = sum(1 for r in cold.values() if r["reason"])

    start = time.perf_counter()
    warm_cache = HashCache(cache_path)  # includes reading the JSON cache from disk
    warm = examine_all(paths, warm_cache, args.workers)
    t_warm = time.perf_counter() - start
    fields = ("sha256", "width", "height", "reason", "phash")
    same = all({k: warm[p][k] for k in fields} == {k: cold[p][k] for k in fields} for p in paths)
    assert same, "the warm cache must give the same results"

    print(f"workers: {args.workers}; bad files: {bad}")
    print(f"cold cache: {t_cold:.2f} s = {len(paths) / t_cold:.0f} images/s")
    print(f"warm cache: {t_warm:.3f} s = {len(paths) / t_warm:.0f} images/s")
    print(f"warm/cold time ratio: {t_warm / t_cold:.4f} ({t_cold / t_warm:.0f}x faster)")


if __name__ == "__main__":
    main()
