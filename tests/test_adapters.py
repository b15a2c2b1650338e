"""Adapters for the published data sets, each read from fake copies of every published variant."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from fakes import (
    HAM_DX,
    PAD_DIAGNOSTICS,
    make_derm7pt,
    make_fitzpatrick17k,
    make_ham10000,
    make_isic_archive,
    make_mednode,
    make_pad_ufes_20,
    make_ph2,
    make_sd260,
)

from dermctl.data.adapters import AdapterOptions, AdapterResult, adapter_names, get_adapter
from dermctl.errors import DataError, UsageError

PUBLISHED = (
    "ham10000",
    "pad-ufes-20",
    "fitzpatrick17k",
    "isic-archive",
    "derm7pt",
    "mednode",
    "sd260",
    "ph2",
)


def read(name: str, root: Path, **options: str) -> AdapterResult:
    return get_adapter(name).read(root, AdapterOptions(**options))


def by_id(result: AdapterResult) -> dict[str, object]:
    return {r.image_id: r for r in result.records}


def test_every_published_set_is_registered_with_its_role() -> None:
    assert set(PUBLISHED) <= set(adapter_names())
    roles = {name: get_adapter(name).role for name in PUBLISHED}
    assert roles == {
        "ham10000": "task",
        "pad-ufes-20": "task",
        "fitzpatrick17k": "task",
        "isic-archive": "corpus",
        "derm7pt": "corpus",
        "mednode": "corpus",
        "sd260": "corpus",
        "ph2": "corpus",
    }


# --- HAM10000 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["parts", "merged"])
@pytest.mark.parametrize("test_format", ["onehot", "dx"])
def test_ham10000_labels_groups_and_official_test(tmp_path: Path, variant: str, test_format: str) -> None:
    fake = make_ham10000(tmp_path, variant=variant, test_format=test_format)
    result = read("ham10000", tmp_path)
    records = by_id(result)
    assert set(records) == set(fake.images)
    for image_id, rec in records.items():
        assert rec.label == fake.labels[image_id]
        assert rec.path == fake.images[image_id]
        assert rec.split == ("test" if image_id in fake.test_ids else "")
        assert rec.group == fake.groups.get(image_id, "")
    train = [r for r in result.records if r.split != "test"]
    assert {r.label for r in train} == set(HAM_DX)
    assert {r.label for r in result.records if r.split == "test"} == set(HAM_DX)
    # several images of one lesion share its lesion_id
    assert max(Counter(r.group for r in train).values()) > 1
    assert records["ISIC_0024306"].extras["dx_type"] in ("histo", "follow_up")
    assert records["ISIC_0024306"].extras["localization"] == "back"
    assert ("part_1/part_2" in result.variant) == (variant == "parts")
    assert ("merged" in result.variant) == (variant == "merged")
    assert ("one-hot" in result.variant) == (test_format == "onehot")
    assert ("dx column" in result.variant) == (test_format == "dx")
    assert result.missing_images == [] and result.unlisted_images == []


def test_ham10000_isic2018_challenge_release(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, variant="challenge", test_format="onehot")
    result = read("ham10000", tmp_path)
    records = by_id(result)
    assert set(records) == set(fake.images)
    for image_id, rec in records.items():
        assert rec.label == fake.labels[image_id]
        assert rec.group == fake.groups.get(image_id, "")
        assert rec.split == ("test" if image_id in fake.test_ids else "")
    assert "ISIC 2018 Task 3 training release" in result.variant
    assert "ISIC2018_Task3_Training_Input" in result.variant
    assert {r.extras["dx_type"] for r in result.records if r.split == ""} == {"histo", "follow_up"}
    # without the lesion groupings file there are no groups, and the user is told so
    (tmp_path / "ISIC2018_Task3_Training_LesionGroupings.csv").unlink()
    result = read("ham10000", tmp_path)
    assert {r.group for r in result.records} == {""}
    assert any("LesionGroupings" in n for n in result.notes)


def test_ham10000_metadata_without_extension_and_no_test_set(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, metadata_ext=False, test_format=None, dataset_column=True)
    result = read("ham10000", tmp_path)
    assert "HAM10000_metadata;" in result.variant and "no ISIC 2018 Task 3 test" in result.variant
    assert {r.split for r in result.records} == {""}
    assert len(result.records) == len(fake.images)
    assert {r.extras["dataset"] for r in result.records} == {"vidir_modern"}


def test_ham10000_one_hot_without_extra_columns(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, extra_test_columns=False, variant="merged")
    result = read("ham10000", tmp_path)
    test = {r.image_id: r.label for r in result.records if r.split == "test"}
    assert test == {i: fake.labels[i] for i in fake.test_ids}


def test_ham10000_reports_missing_and_unlisted_images_and_keeps_broken_files(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, with_missing=2, with_unlisted=3, corrupt=True)
    result = read("ham10000", tmp_path)
    assert sorted(result.missing_images) == sorted(fake.missing)
    assert sorted(result.unlisted_images) == sorted(p.relative_to(tmp_path).as_posix() for p in fake.unlisted)
    assert not set(fake.missing) & {r.image_id for r in result.records}
    # decoding is the engine's job: broken files are still listed so the engine can report them
    assert set(fake.broken) <= {r.path for r in result.records}
    # junk never becomes a record or an unlisted image
    assert not any("__MACOSX" in u or "DS_Store" in u for u in result.unlisted_images)
    assert any("no image" in n for n in result.notes)


def test_ham10000_label_column_override_and_errors(tmp_path: Path) -> None:
    make_ham10000(tmp_path, test_format="dx")
    result = read("ham10000", tmp_path, label_column="localization")
    assert {r.label for r in result.records} == {"back", "trunk"}
    with pytest.raises(
        UsageError, match="--label-column: 'colour' is not a column of .*HAM10000_metadata.csv"
    ):
        read("ham10000", tmp_path, label_column="colour")


def test_ham10000_one_hot_test_set_has_no_other_label_column(tmp_path: Path) -> None:
    make_ham10000(tmp_path, test_format="onehot")
    with pytest.raises(UsageError, match="ISIC2018_Task3_Test_GroundTruth.csv"):
        read("ham10000", tmp_path, label_column="sex")


def test_ham10000_wrong_root_is_one_line_data_error(tmp_path: Path) -> None:
    make_pad_ufes_20(tmp_path)
    with pytest.raises(DataError) as err:
        read("ham10000", tmp_path)
    message = err.value.message
    assert "\n" not in message
    assert message.startswith(
        f"--root: {tmp_path} does not look like ham10000: expected HAM10000_metadata.csv"
    )
    with pytest.raises(DataError, match="does not exist"):
        read("ham10000", tmp_path / "nope")


def test_ham10000_bad_one_hot_row_names_the_file(tmp_path: Path) -> None:
    make_ham10000(tmp_path, n_test=3)
    truth = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    lines = truth.read_text().splitlines()
    lines[1] = lines[1].replace("1.0", "0.0")
    truth.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError, match="ISIC2018_Task3_Test_GroundTruth.csv: image ISIC_0034524: expected exactly one"
    ):
        read("ham10000", tmp_path)


def test_ham10000_reads_dataverse_tab_copy(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, test_format=None)
    csv_path = tmp_path / "HAM10000_metadata.csv"
    tab = "\n".join('"' + line.replace(",", '"\t"') + '"' for line in csv_path.read_text().splitlines())
    (tmp_path / "HAM10000_metadata.tab").write_text(tab + "\n")
    csv_path.unlink()
    result = read("ham10000", tmp_path)
    assert {r.image_id: r.label for r in result.records} == fake.labels


# --- PAD-UFES-20 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["parts", "flat"])
def test_pad_ufes_20_labels_patients_and_skin_type(tmp_path: Path, variant: str) -> None:
    fake = make_pad_ufes_20(tmp_path, variant=variant)
    result = read("pad-ufes-20", tmp_path)
    records = by_id(result)
    assert set(records) == set(fake.images)
    assert {r.label for r in result.records} == set(PAD_DIAGNOSTICS)
    for img_id, rec in records.items():
        assert rec.label == fake.labels[img_id]
        assert rec.group == fake.groups[img_id]
        assert rec.split == ""
        assert rec.extras["skin_type"] == fake.extras[img_id]["skin_type"]
        assert rec.extras["diagnostic"] == fake.labels[img_id]
    assert "-1" in {r.extras["skin_type"] for r in result.records}
    assert ("imgs_part_1" in result.variant) == (variant == "parts")
    assert ("flat" in result.variant) == (variant == "flat")
    # a patient with several photos keeps one group
    assert max(Counter(r.group for r in result.records).values()) > 1


def test_pad_ufes_20_missing_unlisted_and_label_column(tmp_path: Path) -> None:
    fake = make_pad_ufes_20(tmp_path, with_missing=2, with_unlisted=1)
    result = read("pad-ufes-20", tmp_path)
    assert sorted(result.missing_images) == sorted(fake.missing)
    assert result.unlisted_images == [p.relative_to(tmp_path).as_posix() for p in fake.unlisted]
    biopsed = read("pad-ufes-20", tmp_path, label_column="biopsed")
    assert {r.label for r in biopsed.records} == {"True", "False"}
    with pytest.raises(UsageError, match="--label-column: 'dx' is not a column of .*metadata.csv"):
        read("pad-ufes-20", tmp_path, label_column="dx")


def test_pad_ufes_20_wrong_root(tmp_path: Path) -> None:
    make_isic_archive(tmp_path)  # has a metadata.csv, but not PAD's
    with pytest.raises(DataError, match=r"^--root: .* does not look like pad-ufes-20: expected metadata.csv"):
        read("pad-ufes-20", tmp_path)


# --- Fitzpatrick17k -------------------------------------------------------------------------------------


@pytest.mark.parametrize("csv_name", ["fitzpatrick17k.csv", "fitzpatrick17kv2.csv"])
@pytest.mark.parametrize("layout", ["flat", "nested"])
def test_fitzpatrick17k_variants_drop_missing_rows(tmp_path: Path, csv_name: str, layout: str) -> None:
    fake = make_fitzpatrick17k(tmp_path, csv_name=csv_name, layout=layout, with_missing=3)
    result = read("fitzpatrick17k", tmp_path)
    records = by_id(result)
    assert set(records) == set(fake.images)
    assert sorted(result.missing_images) == sorted(fake.missing)
    assert any("3 of 18 rows have no image" in n for n in result.notes)
    for md5, rec in records.items():
        assert rec.label == fake.extras[md5]["three_partition_label"]
        assert rec.extras["skin_type"] == fake.extras[md5]["skin_type"]
        assert rec.extras["qc"] == fake.extras[md5]["qc"]
        assert rec.group == "" and rec.split == ""
    assert {r.label for r in result.records} == {"non-neoplastic", "benign", "malignant"}
    assert csv_name in result.variant and layout in result.variant.replace("sub-folders", "nested")


@pytest.mark.parametrize(
    ("granularity", "column"),
    [("three", "three_partition_label"), ("nine", "nine_partition_label"), ("fine", "label")],
)
def test_fitzpatrick17k_granularity(tmp_path: Path, granularity: str, column: str) -> None:
    fake = make_fitzpatrick17k(tmp_path, with_missing=0)
    result = read("fitzpatrick17k", tmp_path, granularity=granularity)
    assert {r.image_id: r.label for r in result.records} == {k: v[column] for k, v in fake.extras.items()}


def test_fitzpatrick17k_option_errors(tmp_path: Path) -> None:
    make_fitzpatrick17k(tmp_path)
    with pytest.raises(UsageError, match="--granularity: 'coarse' is not one of three, nine, fine"):
        read("fitzpatrick17k", tmp_path, granularity="coarse")
    with pytest.raises(
        UsageError, match="--label-column: 'diagnosis' is not a column of .*fitzpatrick17k.csv"
    ):
        read("fitzpatrick17k", tmp_path, label_column="diagnosis")
    with pytest.raises(DataError, match="does not look like fitzpatrick17k: expected fitzpatrick17k.csv"):
        read("fitzpatrick17k", tmp_path / "images")


# --- ISIC archive ---------------------------------------------------------------------------------------


def test_isic_archive_with_metadata_is_an_unlabelled_corpus(tmp_path: Path) -> None:
    fake = make_isic_archive(tmp_path, ids=6, with_missing=1, with_unlisted=2)
    result = read("isic-archive", tmp_path)
    records = by_id(result)
    assert set(records) == set(fake.images)
    assert all(r.label == "" and r.split == "" for r in result.records)
    assert {i: r.extras["publisher_label"] for i, r in records.items()} == {
        i: fake.labels[i] for i in fake.images
    }
    assert result.missing_images == fake.missing
    assert sorted(result.unlisted_images) == sorted(p.name for p in fake.unlisted)
    assert "isic-cli metadata" in result.variant


def test_isic_archive_bare_folder_and_copies(tmp_path: Path) -> None:
    ham = make_ham10000(tmp_path / "ham", n_lesions=3, test_format=None)
    sources = sorted(ham.images.values())
    fake = make_isic_archive(
        tmp_path / "isic",
        ids=3,
        include_images_from=sources[:2],
        reencoded_from=sources[2:4],
        with_metadata=False,
    )
    result = read("isic-archive", tmp_path / "isic")
    assert "bare folder" in result.variant
    assert {r.image_id for r in result.records} == set(fake.images)
    copied = [i for i, e in fake.extras.items() if "copy_of" in e]
    assert len(copied) == 4
    for image_id in copied[:2]:
        assert fake.images[image_id].read_bytes() == ham.images[image_id].read_bytes()


def test_isic_archive_wrong_root_and_label_column(tmp_path: Path) -> None:
    make_sd260(tmp_path)
    with pytest.raises(DataError, match="does not look like isic-archive: expected ISIC_xxxxxxx.jpg"):
        read("isic-archive", tmp_path)
    make_isic_archive(tmp_path / "isic", ids=2)
    assert (
        read("isic-archive", tmp_path / "isic", label_column="sex").records[0].extras["publisher_label"]
        == "male"
    )
    with pytest.raises(UsageError, match="--label-column: 'dx' is not a column of .*metadata.csv"):
        read("isic-archive", tmp_path / "isic", label_column="dx")


# --- derm7pt --------------------------------------------------------------------------------------------


def test_derm7pt_two_photos_per_case_and_official_test(tmp_path: Path) -> None:
    fake = make_derm7pt(tmp_path, n_cases=10, with_missing=1)
    for root in (tmp_path, tmp_path / "release_v0"):
        result = read("derm7pt", root)
        records = by_id(result)
        assert set(records) == set(fake.images)
        assert result.missing_images == fake.missing
        for listed, rec in records.items():
            assert rec.label == ""
            assert rec.extras["publisher_label"] == fake.labels[listed]
            assert rec.group == fake.groups[listed]
            assert rec.split == ("test" if listed in fake.test_ids else "")
        assert {r.extras["modality"] for r in result.records} == {"clinical", "dermoscopic"}
        assert {r.extras["derm7pt_split"] for r in result.records} == {"train", "valid", "test"}
        assert "test_indexes" in result.variant
        assert any("test_indexes.csv" in n for n in result.notes)


def test_derm7pt_without_split_files_and_wrong_root(tmp_path: Path) -> None:
    make_derm7pt(tmp_path, with_split_files=False)
    result = read("derm7pt", tmp_path)
    assert {r.split for r in result.records} == {""}
    assert "no official split" in result.variant
    with pytest.raises(DataError, match="does not look like derm7pt: expected meta/meta.csv"):
        read("derm7pt", tmp_path / "release_v0" / "images")


def test_derm7pt_bad_index_file(tmp_path: Path) -> None:
    make_derm7pt(tmp_path, n_cases=5)
    (tmp_path / "release_v0" / "meta" / "test_indexes.csv").write_text("indexes\n99\n")
    with pytest.raises(DataError, match=r"test_indexes.csv: row 99 is outside meta.csv \(0..4\)"):
        read("derm7pt", tmp_path)


# --- MED-NODE, SD-260, PH2 ------------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", [True, False])
def test_mednode_root_is_parent_or_folder_itself(tmp_path: Path, wrapper: bool) -> None:
    fake = make_mednode(tmp_path, wrapper=wrapper)
    result = read("mednode", tmp_path)
    assert sorted(r.path for r in result.records) == sorted(fake.images.values())
    assert Counter(r.extras["publisher_label"] for r in result.records) == {"melanoma": 3, "naevus": 4}
    assert all(r.label == "" for r in result.records)
    if wrapper:
        assert len(read("mednode", tmp_path / "complete_mednode_dataset").records) == 7
    with pytest.raises(DataError, match="does not look like mednode"):
        read("mednode", tmp_path / ("complete_mednode_dataset" if wrapper else "") / "naevus")


@pytest.mark.parametrize("wrapper", ["SD-260", None])
def test_sd260_one_folder_per_condition(tmp_path: Path, wrapper: str | None) -> None:
    fake = make_sd260(tmp_path, wrapper=wrapper)
    result = read("sd260", tmp_path)
    assert {r.path: r.extras["publisher_label"] for r in result.records} == {
        p: fake.labels[i] for i, p in fake.images.items()
    }
    assert all(r.label == "" for r in result.records)
    assert "4 conditions" in result.variant
    with pytest.raises(
        DataError, match="does not look like sd260: expected one folder of images per condition"
    ):
        read("sd260", tmp_path / (wrapper or "") / "Eczema")


def test_ph2_reads_only_dermoscopic_images(tmp_path: Path) -> None:
    fake = make_ph2(tmp_path, n_cases=6, with_unlisted=1)
    result = read("ph2", tmp_path)
    assert {r.image_id for r in result.records} == set(fake.images) | {p.stem for p in fake.unlisted}
    assert not any("lesion" in r.path.name or "roi" in r.path.parent.name for r in result.records)
    for rec in result.records:
        assert rec.label == ""
        assert rec.extras["publisher_label"] == fake.labels.get(rec.image_id, "")
    # a case the table does not list is still a PH2 image: read, without publisher_label, and noted
    assert result.unlisted_images == []
    assert any("1 cases have no row in PH2_dataset.txt" in n for n in result.notes)
    assert "PH2_dataset.txt" in result.variant


def test_ph2_without_txt_and_wrong_root(tmp_path: Path) -> None:
    make_ph2(tmp_path, with_txt=False)
    result = read("ph2", tmp_path)
    assert len(result.records) == 6 and "without PH2_dataset.txt" in result.variant
    make_mednode(tmp_path / "other")
    with pytest.raises(DataError, match="does not look like ph2: expected PH2 Dataset images/IMDxxx"):
        read("ph2", tmp_path / "other")


@pytest.mark.parametrize("name", ["mednode", "sd260", "ph2"])
def test_folder_corpora_have_no_label_column(tmp_path: Path, name: str) -> None:
    {"mednode": make_mednode, "sd260": make_sd260, "ph2": make_ph2}[name](tmp_path)
    with pytest.raises(UsageError, match="--label-column"):
        read(name, tmp_path, label_column="diagnosis")


# --- cross-set checks -----------------------------------------------------------------------------------

BUILDERS = {
    "ham10000": make_ham10000,
    "pad-ufes-20": make_pad_ufes_20,
    "fitzpatrick17k": make_fitzpatrick17k,
    "isic-archive": make_isic_archive,
    "derm7pt": make_derm7pt,
    "mednode": make_mednode,
    "sd260": make_sd260,
    "ph2": make_ph2,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_fakes_are_fast_distinct_and_read_back(tmp_path: Path, name: str) -> None:
    start = time.perf_counter()
    fake = BUILDERS[name](tmp_path)
    assert time.perf_counter() - start < 1.0
    files = [p for p in fake.images.values() if p not in fake.broken]
    assert len({p.read_bytes() for p in files}) == len(files)  # no two fake images alike
    result = read(name, tmp_path)
    assert {r.path for r in result.records} == set(fake.images.values())
    assert not {r.path for r in result.records} & set(fake.junk)


@pytest.mark.parametrize(
    ("name", "other"), [(n, o) for n in PUBLISHED for o in ("ham10000", "mednode") if n != o]
)
def test_wrong_root_error_is_one_line_naming_the_set(tmp_path: Path, name: str, other: str) -> None:
    BUILDERS[other](tmp_path)
    try:
        result = read(name, tmp_path)
    except DataError as err:
        assert "\n" not in err.message
        assert err.message.startswith(f"--root: {tmp_path} does not look like {name}: expected ")
        return
    # Layouts that genuinely are also the other one: HAM10000's images are ISIC_*.jpg (a bare ISIC archive
    # folder), and MED-NODE is two folders of one condition each (SD-260's layout).
    assert (name, other) in {("isic-archive", "ham10000"), ("sd260", "mednode")}
    assert result.records


def test_sd198_wrapper_with_split_lists_beside_the_images(tmp_path: Path) -> None:
    fake = make_sd260(tmp_path, wrapper="SD-198/images")
    (tmp_path / "SD-198" / "8_2_split").mkdir()
    (tmp_path / "SD-198" / "8_2_split" / "train_1.txt").write_text("Eczema/eczema_000.jpg 1\n")
    result = read("sd260", tmp_path)
    assert {r.path for r in result.records} == set(fake.images.values())
    assert result.variant.startswith("SD-198:")


def test_isic_archive_downsampled_names_keep_the_archive_id(tmp_path: Path) -> None:
    fake = make_isic_archive(tmp_path, ids=3, with_metadata=False)
    first = sorted(fake.images)[0]
    fake.images[first].rename(tmp_path / f"{first}_downsampled.jpg")
    result = read("isic-archive", tmp_path)
    assert {r.image_id for r in result.records} == set(fake.images)


@pytest.mark.parametrize(
    ("name", "kwargs", "images"),
    [
        ("ham10000", {"test_format": None, "variant": "merged"}, "HAM10000_images"),
        ("pad-ufes-20", {}, "images"),
        ("fitzpatrick17k", {}, "images"),
        ("derm7pt", {}, "release_v0/images"),
    ],
)
def test_metadata_without_any_image_is_one_clear_error(
    tmp_path: Path, name: str, kwargs: dict[str, object], images: str
) -> None:
    BUILDERS[name](tmp_path, **kwargs)
    shutil.rmtree(tmp_path / images)
    with pytest.raises(
        DataError, match=r"^--root: .*: none of the \d+ images listed in .* was found \(expected e.g."
    ):
        read(name, tmp_path)


def test_ham10000_segmentation_masks_are_not_unlisted(tmp_path: Path) -> None:
    make_ham10000(tmp_path, test_format=None)
    masks = tmp_path / "HAM10000_segmentations_lesion_tschandl"
    masks.mkdir()
    (masks / "ISIC_0024306_segmentation.png").write_bytes(
        (tmp_path / "HAM10000_metadata.csv").read_bytes()[:10]
    )
    assert read("ham10000", tmp_path).unlisted_images == []


def test_derm7pt_label_column_picks_the_publisher_label(tmp_path: Path) -> None:
    make_derm7pt(tmp_path, n_cases=4)
    result = read("derm7pt", tmp_path, label_column="location")
    assert {r.extras["publisher_label"] for r in result.records} == {"back"}
    with pytest.raises(UsageError, match="--label-column: 'dx' is not a column of .*meta.csv"):
        read("derm7pt", tmp_path, label_column="dx")


def test_ham10000_mirror_with_parts_and_merged_copy_lists_each_image_once(tmp_path: Path) -> None:
    fake = make_ham10000(tmp_path, test_format=None)
    shutil.copytree(tmp_path / "HAM10000_images_part_1", tmp_path / "HAM10000_images")
    result = read("ham10000", tmp_path)
    assert sorted(r.image_id for r in result.records) == sorted(fake.images)
    assert any("appear twice on disk" in n for n in result.notes)


def test_metadata_with_bom_and_windows_encoding_is_read(tmp_path: Path) -> None:
    fake = make_pad_ufes_20(tmp_path, n_patients=3)
    meta = tmp_path / "metadata.csv"
    text = meta.read_text().replace("POMERANIA", "ITALIANA-Ç")
    meta.write_bytes(text.encode("cp1252"))
    assert {r.image_id for r in read("pad-ufes-20", tmp_path).records} == set(fake.images)
    meta.write_text("\ufeff" + text, encoding="utf-8")
    assert {r.image_id for r in read("pad-ufes-20", tmp_path).records} == set(fake.images)


# --------------------------------------------------------------------------------------------- csv tables


def _table(folder: Path, header: str, rows: list[str], images: int = 3) -> Path:
    """A CSV beside `images` tiny files (the adapter only checks that they exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(images):
        (folder / f"im{i}.png").write_bytes(b"png")
    (folder / "meta.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return folder / "meta.csv"


@pytest.mark.parametrize("label", ["Label", "LABEL", "labels", "Diagnosis", "DX", "Class", "target"])
def test_csv_label_column_is_found_in_any_case_among_aliases(tmp_path: Path, label: str) -> None:
    """A `Label` column used to be missed, and the task silently became an unlabelled corpus."""
    table = _table(tmp_path, f"Path,{label}", ["im0.png,mel", "im1.png,nev"])
    result = read("csv", table)
    assert result.role == "task" and [r.label for r in result.records] == ["mel", "nev"]
    assert f"label column {label!r}" in result.variant


@pytest.mark.parametrize("group", ["group", "Patient_ID", "patient", "lesion_id", "LESION", "case_id"])
def test_csv_group_column_is_found_in_any_case_among_aliases(tmp_path: Path, group: str) -> None:
    table = _table(tmp_path, f"path,label,{group}", ["im0.png,mel,P1", "im1.png,nev,P2"])
    result = read("csv", table)
    assert [r.group for r in result.records] == ["P1", "P2"]
    assert group not in result.records[0].extras


def test_csv_aliases_prefer_the_exact_spelling_then_the_documented_order(tmp_path: Path) -> None:
    table = _table(tmp_path, "path,dx,Label,lesion_id,patient_id", ["im0.png,a,b,L1,P1"])
    result = read("csv", table)
    assert result.records[0].label == "b"  # `label` comes first among the aliases, whatever its case
    assert result.records[0].group == "P1"  # a patient's lesions stay together
    assert result.records[0].extras == {"dx": "a", "lesion_id": "L1"}
    # explicit names also match in any case
    result = read("csv", table, label_column="DX", group_column="LESION_ID")
    assert (result.records[0].label, result.records[0].group) == ("a", "L1")


def test_csv_without_label_column_is_an_error_unless_unlabelled(tmp_path: Path) -> None:
    table = _table(tmp_path, "path,lbl,patient", ["im0.png,mel,P1", "im1.png,nev,P2"])
    with pytest.raises(DataError) as err:
        read("csv", table)
    message = err.value.message
    assert message.startswith(f"--root: {table} has no label column")
    assert "columns: path, lbl, patient" in message
    assert "--unlabelled" in message and "--label-column" in message
    assert "\n" not in message
    corpus = get_adapter("csv").read(table, AdapterOptions(unlabelled=True))
    assert corpus.role == "corpus" and {r.label for r in corpus.records} == {""}
    assert read("csv", table, role="corpus").role == "corpus"  # saying it is a corpus is as good
    assert [r.label for r in read("csv", table, label_column="LBL").records] == ["mel", "nev"]


def test_csv_unlisted_paths_error_says_where_paths_resolve(tmp_path: Path) -> None:
    """A table whose relative paths were written from another folder: 0 of them exist."""
    table = _table(tmp_path / "data", "path,label", ["data/im0.png,mel", "data/im1.png,nev"])
    with pytest.raises(DataError) as err:
        read("csv", table)
    message = err.value.message
    assert "none of the 2 images listed in" in message and str(table) in message
    assert f"resolve against the CSV's folder {tmp_path / 'data'}" in message
    assert str(tmp_path / "data" / "data" / "im0.png") in message  # where the first one was looked for
    empty = _table(tmp_path / "empty", "path,label", [])
    with pytest.raises(DataError, match="lists no images"):
        read("csv", empty)
