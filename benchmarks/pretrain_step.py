"""Training throughput and peak memory of every registered pretraining method, one step at a time.

Measures the engine's step (autocast forward, backward, method hooks, clipping-free optimiser step, EMA
update) on a batch prepared once with the method's own views, so data loading is not included.

Configs:
    CUDA  the paper's: 224 px, method defaults (ResNet-50 SimCLR/BYOL/ColorMe at batch 160/150/50,
          ViT-tiny DINO/iBOT at batch 56, multi-crop as configured), bf16 autocast
    CPU   reduced: resnet18 (CNN methods) / vit_tiny_patch16_224 (ViT methods) at 64 px, batch 8,
          local crops 32 px, fp32

Usage: python benchmarks/pretrain_step.py [--device auto|cpu|cuda] [--steps 10] [--methods simclr,dino]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import default_collate

from dermctl.methods import StepContext, get_method, method_names
from dermctl.runtime.device import resolve_device, resolve_precision
from dermctl.train.config import validate_config
from dermctl.train.engine import build_optimizer, build_schedules


def bench_config(method: str, device: torch.device) -> dict[str, Any]:
    cfg = get_method(method).defaults()
    cfg["method"] = method
    if device.type == "cuda":
        cfg["precision"] = "bf16"
    else:
        cfg.update(image_size=64, batch_size=8, precision="fp32")
        cfg["backbone"] = "vit_tiny_patch16_224" if "vit" in cfg["backbone"] else "resnet18"
        if "local_crop_size" in cfg:
            cfg["local_crop_size"] = 32
    cfg["init"] = "random"
    validate_config(cfg)
    return cfg


def _batch(method: Any, cfg: dict[str, Any], seed: int = 0) -> Any:
    rng = np.random.default_rng(seed)
    size = int(cfg["image_size"]) + 32
    tf = method.transform(True)
    items = [
        tf(Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)))
        for _ in range(cfg["batch_size"])
    ]
    return default_collate(items)


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to(v, device) for v in obj)
    return obj


def bench_method(name: str, device: torch.device, steps: int, warmup: int = 2) -> dict[str, Any]:
    cfg = bench_config(name, device)
    torch.manual_seed(0)
    method = get_method(name)(cfg).to(device)
    method.train()
    opt = build_optimizer(method, cfg, device)
    total = warmup + steps
    sched = build_schedules(dict(cfg, epochs=1), total, cfg["batch_size"])
    method.schedules(1, total)
    batch = _to(_batch(method, cfg), device)
    amp_dtype, _ = resolve_precision(cfg["precision"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = 0.0
    for it in range(total):
        if it == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        ctx = StepContext(
            it=it,
            epoch=0,
            training=True,
            lr=float(sched["lr"][it]),
            weight_decay=0.0,
            momentum=float(sched["momentum"][it]),
        )
        for g in opt.param_groups:
            g["lr"] = ctx.lr
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = method.training_step(batch, ctx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step(ctx)
        opt.step()
        method.after_optimizer_step(ctx)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    secs = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # ru_maxrss is in KiB on Linux; each method runs in its own process (see main)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": name,
        "backbone": cfg["backbone"],
        "image_size": cfg["image_size"],
        "batch_size": cfg["batch_size"],
        "precision": cfg["precision"],
        "step_ms": 1000 * secs / steps,
        "images_per_s": cfg["batch_size"] * steps / secs,
        "peak_mem_mib": peak,
        "loss": float(loss.detach().float()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=10, help="timed steps per method (after 2 warm-up steps)")
    ap.add_argument("--methods", default=None, help="comma-separated subset (default: all registered)")
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    ap.add_argument("--in-process", action="store_true", help="do not start one process per method")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    names = args.methods.split(",") if args.methods else method_names()
    rows = []
    for name in names:
        if args.in_process or len(names) == 1:
            rows.append(bench_method(name, device, args.steps))
        else:  # a fresh process per method: its peak memory is its own
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--steps",
                str(args.steps),
                "--methods",
                name,
                "--json",
            ]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows.extend(json.loads(out))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    dev = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {dev}; torch {torch.__version__}; {args.steps} timed steps; peak memory: "
        + ("CUDA max allocated" if device.type == "cuda" else "process max RSS")
    )
    header = f"{'method':8} {'backbone':22} {'px':>4} {'batch':>5} {'prec':>5} {'ms/step':>9} {'img/s':>8} {'peak MiB':>9}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:8} {r['backbone']:22} {r['image_size']:>4} {r['batch_size']:>5} {r['precision']:>5} "
            f"{r['step_ms']:>9.1f} {r['images_per_s']:>8.1f} {r['peak_mem_mib']:>9.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
