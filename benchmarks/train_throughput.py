"""End-to-end pretraining throughput: the real engine and data loader on generated 600x450 JPEGs.

    python benchmarks/train_throughput.py [--images 1200] [--methods simclr,byol,colorme,dino,ibot]
                                          [--device auto] [--workers N] [--epochs 2] [--dir /tmp/...]

For each method: ingest the images as a corpus once, run `pretrain` for --epochs with the method's real
config (on CUDA: Table 1 batch sizes, 224 px, bf16; on CPU a reduced config: resnet18 / vit_tiny at 64 px,
batch 8) and report the last epoch's images/s, the share of step time spent waiting for data (from the
run's metrics.csv) and the peak GPU memory. Baseline for the ratio column: the method's pure step rate
(`benchmarks/pretrain_step.py`) is what the loader has to keep up with; data_wait_share near 0 means the
loader keeps up.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import make_images  # noqa: E402  (the benchmark image generator)

from dermctl.data.ingest import IngestOptions, run_ingest  # noqa: E402
from dermctl.methods import get_method, method_names  # noqa: E402
from dermctl.train.engine import pretrain  # noqa: E402
from dermctl.workspace import Workspace  # noqa: E402

CPU_OVERRIDES = {"image_size": 64, "batch_size": 8, "local_crop_size": 32}


def overrides(method: str, device: str, epochs: int, workers: int) -> dict:
    cfg = get_method(method).defaults()
    out = {"epochs": epochs, "patience": 0, "num_workers": workers, "warmup_epochs": 0, "val_every": epochs}
    if device == "cpu":
        out.update({k: v for k, v in CPU_OVERRIDES.items() if k in cfg})
        out["backbone"] = "vit_tiny_patch16_224" if "vit" in cfg["backbone"] else "resnet18"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--methods", default=",".join(method_names()))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "dermctl-throughput")
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device

    t0 = time.perf_counter()
    make_images(args.dir / "images", args.images)
    ws = Workspace.at(args.dir / "ws")
    ws.ensure()
    run_ingest("folder", args.dir / "images", ws, IngestOptions(name="corpus", role="corpus", force=True))
    print(
        f"{args.images} JPEGs 600x450 prepared and ingested in {time.perf_counter() - t0:.1f} s; device {device}"
    )
    if device == "cuda":
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(
        f"{'method':8} {'backbone':22} {'batch':>5} {'px':>4} {'img/s':>8} {'data wait':>9} {'peak GPU GiB':>12}"
    )
    for method in args.methods.split(","):
        cfg = get_method(method).defaults()
        cfg.update(overrides(method, device, args.epochs, args.workers), method=method)
        name = f"bench-{method}-{int(time.time())}"
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        pretrain(cfg, [ws.manifests / "corpus.csv"], ws, name=name, device=device)
        with open(ws.runs / name / "metrics.csv", newline="") as fh:
            last = list(csv.DictReader(fh))[-1]
        peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
        print(
            f"{method:8} {cfg['backbone']:22} {cfg['batch_size']:>5} {cfg['image_size']:>4} "
            f"{float(last['images_per_s']):>8.1f} {float(last['data_wait_share']):>9.2f} {peak:>12.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
