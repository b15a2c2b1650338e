"""Short-run speed: a 3-epoch `dermctl pretrain` through the real CLI against a plain lightly loop.

    .venv/bin/python benchmarks/short_run.py                 # 3 epochs, all 1797 digits, 1 repeat
    .venv/bin/python benchmarks/short_run.py --repeats 3     # interleaved: dermctl, lightly, dermctl, ...
    .venv/bin/python benchmarks/short_run.py --images 512 --epochs 2    # a quicker look

The reference needs lightly (a dev-only tool, never a runtime dependency): pip install -e '.[bench]'.

Data: scikit-learn's `load_digits` upscaled to 32 px RGB PNGs (as benchmarks/learning.py writes them),
ingested once with `dermctl ingest --dataset folder --unlabelled` (not timed). Both sides train on the
same files: the manifest's train rows, decoded from the PNGs with PIL.

Work, the same on both sides: SimCLR on timm resnet18 (random init), two 32 px views per image with
dermctl's SimCLR defaults (crop scale (0.08, 1), colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grey p 0.2,
blur p `blur_p`, flip), projection head 512-`proj_hidden_dim`-`proj_out_dim` with batch norm after both
linear layers, NT-Xent at `temperature`, Adam at `lr` (lr_scaling none) with weight decay, batch 128,
drop_last, `num_workers` as dermctl's default (-1: cores - 1), torch's default threads, fp32 on the CPU.
dermctl: `dermctl pretrain --method simclr --init random --set backbone=resnet18 --set image_size=32
--set batch_size=128 --set epochs=3 --set lr_scaling=none`, as a user runs it, in a workspace whose decode
cache is emptied before every run (each run is a first run). It also does what a plain loop does not: the
image hash check, a validation pass every epoch, checkpoints (+ hashes) every epoch, the backbone export.
Reference: a plain loop around lightly's SimCLRTransform, SimCLRProjectionHead and NTXentLoss with a
standard DataLoader (shuffle, the same workers), in its own process.

Figures: per-epoch training images/s of each side (images trained / seconds of the epoch's loop, from
dermctl's metrics.csv and measured the same way in the reference) and the end-to-end wall time of each
process from launch to exit (interpreter start, imports and everything above included). The ratio is
reference wall / dermctl wall: >= 1.0 means dermctl's short run is at least as fast end to end.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

INSTALL_HINT = "lightly is not installed: the reference loop needs it (pip install -e '.[bench]')"
SETTINGS = {"backbone": "resnet18", "image_size": 32, "batch_size": 128, "lr_scaling": "none"}


def _env() -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", DERMCTL_NO_DOWNLOAD="1")


def prepare(root: Path, n_images: int | None) -> Path:
    """Digits as 32 px PNGs under root/digits, ingested into root/ws; returns the manifest."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from learning import digit_images, write_pngs  # the digits exactly as the learning benchmark has them

    images, _ = digit_images(32)
    write_pngs(root / "digits", images[:n_images] if n_images else images)
    ws = root / "ws"
    cmd = [sys.executable, "-m", "dermctl", "--workdir", str(ws), "--quiet", "ingest", "--dataset", "folder"]
    cmd += ["--root", str(root / "digits"), "--unlabelled", "--name", "digits"]
    subprocess.run(cmd, env=_env(), check=True, capture_output=True)
    return ws / "manifests" / "digits.csv"


def train_files(manifest: Path) -> list[str]:
    """Absolute paths of the manifest's train rows (the images dermctl trains on)."""
    from dermctl.data.manifest import read_manifest

    m = read_manifest(manifest)
    return [str(m.resolve(r)) for r in m.rows if r.split == "train"]


def run_dermctl(ws: Path, manifest: Path, name: str, epochs: int) -> dict[str, Any]:
    shutil.rmtree(ws / "cache" / "decoded", ignore_errors=True)  # a first run, as a new user's
    cmd = [sys.executable, "-m", "dermctl", "--workdir", str(ws), "--quiet", "pretrain", "--method", "simclr"]
    cmd += ["--data", str(manifest), "--name", name, "--init", "random"]
    for k, v in {**SETTINGS, "epochs": epochs}.items():
        cmd += ["--set", f"{k}={v}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dermctl pretrain failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    with open(ws / "runs" / name / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {
        "wall": wall,
        "img_s": [float(r["images_per_s"]) for r in rows],
        "loop_s": sum(float(r["seconds"]) for r in rows),
    }


def run_reference(manifest: Path, epochs: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--reference-of", str(manifest), "--epochs", str(epochs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"reference loop failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall": wall, "img_s": out["img_s"], "loop_s": out["loop_s"]}


# -- the reference loop (runs in its own process: its imports count, as dermctl's do) ----------------


class _Files:
    def __init__(self, paths: list[str], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Any:
        from PIL import Image

        with Image.open(self.paths[i]) as img:
            return self.transform(img.convert("RGB"))


def reference(manifest: Path, epochs: int) -> None:
    """A plain lightly SimCLR loop over the manifest's train files; prints one JSON line of figures."""
    import timm
    import torch
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from lightly.utils.scheduler import cosine_schedule

    from dermctl.methods.registry import resolve_config
    from dermctl.runtime.device import resolve_num_workers

    cfg = resolve_config("simclr", {**SETTINGS, "epochs": epochs, "init": "random"})
    s = cfg["color_strength"]
    transform = SimCLRTransform(
        input_size=cfg["image_size"],
        cj_prob=cfg["p_jitter"],
        cj_strength=s,
        min_scale=cfg["crop_scale_min"],
        random_gray_scale=cfg["p_gray"],
        gaussian_blur=cfg["blur_p"],
        hf_prob=cfg["hflip_p"],
    )
    torch.manual_seed(cfg["seed"])
    backbone = timm.create_model(cfg["backbone"], num_classes=0)
    head = SimCLRProjectionHead(backbone.num_features, cfg["proj_hidden_dim"], cfg["proj_out_dim"])
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    criterion = NTXentLoss(temperature=cfg["temperature"])
    loader = torch.utils.data.DataLoader(
        _Files(train_files(manifest), transform),
        batch_size=cfg["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=resolve_num_workers(cfg["num_workers"]),
    )
    steps, step, rates, loop_s = epochs * len(loader), 0, [], 0.0
    for _ in range(epochs):
        backbone.train(), head.train()
        t0, n = time.perf_counter(), 0
        for v1, v2 in loader:
            for g in opt.param_groups:
                g["lr"] = cosine_schedule(step, steps, cfg["lr"], cfg["min_lr"])
            loss = criterion(head(backbone(v1)), head(backbone(v2)))
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += v1.shape[0]
            step += 1
        secs = time.perf_counter() - t0
        rates.append(n / secs)
        loop_s += secs
    print(json.dumps({"img_s": rates, "loop_s": loop_s}))


# -- report -------------------------------------------------------------------------------------------


def _rates(values: list[float]) -> str:
    return " ".join(f"{v:6.1f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="interleaved pairs of runs")
    p.add_argument("--images", type=int, default=None, help="use the first N digits (default: all 1797)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the data here (default: a temp dir)")
    p.add_argument("--reference-of", type=Path, default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args(argv)
    try:
        import lightly  # noqa: F401
    except ImportError:
        print(INSTALL_HINT)
        return 2
    if args.reference_of is not None:
        reference(args.reference_of, args.epochs)
        return 0

    tmp = tempfile.TemporaryDirectory(prefix="dermctl-short-run-") if args.workdir is None else None
    root = Path(tmp.name) if tmp else args.workdir
    root.mkdir(parents=True, exist_ok=True)
    manifest = prepare(root, args.images)
    n_train = len(train_files(manifest))
    print(
        f"SimCLR resnet18, 32 px, batch 128, {args.epochs} epochs, {n_train} train images (digits PNG); "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(f"{'run':10} {'img/s per epoch':>{7 * args.epochs + 4}} {'loop s':>7} {'wall s':>7}")
    ratios = []
    for r in range(args.repeats):
        d = run_dermctl(root / "ws", manifest, f"short{r}-{int(time.time())}", args.epochs)
        print(
            f"{'dermctl':10} {_rates(d['img_s']):>{7 * args.epochs + 4}} {d['loop_s']:7.1f} {d['wall']:7.1f}"
        )
        ref = run_reference(manifest, args.epochs)
        print(
            f"{'lightly':10} {_rates(ref['img_s']):>{7 * args.epochs + 4}} {ref['loop_s']:7.1f} {ref['wall']:7.1f}"
        )
        ratios.append(ref["wall"] / d["wall"])
        print(
            f"repeat {r + 1}: end to end lightly / dermctl = {ratios[-1]:.2f}x; dermctl first / last epoch "
            f"img/s = {d['img_s'][0] / d['img_s'][-1]:.2f}; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    if len(ratios) > 1:
        print(
            f"end-to-end ratio over {len(ratios)} repeats: "
            + ", ".join(f"{x:.2f}x" for x in ratios)
            + f" (median {statistics.median(ratios):.2f}x)"
        )
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
