"""Learning parity on real images: dermctl's pretraining against a plain loop on lightly's building blocks.

    .venv/bin/python benchmarks/learning.py                      # simclr, byol, dino (+ colorme, ibot)
    .venv/bin/python benchmarks/learning.py --methods simclr --epochs 15
    .venv/bin/python benchmarks/learning.py --quick              # smoke run: 1 epoch on 512 images

The reference needs lightly (a dev-only tool, never a runtime dependency): pip install -e '.[bench]'.

Data: scikit-learn's `load_digits` (1797 real 8x8 handwritten digits, ships offline), upscaled bilinearly
to 32 px RGB PNGs in a temporary workspace, ingested with `dermctl ingest --dataset folder --unlabelled` and
pretrained with `dermctl pretrain --method M --init random --set key=value ...` (patience 0: every epoch
runs; dermctl holds out 15 % of the corpus (ingest's default val fraction) for its val loss, and exports its
last epoch, `export_epoch`'s default for every method). The
reference trains the same backbone on the same images, the manifest's train rows (so both take the same
number of steps), with a plain PyTorch loop around lightly's heads, losses, transforms and momentum
helpers, and keeps its last epoch. Both are scored on all 1797 digits. ColorMe sees only green and rebuilds red/blue, which is the identity on
grey digits, so it trains on a coloured copy (red = horizontal, blue = vertical stroke strength: one fixed
rule with no label in it; see tests/fakes.py `digit_images`) and is evaluated on that copy.

Recipes (the same on both sides as far as both tools allow; timm resnet18, num_classes=0, random init):
    simclr   issue 10's: 32 px, batch 128, 15 epochs, Adam 1e-3 constant, no weight decay, NT-Xent T 0.5,
             crop scale (0.3, 1), colour jitter (0.8, 0.8, 0.8, 0.2) p 0.8, grey p 0.2, no blur,
             projection 512-512-128 (lightly's SimCLRProjectionHead: BN after both linear layers)
    byol     32 px, batch 128, 15 epochs, Adam 1e-3 constant, no weight decay, crop scale (0.3, 1),
             BYOL colour (0.4, 0.4, 0.2, 0.1) p 0.8, grey p 0.2, no blur, solarise (0, 0.2), projector
             and predictor 512/128-1024-128, target EMA cosine 0.99 -> 1 per step
    dino     resnet18 (a CNN: BN in the head, as DINO's ResNet runs), 32 px global crops (0.4, 1) x 2 and
             16 px local crops (0.05, 0.4) x 4, batch 128, 15 epochs, Adam 1e-3 constant, no weight decay,
             no clipping, head 512-512-64 -> 2048 prototypes (weight-normed, g fixed), last layer frozen
             for 1 epoch, teacher temp 0.04 (no warm-up), student temp 0.1, centre momentum 0.9, teacher
             EMA cosine 0.99 -> 1 per step; DINO's view policy (blur 1.0 / 0.1 / 0.5, solarise 0.2 on the
             second global view) because dermctl has no switch to turn DINO's blur off. The network that
             is scored is the one dermctl exports (config `export` when it has one: teacher), on both sides.
    colorme  dermctl only: resnet18 U-Net, 32 px tinted digits, batch 128, Adam 1e-3 constant, crop (0.3, 1)
    ibot     dermctl only: vit_tiny_patch16_224 with depth 4 and 8 px patches at 32 px (4 x 4 patches;
             local crops 16 px x 2), batch 64, Adam 3e-4 constant, 256 prototypes, head 192-128-128-32,
             teacher EMA 0.9 -> 1, photometric augmentation batched (tests/test_learning.py's recipe)

Evaluator (one, for both sides, numpy brute force; independent of dermctl's evaluation code): features
of all 1797 images (resize to the backbone's input size, ImageNet normalisation; ColorMe's green channel
only), L2-normalised; kNN with DINO's weighted vote (k 20, T 0.07; k = support size when smaller); 10-shot:
`--repeats` draws of 10 images per class from a fixed half of the data ("pool"), scored on the fixed
other half; macro-F1 mean +- std. Random init (same backbone, seed fixed, eval mode) is the floor; gain =
F1 - random F1; the ratio is dermctl gain / reference gain (target >= 0.9).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
REFERENCE_METHODS = ("simclr", "byol", "dino")
ALL_METHODS = ("simclr", "byol", "dino", "colorme", "ibot")
INSTALL_HINT = "lightly is not installed: the reference loops need it (pip install -e '.[bench]')"

# -- data ---------------------------------------------------------------------------------------------


def digit_images(size: int = 32, tint: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as (N, size, size, 3) uint8 RGB and their labels. `tint` (ColorMe): red and blue are
    the strength of horizontal and vertical strokes (absolute derivatives of the ink, scaled to [0, 1]),
    one fixed rule carrying no label of its own; kept identical to tests/fakes.py `digit_images` (a
    benchmark cannot import the tests)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images / 16.0).astype(np.float32)
    up = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    up = np.clip(up, 0.0, 1.0)
    if not tint:
        rgb = np.repeat(up[..., None], 3, axis=-1)
    else:
        scale = size / 8
        red = np.clip(np.abs(np.gradient(up, axis=1)) * scale, 0.0, 1.0)
        blue = np.clip(np.abs(np.gradient(up, axis=2)) * scale, 0.0, 1.0)
        rgb = np.stack([red, up, blue], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8), digits.target.astype(np.int64)


def write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"digit{i:04d}.png")


def train_indices(ws: Path, variant: str) -> np.ndarray:
    """Indices (into the digits array) of the manifest's train rows: the images dermctl pretrains on."""
    from dermctl.data.manifest import read_manifest

    rows = read_manifest(ws / "manifests" / f"{variant}.csv").rows
    return np.array(sorted(int(Path(r.path).stem.removeprefix("digit")) for r in rows if r.split == "train"))


# -- the one evaluator --------------------------------------------------------------------------------


def features(
    model: torch.nn.Module, images: np.ndarray, size: int, green_only: bool = False, vit: bool = False
) -> np.ndarray:
    """Frozen features of uint8 RGB images: resize to `size`, ImageNet normalisation, eval mode. CNNs:
    the pooled output; ViTs: the class tokens of the last 4 blocks (DINO's linear-evaluation rule)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    x = (x - torch.from_numpy(IMAGENET_MEAN)[:, None, None]) / torch.from_numpy(IMAGENET_STD)[:, None, None]
    if green_only:
        x = x[:, 1:2]
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 256):
            xb = x[i : i + 256]
            if vit:
                inter = model.forward_intermediates(
                    xb, indices=4, norm=True, return_prefix_tokens=True, intermediates_only=True
                )
                out.append(torch.cat([prefix[:, 0] for _spatial, prefix in inter], dim=-1))
            else:
                out.append(model(xb).flatten(1))
    return torch.cat(out).float().numpy()


def knn_fewshot_f1(
    feats: np.ndarray,
    labels: np.ndarray,
    shots: int = 10,
    repeats: int = 10,
    seed: int = 0,
    k: int = 20,
    temperature: float = 0.07,
) -> tuple[float, float]:
    """Mean and std over `repeats` of the macro-F1 of DINO's weighted kNN vote (cosine similarity, top
    min(k, support) neighbours, weights exp(sim / T)) with `shots` support images per class drawn from a
    fixed half of the data, scored on the fixed other half."""
    from sklearn.metrics import f1_score

    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(labels))
    pool, test = perm[: len(labels) // 2], perm[len(labels) // 2 :]
    classes = np.unique(labels)
    scores = []
    for _ in range(repeats):
        support = np.concatenate([rng.choice(pool[labels[pool] == c], shots, replace=False) for c in classes])
        sim = f[test] @ f[support].T
        kk = min(k, len(support))
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        weights = np.exp(np.take_along_axis(sim, top, axis=1) / temperature)
        votes = np.zeros((len(test), len(classes)))
        cls_idx = np.searchsorted(classes, labels[support][top])
        np.add.at(votes, (np.repeat(np.arange(len(test)), kk), cls_idx.ravel()), weights.ravel())
        scores.append(f1_score(labels[test], classes[votes.argmax(1)], average="macro"))
    return float(np.mean(scores)), float(np.std(scores))


# -- recipes ------------------------------------------------------------------------------------------


def dermctl_overrides(method: str, epochs: int, seed: int, dino_export: str | None) -> dict[str, Any]:
    """The `--set` values of each recipe (see the module docstring)."""
    common: dict[str, Any] = dict(
        backbone="resnet18",
        image_size=32,
        batch_size=128,
        epochs=epochs,
        optimizer="adam",
        lr=1e-3,
        lr_scaling="none",
        lr_schedule="none",
        warmup_epochs=0,
        weight_decay=0.0,
        clip_grad=0.0,
        patience=0,
        seed=seed,
        precision="fp32",
    )
    if method == "simclr":
        return common | dict(
            temperature=0.5, crop_scale_min=0.3, blur_p=0.0, proj_hidden_dim=512, proj_out_dim=128
        )
    if method == "byol":
        return common | dict(
            crop_scale_min=0.3,
            blur_p1=0.0,
            blur_p2=0.0,
            proj_hidden_dim=1024,
            proj_out_dim=128,
            pred_hidden_dim=1024,
            momentum_teacher=0.99,
        )
    if method == "dino":
        extra = {"export": dino_export} if dino_export else {}
        return (
            common
            | dict(
                weight_decay_end=0.0,
                local_crop_size=16,
                local_crops_number=4,
                global_crops_scale=[0.4, 1.0],
                local_crops_scale=[0.05, 0.4],
                out_dim=2048,
                hidden_dim=512,
                bottleneck_dim=64,
                head_nlayers=3,
                use_bn_in_head=True,
                norm_last_layer=True,
                freeze_last_layer=1,
                teacher_temp=0.04,
                warmup_teacher_temp=0.04,
                warmup_teacher_temp_epochs=0,
                student_temp=0.1,
                center_momentum=0.9,
                drop_path_rate=0.0,
                momentum_teacher=0.99,
            )
            | extra
        )
    if method == "colorme":
        return common | dict(crop_scale_min=0.3)
    if method == "ibot":
        # The recipe of tests/test_learning.py (the one found to learn on digits in a CPU budget): a
        # depth-4 ViT-tiny with 8 px patches on 32 px digits, a light teacher EMA (0.9), photometric
        # augmentation batched (gpu_augment) because the PIL multi-crop dominates a step this small.
        return common | dict(
            backbone="vit_tiny_patch16_224",
            backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 4},
            batch_size=64,
            lr=3e-4,
            momentum_teacher=0.9,
            gpu_augment=True,
            global_crops_scale=[0.3, 1.0],
            local_crop_size=16,
            local_crops_number=2,
            out_dim=256,
            patch_out_dim=256,
            hidden_dim=128,
            bottleneck_dim=32,
            warmup_teacher_temp_epochs=0,
            drop_path_rate=0.0,
            weight_decay_end=0.0,
        )
    raise ValueError(method)


def _set_args(overrides: dict[str, Any]) -> list[str]:
    args = []
    for k, v in overrides.items():
        value = json.dumps(v) if isinstance(v, list | bool | dict) else str(v)
        args += ["--set", f"{k}={value}"]
    return args


def _dermctl(ws: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", DERMCTL_NO_DOWNLOAD="1")
    cmd = [sys.executable, "-m", "dermctl", "--workdir", str(ws), "--quiet", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def print_config(method: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "dermctl", "--json", "pretrain", "--method", method, "--print-config"],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout)


def run_dermctl(
    ws: Path, method: str, manifest: str, overrides: dict[str, Any]
) -> tuple[torch.nn.Module, Any, float, float]:
    """Pretrain through the CLI; (exported backbone, its meta, last epoch's train loss, wall seconds)."""
    from dermctl.models.backbone import load_exported

    t0 = time.perf_counter()
    _dermctl(
        ws,
        "pretrain",
        "--method",
        method,
        "--data",
        str(ws / "manifests" / f"{manifest}.csv"),
        "--name",
        method,
        "--init",
        "random",
        *_set_args(overrides),
    )
    wall = time.perf_counter() - t0
    run = ws / "runs" / method
    with open(run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    model, meta = load_exported(run / "backbone.safetensors")
    return model, meta, float(rows[-1]["train_loss"]), wall


# -- the reference loops (lightly's pieces) -------------------------------------------------------------


class _Views(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, transform: Callable[[Image.Image], Any]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.transform(Image.fromarray(self.images[i]))


def _resnet18(seed: int) -> torch.nn.Module:
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=0)


def _loader(images: np.ndarray, transform: Any, batch: int, seed: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _Views(images, transform), batch_size=batch, shuffle=True, drop_last=True, generator=g, num_workers=0
    )


def reference_simclr(images: np.ndarray, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    backbone = _resnet18(seed)
    head = SimCLRProjectionHead(512, 512, 128)
    params = [*backbone.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    criterion = NTXentLoss(temperature=0.5)
    tf = SimCLRTransform(input_size=32, min_scale=0.3, gaussian_blur=0.0)
    loss = torch.zeros(())
    for _ in range(epochs):
        backbone.train(), head.train()
        for v1, v2 in _loader(images, tf, 128, seed):
            loss = criterion(head(backbone(v1)), head(backbone(v2)))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return backbone, float(loss.detach())


def reference_byol(images: np.ndarray, epochs: int, seed: int) -> tuple[torch.nn.Module, float]:
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform
    from lightly.utils.scheduler import cosine_schedule

    backbone = _resnet18(seed)
    projector = BYOLProjectionHead(512, 1024, 128)
    predictor = BYOLPredictionHead(128, 1024, 128)
    t_backbone, t_projector = copy.deepcopy(backbone), copy.deepcopy(projector)
    deactivate_requires_grad(t_backbone)
    deactivate_requires_grad(t_projector)
    opt = torch.optim.Adam([*backbone.parameters(), *projector.parameters(), *predictor.parameters()], 1e-3)
    criterion = NegativeCosineSimilarity()
    tf = BYOLTransform(
        BYOLView1Transform(input_size=32, min_scale=0.3, gaussian_blur=0.0),
        BYOLView2Transform(input_size=32, min_scale=0.3, gaussian_blur=0.0, solarization_prob=0.2),
    )
    steps, step, loss = epochs * (len(images) // 128), 0, torch.zeros(())
    for _ in range(epochs):
        for v1, v2 in _loader(images, tf, 128, seed):
            m = cosine_schedule(step, steps, 0.99, 1.0)
            p1, p2 = predictor(projector(backbone(v1))), predictor(projector(backbone(v2)))
            with torch.no_grad():
                z1, z2 = t_projector(t_backbone(v1)), t_projector(t_backbone(v2))
            loss = 0.5 * (criterion(p1, z2) + criterion(p2, z1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            update_momentum(backbone, t_backbone, m)
            update_momentum(projector, t_projector, m)
            step += 1
    return backbone, float(loss.detach())


def reference_dino(
    images: np.ndarray, epochs: int, seed: int, score_teacher: bool
) -> tuple[torch.nn.Module, float]:
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad, update_momentum
    from lightly.transforms import DINOTransform
    from lightly.utils.scheduler import cosine_schedule

    backbone = _resnet18(seed)
    head = DINOProjectionHead(512, 512, 64, 2048, batch_norm=True, freeze_last_layer=1)
    # weight_norm's derived weight cannot be deep-copied: build the teacher head and copy the state
    t_head = DINOProjectionHead(512, 512, 64, 2048, batch_norm=True, freeze_last_layer=1)
    t_head.load_state_dict(head.state_dict())
    t_backbone = copy.deepcopy(backbone)
    deactivate_requires_grad(t_backbone)
    deactivate_requires_grad(t_head)
    opt = torch.optim.Adam([p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad], 1e-3)
    criterion = DINOLoss(output_dim=2048, warmup_teacher_temp_epochs=0, teacher_temp=0.04)
    tf = DINOTransform(
        global_crop_size=32,
        global_crop_scale=(0.4, 1.0),
        local_crop_size=16,
        local_crop_scale=(0.05, 0.4),
        n_local_views=4,
        cj_strength=1.0,
        cj_bright=0.4,
        cj_contrast=0.4,
        cj_sat=0.2,
        cj_hue=0.1,
        gaussian_blur=(1.0, 0.1, 0.5),
        solarization_prob=0.2,
    )
    steps, step, loss = epochs * (len(images) // 128), 0, torch.zeros(())
    for epoch in range(epochs):
        for views in _loader(images, tf, 128, seed):
            m = cosine_schedule(step, steps, 0.99, 1.0)
            with torch.no_grad():
                teacher_out = [t_head(t_backbone(v)) for v in views[:2]]
            student_out = [head(backbone(v)) for v in views]
            loss = criterion(teacher_out, student_out, teacher_temp=0.04)
            opt.zero_grad()
            loss.backward()
            head.cancel_last_layer_gradients(epoch)
            opt.step()
            update_momentum(backbone, t_backbone, m)
            update_momentum(head, t_head, m)
            step += 1
    return (t_backbone if score_teacher else backbone), float(loss.detach())


# -- the run ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--methods", default=",".join(ALL_METHODS), help="comma-separated subset of " + ",".join(ALL_METHODS)
    )
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=10, help="10-shot draws")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch on 512 images, 3 repeats")
    p.add_argument("--threads", type=int, default=0, help="torch threads here (0: torch's default)")
    p.add_argument("--workdir", type=Path, default=None, help="keep the workspace here (default: a temp dir)")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        p.error(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(ALL_METHODS)})")
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs, repeats, n_images = (1, 3, 512) if args.quick else (args.epochs, args.repeats, None)
    try:
        import lightly  # noqa: F401

        have_lightly = True
    except ImportError:
        have_lightly = False
        print(INSTALL_HINT)

    tmp = tempfile.TemporaryDirectory(prefix="dermctl-learning-") if args.workdir is None else None
    root = Path(tmp.name) if tmp else args.workdir
    root.mkdir(parents=True, exist_ok=True)
    ws = root / "ws"
    data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for variant, tint in (("digits", False), ("digits-tint", True)):
        if variant == "digits-tint" and "colorme" not in methods:
            continue
        images, labels = digit_images(32, tint=tint)
        if n_images:
            images, labels = images[:n_images], labels[:n_images]
        data[variant] = (images, labels)
        write_pngs(root / variant, images)
        _dermctl(
            ws,
            "ingest",
            "--dataset",
            "folder",
            "--root",
            str(root / variant),
            "--unlabelled",
            "--name",
            variant,
        )

    dino_export = None
    if "dino" in methods and "export" in print_config("dino"):
        dino_export = "teacher"  # the official code evaluates the teacher
    print(
        f"digits: {len(data['digits'][0])} images, {epochs} epochs, seed {args.seed}, 10-shot kNN macro-F1 "
        f"over {repeats} draws (mean +- std); torch threads {torch.get_num_threads()}"
    )
    rows = []
    t_all = time.perf_counter()
    for method in methods:
        variant = "digits-tint" if method == "colorme" else "digits"
        images, labels = data[variant]
        over = dermctl_overrides(method, epochs, args.seed, dino_export)
        size, vit, green = int(over["image_size"]), "vit" in over["backbone"], method == "colorme"
        import timm

        torch.manual_seed(args.seed)
        # built as dermctl builds it: a ViT with dynamic image size and the recipe's timm arguments
        vit_args = {"dynamic_img_size": True} if vit else {}
        random_model = timm.create_model(
            over["backbone"],
            num_classes=0,
            in_chans=1 if green else 3,
            **vit_args,
            **over.get("backbone_kwargs", {}),
        )
        rand = knn_fewshot_f1(features(random_model, images, size, green, vit), labels, repeats=repeats)
        model, meta, d_loss, d_wall = run_dermctl(ws, method, variant, over)
        ours = knn_fewshot_f1(
            features(model, images, meta.input_size, meta.channels == "green", vit), labels, repeats=repeats
        )
        row = dict(method=method, random=rand, dermctl=ours, d_loss=d_loss, d_wall=d_wall)
        if method in REFERENCE_METHODS and have_lightly:
            t0 = time.perf_counter()
            train = images[train_indices(ws, variant)]  # the images dermctl trained on: equal steps
            if method == "dino":
                ref_model, r_loss = reference_dino(train, epochs, args.seed, dino_export == "teacher")
            else:
                ref_model, r_loss = {"simclr": reference_simclr, "byol": reference_byol}[method](
                    train, epochs, args.seed
                )
            row.update(
                reference=knn_fewshot_f1(features(ref_model, images, size), labels, repeats=repeats),
                r_loss=r_loss,
                r_wall=time.perf_counter() - t0,
            )
        rows.append(row)
        print_row(row, header=len(rows) == 1)
    print(f"total wall time {time.perf_counter() - t_all:.0f} s")
    if dino_export is None and "dino" in methods:
        print("note: dermctl's DINO has no `export` key here: both sides scored on the student")
    if tmp:
        tmp.cleanup()
    missing_reference = any(m in REFERENCE_METHODS for m in methods) and not have_lightly
    if missing_reference:
        print(INSTALL_HINT)
    return 2 if missing_reference else 0


def _f(pair: tuple[float, float] | None) -> str:
    return "-" if pair is None else f"{pair[0]:.3f}+-{pair[1]:.3f}"


def print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        print(
            f"{'method':8} {'random F1':>13} {'dermctl F1':>13} {'reference F1':>13} {'gain ratio':>10} "
            f"{'loss d/ref':>15} {'wall s d/ref':>13}"
        )
    ref = row.get("reference")
    d_gain = row["dermctl"][0] - row["random"][0]
    ratio = f"{d_gain / (ref[0] - row['random'][0]):.2f}" if ref else f"gain {d_gain:+.3f}"
    loss = f"{row['d_loss']:.3f}/" + (f"{row['r_loss']:.3f}" if ref else "-")
    wall = f"{row['d_wall']:.0f}/" + (f"{row['r_wall']:.0f}" if ref else "-")
    print(
        f"{row['method']:8} {_f(row['random']):>13} {_f(row['dermctl']):>13} {_f(ref):>13} {ratio:>10} "
        f"{loss:>15} {wall:>13}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
