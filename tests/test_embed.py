"""`embed` core: HDF5 content, DINO eval transform, reuse and rebuild rules, missing images."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermctl.errors import DataError, UsageError
from dermctl.eval.embed import embed
from dermctl.eval.embeddings import read_attrs, read_embeddings
from dermctl.models.backbone import BackboneMeta, create_backbone, export_backbone
from dermctl.models.transforms import eval_transform
from dermctl.workspace import Workspace

COLOURS = {"bcc": (200, 40, 40), "mel": (40, 200, 40), "nev": (40, 40, 200)}


def make_task(ws: Workspace, name: str = "toy", per_split=(4, 2, 3), skin_type: bool = True) -> Path:
    """A tiny task manifest with PIL-drawn images whose colour depends on the class."""
    rng = np.random.default_rng(0)
    img_dir = ws.root / "images" / name
    img_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, colour in COLOURS.items():
        for split, n in zip(("train", "val", "test"), per_split, strict=True):
            for i in range(n):
                arr = np.clip(np.array(colour) + rng.normal(0, 25, (36, 44, 3)), 0, 255).astype(np.uint8)
                path = img_dir / f"{label}_{split}_{i}.png"
                Image.fromarray(arr).save(path)
                rows.append(
                    {
                        "path": f"../images/{name}/{path.name}",
                        "label": label,
                        "split": split,
                        "group": f"{label}{split}{i}",
                        "skin_type": str(1 + i % 6),
                    }
                )
    ws.manifests.mkdir(parents=True, exist_ok=True)
    out = ws.manifests / f"{name}.csv"
    cols = ["path", "label", "split", "group", "role"] + (["skin_type"] if skin_type else [])
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({**r, "role": "task"})
    return out


@pytest.fixture()
def ws(tmp_path: Path) -> Workspace:
    w = Workspace.at(tmp_path)
    make_task(w)
    return w


def _embed(ws: Workspace, **kw):
    args = dict(tasks=["toy"], backbone="resnet10t", image_size=32, batch_size=8, device="cpu", num_workers=0)
    args.update(kw)
    return embed(ws, kw.pop("model", "random"), **{k: v for k, v in args.items() if k != "model"})


def test_embed_writes_the_format(ws: Workspace) -> None:
    (out,) = _embed(ws)
    assert out.status == "written" and out.n == 27 and out.dim == 512
    assert out.path == ws.embedding_path("random-resnet10t", "toy")
    e = read_embeddings(out.path)
    assert e.features.shape == (27, 512) and np.isfinite(e.features).all()
    assert e.class_names == ["bcc", "mel", "nev"]
    assert e.labels[:4].tolist() == [0, 0, 0, 0] and set(e.split.tolist()) == {"train", "val", "test"}
    assert e.extras["skin_type"][:3].tolist() == ["1", "2", "3"]
    assert all(len(s) == 64 for s in e.sha256)
    a = e.attrs
    assert a["model_id"] == "random-resnet10t" and a["init"] == "random" and a["backbone"] == "resnet10t"
    assert (
        a["feature_rule"] == "avgpool"
        and a["image_size"] == 32
        and a["channels"] == "rgb"
        and a["complete"] is True
    )
    assert len(a["manifest_sha256"]) == 64 and len(a["checkpoint_sha256"]) == 64 and a["dermctl_version"]
    # the features are the model's on the DINO eval transform, in manifest order
    from dermctl.data.images import open_rgb
    from dermctl.data.manifest import read_manifest
    from dermctl.eval.models import resolve_model

    m = resolve_model("random", ws, backbone="resnet10t")
    man = read_manifest(ws.manifests / "toy.csv")
    t = eval_transform(32, m.meta.mean, m.meta.std)
    x = torch.stack([t(open_rgb(man.resolve(r))) for r in man.rows[:2]])
    with torch.no_grad():
        ref = m.backbone(x).numpy()
    assert np.allclose(e.features[:2], ref, atol=1e-4)


def test_eval_transform_resizes_then_crops() -> None:
    im = Image.new("RGB", (80, 40), (255, 0, 0))
    x = eval_transform(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))(im)
    assert x.shape == (3, 32, 32) and float(x[0].mean()) == pytest.approx(1.0, abs=1e-3)
    g = eval_transform(32, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5), channels="green")(
        Image.new("RGB", (40, 40), (0, 255, 0))
    )
    assert g.shape == (1, 32, 32) and float(g.mean()) == pytest.approx(2.0, abs=1e-3)


def test_reuse_and_rebuild(ws: Workspace) -> None:
    folder = ws.runs / "dino-a"
    torch.manual_seed(0)
    export_backbone(
        create_backbone("resnet10t"),
        folder,
        BackboneMeta("resnet10t", "avgpool", input_size=32, extra={"method": "dino"}),
    )
    first = _embed(ws, model="dino-a", backbone=None, image_size=None)[0]
    assert first.status == "written"
    h1 = read_attrs(first.path)["checkpoint_sha256"]
    assert _embed(ws, model="dino-a", backbone=None, image_size=None)[0].status == "reused"
    assert _embed(ws, model="dino-a", backbone=None, image_size=None, force=True)[0].status == "written"
    # a changed checkpoint rebuilds
    torch.manual_seed(1)
    export_backbone(
        create_backbone("resnet10t"),
        folder,
        BackboneMeta("resnet10t", "avgpool", input_size=32, extra={"method": "dino"}),
    )
    again = _embed(ws, model="dino-a", backbone=None, image_size=None)[0]
    assert again.status == "written"
    assert read_attrs(again.path)["checkpoint_sha256"] != h1
    # a changed manifest rebuilds
    man = ws.manifests / "toy.csv"
    man.write_text(man.read_text().replace(",nev,", ",nevus,"))
    third = _embed(ws, model="dino-a", backbone=None, image_size=None)[0]
    assert third.status == "written" and read_embeddings(third.path).class_names == ["bcc", "mel", "nevus"]
    # a changed image size rebuilds
    assert _embed(ws, model="dino-a", backbone=None, image_size=40)[0].status == "written"
    assert read_attrs(third.path)["image_size"] == 40
    assert not list(third.path.parent.glob("*.tmp"))


def test_missing_image_is_named_before_work(ws: Workspace) -> None:
    victim = sorted((ws.root / "images" / "toy").glob("mel_test_*.png"))[0]
    victim.unlink()
    with pytest.raises(DataError, match=victim.name):
        _embed(ws)
    assert not ws.embedding_path("random-resnet10t", "toy").exists()


def test_damaged_image_is_named(ws: Workspace) -> None:
    victim = sorted((ws.root / "images" / "toy").glob("bcc_val_*.png"))[0]
    victim.write_bytes(b"not a png")
    with pytest.raises(DataError, match=victim.name):
        _embed(ws)
    assert not ws.embedding_path("random-resnet10t", "toy").exists()


def test_bad_options(ws: Workspace) -> None:
    with pytest.raises(UsageError, match="--feature-rule"):
        _embed(ws, feature_rule="cls4")  # a ViT rule on a CNN
    with pytest.raises(DataError, match="unknown task"):
        _embed(ws, tasks=["nope"])


def test_vit_cls4(ws: Workspace) -> None:
    (out,) = _embed(ws, backbone="vit_tiny_patch16_224")
    assert out.dim == 4 * 192 and read_attrs(out.path)["feature_rule"] == "cls4"


def test_image_replaced_after_ingest_is_refused(ws: Workspace) -> None:
    from dermctl.data.manifest import fill_hashes, read_manifest, write_manifest

    path = ws.manifests / "toy.csv"
    write_manifest(fill_hashes(read_manifest(path)), path)  # with sha256, as ingest writes it
    (first,) = _embed(ws)
    victim = ws.root / "images" / "toy" / "bcc_train_0.png"
    original = victim.read_bytes()
    victim.write_bytes((ws.root / "images" / "toy" / "mel_test_0.png").read_bytes())  # another valid image
    with pytest.raises(DataError) as err:  # was: embedded (or "reused") with exit 0
        _embed(ws)
    assert str(victim) in err.value.message and "re-run ingest" in err.value.message
    victim.write_bytes(original)
    (again,) = _embed(ws)  # the original is back: the features built from it are the right ones
    assert again.status == "reused"
    assert np.array_equal(read_embeddings(again.path).features, read_embeddings(first.path).features)


def test_reuse_is_keyed_on_image_content(ws: Workspace) -> None:
    """A hand-made manifest (no sha256 column): the manifest file does not change when an image does."""
    (first,) = _embed(ws)
    victim = ws.root / "images" / "toy" / "bcc_train_0.png"
    original = victim.read_bytes()
    victim.write_bytes((ws.root / "images" / "toy" / "mel_test_0.png").read_bytes())
    (swapped,) = _embed(ws)
    assert swapped.status == "written"  # was: "reused", features of the old image
    victim.write_bytes(original)
    (restored,) = _embed(ws)
    assert restored.status == "written"  # was: "reused", features of the wrong image
    assert np.array_equal(read_embeddings(restored.path).features, read_embeddings(first.path).features)


def test_same_named_tasks_in_two_folders_never_share_a_file(ws: Workspace, tmp_path: Path) -> None:
    other = Workspace.at(tmp_path / "elsewhere")
    a = make_task(other, "toy", per_split=(4, 2, 3))
    b_dir = tmp_path / "b"
    b_dir.mkdir()
    b = b_dir / "toy.csv"
    b.write_text(a.read_text().replace("../images/", "../elsewhere/images/"))
    rows_b = b.read_text().splitlines()
    b.write_text("\n".join(rows_b[: 1 + 12]) + "\n")  # a different task with the same file name
    out_a, out_b = _embed(ws, tasks=[str(a), str(b)])
    assert out_a.path != out_b.path  # was: both embeddings/<model>/toy.h5, the second overwriting the first
    assert read_embeddings(out_a.path).features.shape[0] == 27
    assert read_embeddings(out_b.path).features.shape[0] == 12
    assert _embed(ws, tasks=[str(a)])[0].status == "reused"
