"""The ingest engine and the generic folder/csv adapters, end to end on tiny generated data."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.fft import idctn
from typer.testing import CliRunner

import dermctl.data.ingest as ingest_mod
from dermctl.cli.app import app
from dermctl.data.adapters import get_adapter
from dermctl.data.adapters.base import AdapterOptions
from dermctl.data.demo import generate_demo, generate_unlabelled
from dermctl.data.hashing import hamming, near_duplicate_pairs, phash
from dermctl.data.ingest import IngestOptions, run_ingest
from dermctl.data.manifest import COLUMNS, read_manifest
from dermctl.errors import ConflictError, DataError, UsageError
from dermctl.workspace import Workspace, read_json

N_PER_CLASS = 8
SIZE = 48


@pytest.fixture(scope="module")
def demo_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "derm-demo"
    generate_demo(root, n_per_class=N_PER_CLASS, size=SIZE, seed=0)
    return root


@pytest.fixture
def demo(tmp_path: Path, demo_src: Path) -> Path:
    dst = tmp_path / "derm-demo"
    shutil.copytree(demo_src, dst)
    return dst


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace.at(tmp_path / "ws")


def _opts(**kw: object) -> IngestOptions:
    base: dict[str, object] = {"label_column": "label", "group_column": "patient_id", "workers": 1}
    base.update(kw)
    return IngestOptions(**base)  # type: ignore[arg-type]


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    path.write_text(buf.getvalue())
    return path


def _reencode_resized(src: Path, dst: Path, scale: float = 0.75, quality: int = 70) -> Path:
    with Image.open(src) as im:
        im = im.convert("RGB").resize(
            (int(im.width * scale), int(im.height * scale)), Image.Resampling.BILINEAR
        )
        im.save(dst, format="JPEG", quality=quality)
    return dst


def _noise_image(path: Path, seed: int, size: int = SIZE) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------------------------- csv + folder


def test_csv_ingest_writes_manifest_and_report(demo: Path, ws: Workspace) -> None:
    summary = run_ingest("csv", demo, ws, _opts())
    assert summary.status == "written" and summary.name == "derm-demo"
    assert summary.manifest_path == ws.manifests / "derm-demo.csv"
    m = read_manifest(summary.manifest_path)
    assert len(m.rows) == 4 * N_PER_CLASS
    header = summary.manifest_path.read_text().splitlines()[0].split(",")
    assert tuple(header[: len(COLUMNS)]) == COLUMNS
    assert {r.role for r in m.rows} == {"task"} and {r.source for r in m.rows} == {"csv"}
    assert all(r.image_id.startswith("DEMO_") and len(r.phash) == 16 and len(r.sha256) == 64 for r in m.rows)
    assert all((r.width, r.height) == (SIZE, SIZE) for r in m.rows)
    assert {r.split for r in m.rows} == {"train", "val", "test"}
    sides = defaultdict(set)
    for r in m.rows:
        assert r.group
        sides[r.group].add(r.split)
    assert all(len(s) == 1 for s in sides.values())
    report = read_json(summary.report_path)
    assert report["variant"].startswith("table metadata.csv")
    assert report["counts"] == m.counts()
    assert report["provenance"]["config"]["seed"] == 0 and "versions" in report["provenance"]
    assert report["excluded"] == [] and report["duplicates"] == []


def test_folder_adapter_labelled_and_flat(demo: Path, ws: Workspace, tmp_path: Path) -> None:
    s = run_ingest("folder", demo / "images", ws, IngestOptions(workers=1, name="demo-folder"))
    m = read_manifest(s.manifest_path)
    assert s.role == "task" and "class sub-folders (4 classes" in s.variant
    assert {r.label for r in m.rows} == {"dermatofibroma", "keratosis", "melanoma", "nevus"}
    corpus = generate_unlabelled(tmp_path / "corpus", n=20, size=SIZE, seed=0)
    (corpus / ".DS_Store").write_bytes(b"junk")
    (corpus / "__MACOSX").mkdir()
    shutil.copy(next(corpus.glob("*.jpg")), corpus / "__MACOSX" / "._x.jpg")
    s = run_ingest("folder", corpus, ws, IngestOptions(workers=1))
    m = read_manifest(s.manifest_path)
    assert s.role == "corpus" and s.name == "corpus" and len(m.rows) == 20
    assert {r.split for r in m.rows} <= {"train", "val"} and any(r.split == "val" for r in m.rows)
    assert {r.label for r in m.rows} == {""}
    s = run_ingest("folder", demo / "images", ws, IngestOptions(workers=1, unlabelled=True, name="as-corpus"))
    assert s.role == "corpus" and "test" not in {r.split for r in read_manifest(s.manifest_path).rows}


def test_csv_adapter_reports_missing_and_unlisted(demo: Path) -> None:
    (demo / "images" / "nevus" / "DEMO_00010.jpg").unlink(missing_ok=True)
    rows = list(csv.reader((demo / "metadata.csv").read_text().splitlines()))
    missing_rel = next(r[3] for r in rows[1:] if not (demo / r[3]).exists())
    _noise_image(demo / "images" / "stray.png", 1)
    res = get_adapter("csv").read(demo, AdapterOptions(label_column="label", group_column="patient_id"))
    assert missing_rel in res.missing_images
    assert any(p.endswith("stray.png") for p in res.unlisted_images)


def test_publisher_test_split_column_is_kept(demo: Path, ws: Workspace) -> None:
    rows = list(csv.reader((demo / "metadata.csv").read_text().splitlines()))
    header, body = (
        rows[0] + ["split"],
        [r + ["test" if i % 4 == 0 else "train"] for i, r in enumerate(rows[1:])],
    )
    _write_csv(demo / "metadata.csv", header, body)
    s = run_ingest("csv", demo, ws, _opts(group_column="image_id"))
    m = read_manifest(s.manifest_path)
    official = {r[0] for r in body if r[-1] == "test"}
    assert {r.image_id for r in m.rows if r.split == "test"} == official


# --------------------------------------------------------------------------------------------- bad files


def _add_bad_files(folder: Path) -> None:
    (folder / "zero.jpg").write_bytes(b"")
    good = next(folder.glob("DEMO_*.jpg")).read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 2])
    (folder / "junk.png").write_bytes(b"not an image" * 50)
    Image.new("RGB", (10, 10), (200, 150, 120)).save(folder / "tiny.png")


def test_bad_files_are_excluded_and_reported(demo: Path, ws: Workspace) -> None:
    _add_bad_files(demo / "images" / "nevus")
    s = run_ingest("folder", demo / "images", ws, IngestOptions(workers=1))
    report = read_json(s.report_path)
    reasons = {Path(e["path"]).name: e["reason"] for e in report["excluded"]}
    assert reasons["zero.jpg"].startswith("empty")
    assert "truncated" in reasons["cut.jpg"]
    assert "not an image" in reasons["junk.png"]
    assert "too small" in reasons["tiny.png"]
    assert s.rows == 4 * N_PER_CLASS and s.excluded["bad_files"] == 4


def test_strict_refuses_and_writes_nothing(demo: Path, ws: Workspace) -> None:
    _add_bad_files(demo / "images" / "nevus")
    with pytest.raises(DataError, match="--strict"):
        run_ingest("folder", demo / "images", ws, IngestOptions(workers=1, strict=True))
    assert not list(ws.manifests.glob("*.csv")) and not list(ws.manifests.glob("*.json"))


# --------------------------------------------------------------------------------------------- duplicates


def test_exact_duplicates_collapse_and_label_conflicts_drop(demo: Path, ws: Workspace) -> None:
    nevi = sorted((demo / "images" / "nevus").glob("*.jpg"))
    shutil.copy(nevi[0], demo / "images" / "nevus" / "zz_copy.jpg")  # same label: collapses
    shutil.copy(nevi[1], demo / "images" / "melanoma" / "zz_copy.jpg")  # other label: conflict
    s = run_ingest("folder", demo / "images", ws, IngestOptions(workers=1))
    m = read_manifest(s.manifest_path)
    paths = {Path(r.path).name for r in m.rows}
    assert nevi[0].name in paths and "zz_copy.jpg" not in paths
    assert nevi[1].name not in paths  # both copies of the conflicting image dropped
    report = read_json(s.report_path)
    assert report["duplicates"] == [
        {
            "kept": str(nevi[0].resolve()),
            "dropped": [str((demo / "images" / "nevus" / "zz_copy.jpg").resolve())],
        }
    ]
    assert report["label_conflicts"][0]["labels"] == ["melanoma", "nevus"]
    assert s.rows == 4 * N_PER_CLASS - 1


def test_near_duplicates_inside_the_set_share_a_group(demo: Path, ws: Workspace) -> None:
    rows = list(csv.reader((demo / "metadata.csv").read_text().splitlines()))
    src = rows[1]
    copy = _reencode_resized(demo / src[3], demo / "images" / src[2] / "recopy.jpg")
    rows.append(["DEMO_99999", "PAT_9999", src[2], copy.relative_to(demo).as_posix()])
    _write_csv(demo / "metadata.csv", rows[0], rows[1:])
    s = run_ingest("csv", demo, ws, _opts())
    m = read_manifest(s.manifest_path)
    by_id = {r.image_id: r for r in m.rows}
    assert by_id["DEMO_99999"].group == by_id[src[0]].group == src[1]
    assert by_id["DEMO_99999"].split == by_id[src[0]].split
    report = read_json(s.report_path)
    pairs = {frozenset((Path(p["a"]).name, Path(p["b"]).name)) for p in report["near_duplicates"]}
    assert frozenset((Path(src[3]).name, "recopy.jpg")) in pairs
    assert {"path": str(copy.resolve()), "from": "PAT_9999", "to": src[1]} in report["regrouped"]


# --------------------------------------------------------------------------------------------- --exclude


def test_exclude_by_hash_near_duplicate_and_image_id(demo: Path, ws: Workspace, tmp_path: Path) -> None:
    task = run_ingest("csv", demo, ws, _opts(name="task"))
    task_rows = read_manifest(task.manifest_path).rows
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    shutil.copy(task_rows[0].path, corpus / "exact.jpg")
    _reencode_resized(Path(task_rows[1].path), corpus / "resized.jpg", scale=0.8, quality=70)
    for i in range(5):
        _noise_image(corpus / f"other_{i}.png", 100 + i)
    _noise_image(corpus / "same_id.png", 999)
    _write_csv(
        corpus / "metadata.csv",
        ["path", "image_id"],
        [["exact.jpg", "C1"], ["resized.jpg", "C2"], ["same_id.png", task_rows[2].image_id]]
        + [[f"other_{i}.png", f"O{i}"] for i in range(5)],
    )
    s = run_ingest(
        "csv", corpus, ws, IngestOptions(workers=1, name="corpus", exclude=[Path("task")], unlabelled=True)
    )
    assert s.role == "corpus"
    kept = {Path(r.path).name for r in read_manifest(s.manifest_path).rows}
    assert kept == {f"other_{i}.png" for i in range(5)}
    overlap = {Path(o["path"]).name: o for o in read_json(s.report_path)["overlap"]}
    assert overlap["exact.jpg"]["by"] == "sha256"
    assert overlap["resized.jpg"]["by"] == "near-duplicate" and overlap["resized.jpg"]["distance"] <= 4
    assert overlap["same_id.png"]["by"] == "image_id"
    assert overlap["exact.jpg"]["matched_manifest"] == str(task.manifest_path)
    assert overlap["exact.jpg"]["matched_image_id"] == task_rows[0].image_id
    assert s.excluded["overlap"] == 3


def test_exclude_near_duplicate_threshold(ws: Workspace, tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        _noise_image(corpus / f"n{i}.png", i)
    first = run_ingest("folder", corpus, ws, IngestOptions(workers=1, name="probe"))
    target = read_manifest(first.manifest_path).rows[0]
    flipped = f"{int(target.phash, 16) ^ 0b11111:016x}"  # 5 bits away
    ref = _write_csv(
        tmp_path / "ref.csv", ["path", "sha256", "phash"], [["elsewhere.jpg", "0" * 64, flipped]]
    )
    kept4 = run_ingest("folder", corpus, ws, IngestOptions(workers=1, name="d4", exclude=[ref]))
    assert kept4.rows == 3
    kept5 = run_ingest(
        "folder", corpus, ws, IngestOptions(workers=1, name="d5", exclude=[ref], near_dup_distance=5)
    )
    assert kept5.rows == 2
    assert read_json(kept5.report_path)["overlap"][0]["distance"] == 5


def test_exclude_hand_made_manifest_without_hashes(demo: Path, ws: Workspace, tmp_path: Path) -> None:
    img = sorted((demo / "images" / "nevus").glob("*.jpg"))[0]
    hand = _write_csv(tmp_path / "hand.csv", ["path", "label"], [[str(img), "nevus"]])
    corpus = tmp_path / "c"
    corpus.mkdir()
    _reencode_resized(img, corpus / "a.jpg", scale=1.0, quality=80)
    _noise_image(corpus / "b.png", 5)
    s = run_ingest("folder", corpus, ws, IngestOptions(workers=1, exclude=[hand]))
    assert {Path(r.path).name for r in read_manifest(s.manifest_path).rows} == {"b.png"}


# --------------------------------------------------------------------------------------------- cache, overwrite


def test_hash_cache_avoids_decoding_and_manifest_is_identical(
    demo: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = ingest_mod.decode_checked

    def counting(path: Path):  # type: ignore[no-untyped-def]
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(ingest_mod, "decode_checked", counting)
    first = run_ingest("csv", demo, ws, _opts())
    assert len(calls) == 4 * N_PER_CLASS
    text = first.manifest_path.read_bytes()
    assert (ws.manifests / ".hashcache.json").is_file()
    calls.clear()
    second = run_ingest("csv", demo, ws, _opts())
    assert calls == [] and second.status == "unchanged"
    assert second.manifest_path.read_bytes() == text
    # a changed file (new mtime) is decoded again, the rest comes from the cache
    touched = sorted((demo / "images" / "nevus").glob("*.jpg"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    run_ingest("csv", demo, ws, _opts())
    assert calls == [touched.resolve()]


def test_threads_give_the_same_manifest(demo: Path, tmp_path: Path) -> None:
    a = run_ingest("csv", demo, Workspace.at(tmp_path / "w1"), _opts(workers=1))
    b = run_ingest("csv", demo, Workspace.at(tmp_path / "w2"), _opts(workers=3))
    assert a.manifest_path.read_bytes() == b.manifest_path.read_bytes()


def test_refuses_to_overwrite_changed_manifest(demo: Path, ws: Workspace) -> None:
    first = run_ingest("csv", demo, ws, _opts())
    before = first.manifest_path.read_bytes()
    with pytest.raises(ConflictError, match="--force"):
        run_ingest("csv", demo, ws, _opts(seed=5))
    assert first.manifest_path.read_bytes() == before
    forced = run_ingest("csv", demo, ws, _opts(seed=5, force=True))
    assert forced.status == "overwritten" and forced.manifest_path.read_bytes() != before


def test_output_option_puts_report_next_to_it(demo: Path, ws: Workspace, tmp_path: Path) -> None:
    s = run_ingest("csv", demo, ws, _opts(output=tmp_path / "out" / "mine.csv"))
    assert s.manifest_path == (tmp_path / "out" / "mine.csv").resolve()
    assert (tmp_path / "out" / "mine.report.json").is_file()


# --------------------------------------------------------------------------------------------- errors


def test_errors_name_the_option(demo: Path, ws: Workspace, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="--root: .*does not exist"):
        run_ingest("csv", tmp_path / "missing", ws, _opts())
    with pytest.raises(UsageError, match="--label-column: 'diagnosis'"):
        run_ingest("csv", demo, ws, _opts(label_column="diagnosis"))
    with pytest.raises(UsageError, match="--group-column"):
        run_ingest("csv", demo, ws, _opts(group_column="nope"))
    with pytest.raises(UsageError, match="--dataset"):
        run_ingest("no-such-set", demo, ws, _opts())
    with pytest.raises(UsageError, match="--granularity"):
        run_ingest("csv", demo, ws, _opts(granularity="ten"))
    with pytest.raises(UsageError, match="--test-fraction"):
        run_ingest("csv", demo, ws, _opts(test_fraction=0.9))
    with pytest.raises(DataError, match="--exclude: unknown task 'nosuch'"):
        run_ingest("csv", demo, ws, _opts(exclude=[Path("nosuch")]))
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "a" / "x.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no usable images"):
        run_ingest("folder", empty, ws, IngestOptions(workers=1))
    assert not (ws.manifests / "empty.csv").exists()


def test_folder_without_images_is_a_data_error(ws: Workspace, tmp_path: Path) -> None:
    (tmp_path / "nothing" / "sub").mkdir(parents=True)
    (tmp_path / "nothing" / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="--root: .*holds no image files"):
        run_ingest("folder", tmp_path / "nothing", ws, IngestOptions(workers=1))


def test_damaged_hash_cache_is_ignored(demo: Path, ws: Workspace) -> None:
    ws.manifests.mkdir(parents=True)
    (ws.manifests / ".hashcache.json").write_text('{"version": 1, "entries": {"x": 3}')  # torn JSON
    assert run_ingest("csv", demo, ws, _opts()).rows == 4 * N_PER_CLASS
    cache = read_json(ws.manifests / ".hashcache.json")
    assert len(cache["entries"]) == 4 * N_PER_CLASS


def test_csv_root_with_several_tables_must_name_one(demo: Path, ws: Workspace) -> None:
    shutil.copy(demo / "metadata.csv", demo / "other.csv")
    s = run_ingest("csv", demo, ws, _opts())  # metadata.csv is preferred
    assert s.rows == 4 * N_PER_CLASS
    (demo / "metadata.csv").rename(demo / "third.csv")
    with pytest.raises(DataError, match="--root: .*2 CSV files"):
        run_ingest("csv", demo, ws, _opts(name="x"))
    assert run_ingest("csv", demo / "third.csv", ws, _opts(name="x")).rows == 4 * N_PER_CLASS


def test_isic_archive_excludes_ham10000_copies(tmp_path: Path, ws: Workspace) -> None:
    """Published-layout fakes (tests/fakes.py): the archive keeps none of HAM10000, even re-encoded."""
    from fakes import make_ham10000, make_isic_archive

    # 21 lesions (3 per class): with 14 the two broken files left akiec one lesion, rightly refused
    ham = make_ham10000(tmp_path / "ham", n_lesions=21, corrupt=True)
    s = run_ingest("ham10000", ham.root, ws, IngestOptions(workers=2))
    rows = read_manifest(s.manifest_path).rows
    assert {r.image_id for r in rows if r.split == "test"} == ham.test_ids
    assert s.excluded["bad_files"] == len(ham.broken)
    sources = [p for i, p in ham.images.items() if p not in ham.broken and i not in ham.test_ids][:3]
    sources.append(ham.images[sorted(ham.test_ids)[0]])
    isic = make_isic_archive(
        tmp_path / "isic", ids=6, include_images_from=sources[:2], reencoded_from=sources[2:]
    )
    s = run_ingest("isic-archive", isic.root, ws, IngestOptions(workers=2, exclude=[Path("ham10000")]))
    kept = {r.sha256 for r in read_manifest(s.manifest_path).rows}
    assert len(kept) == 6 and s.excluded["overlap"] == 4
    by = sorted(o["by"] for o in read_json(s.report_path)["overlap"])
    assert by == ["near-duplicate", "near-duplicate", "sha256", "sha256"]


# --------------------------------------------------------------------------------------------- chains, tiny classes


def _balanced_hash(rng: np.random.Generator) -> int:
    """A random 64-bit pHash as `phash` can produce it: the DC bit set and 32 of the 64 bits in all."""
    ones = rng.choice(np.arange(1, 64), size=31, replace=False)
    return (1 << 63) | sum(1 << (63 - int(k)) for k in ones)


def _flip_pairs(h: int, rng: np.random.Generator, pairs: int, used: set[int]) -> int:
    """Flip `pairs` set bits and as many clear ones (never the DC bit nor one in `used`): distance 2*pairs."""
    ones = [k for k in range(1, 64) if (h >> (63 - k)) & 1 and k not in used]
    zeros = [k for k in range(1, 64) if not (h >> (63 - k)) & 1 and k not in used]
    for k in [*rng.choice(ones, pairs, replace=False), *rng.choice(zeros, pairs, replace=False)]:
        h ^= 1 << (63 - int(k))
        used.add(int(k))
    return h


def _hash_image(bits: int, path: Path, amplitude: float = 60.0) -> Path:
    """A 32x32 grey PNG whose pHash is exactly `bits`, built in the DCT domain.

    The 8x8 low-frequency coefficients `phash` reads are +-amplitude by bit, the DC term is the mean
    brightness (always the largest, bit 63), so with 32 bits set the median lies between the signs.
    """
    coeffs = np.zeros((32, 32))
    for k in range(64):
        coeffs[divmod(k, 8)] = amplitude if (bits >> (63 - k)) & 1 else -amplitude
    coeffs[0, 0] = 128 * 32  # mean 128 under the orthonormal DCT
    grey = np.clip(np.rint(idctn(coeffs, norm="ortho")), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(path)
    return path


def _file_phash(path: Path) -> str:
    with Image.open(path) as im:
        return phash(im.convert("RGB"))


def _plain_classes(
    root: Path, rng: np.random.Generator, names: tuple[str, ...] = ("plain_a", "plain_b")
) -> None:
    for name in names:
        for i in range(8):
            _hash_image(_balanced_hash(rng), root / name / f"{name}_{i:02d}.png")


def _chain_set(root: Path, n: int = 12, seed: int = 0) -> list[Path]:
    """root/chain/: n photos whose pHash differs by 4 bits (the default threshold) from the next, the
    bits never flipped back, so image i and j are 4*|i-j| apart; plus two classes of unrelated photos."""
    rng = np.random.default_rng(seed)
    h, used = _balanced_hash(rng), set()
    chain = []
    for i in range(n):
        chain.append(_hash_image(h, root / "chain" / f"c{i:02d}.png"))
        h = _flip_pairs(h, rng, 2, used)
    _plain_classes(root, rng)
    return chain


def _groups(rows: list) -> dict[str, list]:  # type: ignore[type-arg]
    out: dict[str, list] = defaultdict(list)  # type: ignore[type-arg]
    for r in rows:
        if r.group:
            out[r.group].append(r)
    return out


def test_near_duplicate_chain_is_not_one_group(ws: Workspace, tmp_path: Path) -> None:
    chain = _chain_set(tmp_path / "set")
    hashes = [_file_phash(p) for p in chain]
    # The chain property, on the files themselves: each within the threshold of the next, ends far apart,
    # so linking every near pair (the old rule) made the whole class one group.
    assert [hamming(a, b) for a, b in zip(hashes[:-1], hashes[1:], strict=True)] == [4] * (len(chain) - 1)
    assert hamming(hashes[0], hashes[-1]) == 4 * (len(chain) - 1)
    assert len(near_duplicate_pairs(hashes, None, 4)) == len(chain) - 1
    s = run_ingest("folder", tmp_path / "set", ws, IngestOptions(workers=1, name="chain"))
    rows = read_manifest(s.manifest_path).rows
    assert {r.split for r in rows if r.label == "chain"} == {"train", "val", "test"}
    groups = _groups(rows)
    assert groups, "near duplicates must still be grouped"
    for members in groups.values():
        # every member within the threshold of one representative: no chain inside a group
        assert any(all(hamming(rep.phash, m.phash) <= 4 for m in members) for rep in members), members
        assert len({m.split for m in members}) == 1
    # the report says which near pairs ended in different groups
    report = read_json(s.report_path)
    group_of = {r.path: r.group for r in rows}
    pairs = report["near_duplicates"]
    assert len(pairs) == len(chain) - 1
    for p in pairs:
        assert p["same_group"] == (bool(group_of[p["a"]]) and group_of[p["a"]] == group_of[p["b"]])
    apart = sum(1 for p in pairs if not p["same_group"])
    assert apart > 0 and s.near_duplicate_pairs_apart == apart and s.near_duplicate_pairs == len(chain) - 1
    assert {e["path"] for e in report["regrouped"]} == {r.path for r in rows if r.group}


def test_near_duplicate_groups_do_not_depend_on_file_names(tmp_path: Path) -> None:
    chain = _chain_set(tmp_path / "a", n=11, seed=1)  # odd: leaders taken in name order would differ
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "plain_a", tmp_path / "b" / "plain_a")
    shutil.copytree(tmp_path / "a" / "plain_b", tmp_path / "b" / "plain_b")
    (tmp_path / "b" / "chain").mkdir()
    for i, p in enumerate(chain):  # the same photos under names that list them in the reverse order
        shutil.copy(p, tmp_path / "b" / "chain" / f"x{99 - i}.png")

    def partition(folder: str) -> set[frozenset[str]]:
        s = run_ingest(
            "folder", tmp_path / folder, Workspace.at(tmp_path / f"ws-{folder}"), IngestOptions(workers=1)
        )
        return {frozenset(r.sha256 for r in g) for g in _groups(read_manifest(s.manifest_path).rows).values()}

    a = partition("a")
    assert a and a == partition("b")


def _copies_set(root: Path, n: int = 5, seed: int = 0) -> None:
    """root/copies/: n near copies of one photo (each 2 bits from it); plus two classes of other photos."""
    rng = np.random.default_rng(seed)
    base, used = _balanced_hash(rng), set()
    _hash_image(base, root / "copies" / "copy_00.png")
    for i in range(1, n):
        _hash_image(_flip_pairs(base, rng, 1, used), root / "copies" / f"copy_{i:02d}.png")
    _plain_classes(root, rng)


def test_cli_refuses_a_class_that_cannot_be_split(tmp_path: Path) -> None:
    _copies_set(tmp_path / "set")
    work = tmp_path / "W"
    runner = CliRunner()
    args = ["-C", str(work), "ingest", "--dataset", "folder", "--root", str(tmp_path / "set")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    line = lines[0]
    assert "class 'copies' would have no image in val and test" in line
    assert "5 images form 1 group" in line and "merged 5 groups into 1" in line
    assert "lower --near-dup-distance" in line and "--val-fraction 0 --test-fraction 0" in line
    assert not list((work / "manifests").glob("*.csv")) and not list(
        (work / "manifests").glob("*.report.json")
    )
    # the fix it names works: these copies are then five groups, spread over every split
    result = runner.invoke(app, [*args, "--near-dup-distance", "0"])
    assert result.exit_code == 0, result.output
    rows = read_manifest(work / "manifests" / "set.csv").rows
    assert {r.split for r in rows if r.label == "copies"} == {"train", "val", "test"}


def _table_set(root: Path, rare: list[tuple[str, str]], n_common: int = 10) -> Path:
    """root/metadata.csv: class 'common' (n_common photos, one group each) and 'rare' ((group, split) each)."""
    rng = np.random.default_rng(3)
    rows = []
    for i in range(n_common):
        _hash_image(_balanced_hash(rng), root / f"common_{i:02d}.png")
        rows.append([f"common_{i:02d}.png", "common", f"P{i}", ""])
    for i, (group, split) in enumerate(rare):
        _hash_image(_balanced_hash(rng), root / f"rare_{i:02d}.png")
        rows.append([f"rare_{i:02d}.png", "rare", group, split])
    return _write_csv(root / "metadata.csv", ["path", "label", "group", "split"], rows)


def test_class_of_one_lesion_is_refused(ws: Workspace, tmp_path: Path) -> None:
    _table_set(tmp_path / "t", [("L1", ""), ("L1", ""), ("L1", "")])
    with pytest.raises(UsageError) as err:
        run_ingest("csv", tmp_path / "t", ws, IngestOptions(workers=1))
    msg = err.value.message
    assert "class 'rare' would have no image in val and test: its 3 images form 1 group" in msg
    assert "share the data set's group 'L1'" in msg and "drop the class" in msg
    assert "--val-fraction 0 --test-fraction 0" in msg and "--near-dup-distance" not in msg
    assert "\n" not in msg
    assert not list(ws.manifests.glob("*.csv")) and not list(ws.manifests.glob("*.report.json"))
    # without val and test nothing is asked of the class
    s = run_ingest("csv", tmp_path / "t", ws, IngestOptions(workers=1, val_fraction=0.0, test_fraction=0.0))
    assert {r.split for r in read_manifest(s.manifest_path).rows} == {"train"}


def test_class_of_one_image_is_refused(ws: Workspace, tmp_path: Path) -> None:
    _table_set(tmp_path / "t", [("", "")])
    with pytest.raises(
        UsageError,
        match=r"class 'rare' would have no image in val and test: it has 1 image "
        r"and train/val/test need at least 3; fix: drop the class or merge it into another",
    ):
        run_ingest("csv", tmp_path / "t", ws, IngestOptions(workers=1))
    # two photos in two groups are enough for two splits: train and test when no val is asked for
    _table_set(tmp_path / "u", [("", ""), ("", "")])
    with pytest.raises(
        UsageError,
        match=r"class 'rare' would have no image in (val|test): its 2 images form 2 groups and "
        r"train/val/test need 3 groups .*, or pass --val-fraction 0 or --test-fraction 0$",
    ):
        run_ingest("csv", tmp_path / "u", ws, IngestOptions(workers=1))
    s = run_ingest("csv", tmp_path / "u", ws, IngestOptions(workers=1, val_fraction=0.0))
    assert {r.split for r in read_manifest(s.manifest_path).rows if r.label == "rare"} == {"train", "test"}


def test_publisher_test_set_is_not_checked_only_what_the_split_draws(ws: Workspace, tmp_path: Path) -> None:
    # 'rare' has a published test photo and one other: the split can give it train but not val too
    _table_set(tmp_path / "t", [("", "test"), ("", "")])
    with pytest.raises(
        UsageError,
        match=r"class 'rare' would have no image in val: it has 1 image and "
        r"train/val need at least 2; fix: drop the class or merge it into another, or pass --val-fraction 0$",
    ):
        run_ingest("csv", tmp_path / "t", ws, IngestOptions(workers=1))
    s = run_ingest("csv", tmp_path / "t", ws, IngestOptions(workers=1, val_fraction=0.0))
    rare = {Path(r.path).name: r.split for r in read_manifest(s.manifest_path).rows if r.label == "rare"}
    assert rare == {"rare_00.png": "test", "rare_01.png": "train"}
    # a class found only in the published test set asks nothing of the split
    _table_set(tmp_path / "u", [("", "test")])
    assert run_ingest("csv", tmp_path / "u", ws, IngestOptions(workers=1, name="u")).rows == 11


def test_corpus_of_near_copies_is_not_refused(ws: Workspace, tmp_path: Path) -> None:
    _copies_set(tmp_path / "set")
    s = run_ingest("folder", tmp_path / "set", ws, IngestOptions(workers=1, unlabelled=True))
    assert s.role == "corpus" and s.rows == 21
