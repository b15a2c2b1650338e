"""Data-parallel pretraining on CPU (gloo): N processes vs 1 at the same global batch.

    python benchmarks/ddp.py [--method simclr] [--procs 2] [--epochs 3] [--images 32] [--global-batch 8]
                             [--image-size 64] [--backbone resnet18] [--json]

Builds a synthetic corpus (random RGB images, 25 % val) in a temporary folder, runs `dermctl pretrain`
once in one process (OMP threads = procs) and once under `torchrun --nproc_per_node procs` (1 OMP thread
each, so both use the same cores), then prints the two loss curves side by side and the training
throughput (images/s of the global batch, mean over epochs) with their ratios. Both runs use SGD and the
same seed: with synchronised BatchNorm the curves should agree to ~1e-3.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from dermctl.data.manifest import Manifest, Row, write_manifest

TINY_HEADS = {
    "simclr": {"proj_hidden_dim": 128, "proj_out_dim": 64},
    "byol": {"proj_hidden_dim": 128, "proj_out_dim": 64, "pred_hidden_dim": 128},
    "colorme": {"decoder_channels": [64, 32, 16, 16, 8], "kl_reduction": "batchmean", "sync_bn": True},
    "dino": {"out_dim": 256, "hidden_dim": 128, "bottleneck_dim": 64, "local_crops_number": 2},
    "ibot": {"out_dim": 256, "patch_out_dim": 256, "hidden_dim": 128, "bottleneck_dim": 64},
}


def make_corpus(folder: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        p = folder / "img" / f"im{i:04d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(p)
        rows.append(Row(path=str(p), split="val" if i % 4 == 3 else "train", role="corpus"))
    path = folder / "corpus.csv"
    write_manifest(Manifest(name="corpus", rows=rows), path)
    return path


def run(cmd: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("DERMCTL_DEBUG_STATE_HASH_DIR", None)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"benchmark run failed ({' '.join(cmd[:6])} ...):\n{proc.stderr[-2000:]}")


def metrics(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [
            {k: float(v) if v not in ("", "true", "false") else 0.0 for k, v in r.items()}
            for r in csv.DictReader(fh)
        ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="simclr", choices=sorted(TINY_HEADS))
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument(
        "--backbone", default=None, help="default: resnet18 (CNN methods), vit_tiny (ViT methods)"
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    backbone = args.backbone or ("vit_tiny_patch16_224" if args.method in ("dino", "ibot") else "resnet18")
    cfg = {
        "backbone": backbone,
        "epochs": args.epochs,
        "global_batch": args.global_batch,
        "image_size": args.image_size,
        "num_workers": 0,
        "patience": 0,
        "optimizer": "sgd",
        "lr": 0.05,
        "lr_scaling": "none",
        "warmup_epochs": 0,
        **TINY_HEADS[args.method],
    }
    if args.method in ("dino", "ibot"):
        cfg.update(
            local_crop_size=max(16, args.image_size // 2), warmup_teacher_temp_epochs=0, drop_path_rate=0.0
        )
    sets = [a for k, v in cfg.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = make_corpus(root, args.images, args.image_size + 8)
        base = ["-m", "dermctl", "-q", "-C", str(root / "ws"), "pretrain", "--method", args.method]
        base += ["--data", str(corpus), "--device", "cpu", *sets]
        run([sys.executable, *base, "--name", "one"], threads=args.procs)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        run([*launcher, "--nproc_per_node", str(args.procs), *base, "--name", "many"], threads=1)
        one = metrics(root / "ws" / "runs" / "one" / "metrics.csv")
        many = metrics(root / "ws" / "runs" / "many" / "metrics.csv")
    ips_one = float(np.mean([r["images_per_s"] for r in one]))
    ips_many = float(np.mean([r["images_per_s"] for r in many]))
    report = {
        "method": args.method,
        "backbone": backbone,
        "procs": args.procs,
        "global_batch": args.global_batch,
        "image_size": args.image_size,
        "epochs": [
            {
                "epoch": int(a["epoch"]),
                "train_loss_1": a["train_loss"],
                f"train_loss_{args.procs}": b["train_loss"],
                "val_loss_1": a["val_loss"],
                f"val_loss_{args.procs}": b["val_loss"],
            }
            for a, b in zip(one, many, strict=True)
        ],
        "images_per_s_1": ips_one,
        f"images_per_s_{args.procs}": ips_many,
        "speedup": ips_many / ips_one,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    n = args.procs
    print(f"{args.method} / {backbone} at {args.image_size} px, global batch {args.global_batch}, CPU gloo")
    print(
        f"{'epoch':>5} {'train 1p':>10} {f'train {n}p':>10} {'ratio':>8} {'val 1p':>10} {f'val {n}p':>10} {'ratio':>8}"
    )
    for a, b in zip(one, many, strict=True):
        print(
            f"{int(a['epoch']):>5} {a['train_loss']:>10.5f} {b['train_loss']:>10.5f} "
            f"{b['train_loss'] / a['train_loss']:>8.5f} {a['val_loss']:>10.5f} {b['val_loss']:>10.5f} "
            f"{b['val_loss'] / a['val_loss']:>8.5f}"
        )
    print(f"images/s: 1 process {ips_one:.1f}, {n} processes {ips_many:.1f}, ratio {ips_many / ips_one:.2f}")


if __name__ == "__main__":
    main()
