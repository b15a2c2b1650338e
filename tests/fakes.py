"""Small fake copies of the published dermatology data sets, in their exact layouts.

Each builder writes a few generated images (smooth random colour patterns, seeded per image so no two hash
alike and a resized copy still looks alike) with the publishers' real CSV headers, id formats and folder
names, plus stray OS junk (.DS_Store, Thumbs.db, __MACOSX/) and, when asked, broken files (zero-byte,
truncated) and metadata/image mismatches. Each returns a `FakeSet` describing what it wrote, so tests can
check an adapter or the ingest engine against it. Every builder runs in well under a second.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SIZE = (48, 36)  # width, height: tiny, HAM10000's 4:3 aspect, above ingest's 32 px minimum

HAM_METADATA_HEADER = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
HAM_DX = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
ISIC2018_ONE_HOT_HEADER = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
PAD_HEADER = (
    "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
    "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,diameter_1,"
    "diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed"
).split(",")
PAD_DIAGNOSTICS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
FITZ_HEADER = (
    "md5hash",
    "fitzpatrick_scale",
    "fitzpatrick_centaur",
    "label",
    "nine_partition_label",
    "three_partition_label",
    "qc",
    "url",
    "url_alphanum",
)
# (fine label, nine_partition_label, three_partition_label) as in the real file.
FITZ_CONDITIONS = (
    ("psoriasis", "inflammatory", "non-neoplastic"),
    ("basal cell carcinoma", "malignant epidermal", "malignant"),
    ("seborrheic keratosis", "benign epidermal", "benign"),
    ("melanoma", "malignant melanoma", "malignant"),
    ("eczema", "inflammatory", "non-neoplastic"),
    ("dermatofibroma", "benign dermal", "benign"),
)
ISIC_CLI_HEADER = (
    "isic_id",
    "attribution",
    "copyright_license",
    "age_approx",
    "anatom_site_general",
    "benign_malignant",
    "diagnosis",
    "diagnosis_confirm_type",
    "image_type",
    "lesion_id",
    "melanocytic",
    "patient_id",
    "sex",
)
DERM7PT_HEADER = (
    "case_num",
    "diagnosis",
    "seven_point_score",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "level_of_diagnostic_difficulty",
    "elevation",
    "location",
    "sex",
    "clinic",
    "derm",
    "notes",
)
DERM7PT_DIAGNOSES = (
    ("basal cell carcinoma", "Aal"),
    ("blue nevus", "Abl"),
    ("clark nevus", "Fcl"),
    ("melanoma (less than 0.76 mm)", "Ggl"),
    ("seborrheic keratosis", "Nml"),
)


@dataclass
class FakeSet:
    """What a builder wrote. Ids are the publisher's (ISIC id, PAT_...png, md5 hex, derm7pt path...)."""

    root: Path  # what to pass as --root
    name: str  # adapter name
    variant: str  # the builder's variant arguments, in words
    images: dict[str, Path] = field(default_factory=dict)  # listed id -> file on disk
    labels: dict[str, str] = field(default_factory=dict)  # listed id -> publisher label
    groups: dict[str, str] = field(default_factory=dict)  # listed id -> group key
    test_ids: set[str] = field(default_factory=set)  # ids the publisher puts in its test set
    missing: list[str] = field(default_factory=list)  # ids listed in metadata with no file
    unlisted: list[Path] = field(default_factory=list)  # image files no metadata row lists
    broken: list[Path] = field(default_factory=list)  # zero-byte / truncated files (also in images)
    junk: list[Path] = field(default_factory=list)  # .DS_Store, Thumbs.db, __MACOSX files
    extras: dict[str, dict[str, str]] = field(default_factory=dict)  # listed id -> notable extra columns


def pattern(seed: int, size: tuple[int, int] = IMAGE_SIZE) -> Image.Image:
    """A smooth random colour pattern: distinct per seed, robust to resizing (perceptual hashes match)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8), "RGB")
    smooth = np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.int16)
    noise = rng.integers(-6, 7, size=smooth.shape, dtype=np.int16)
    return Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8), "RGB")


def write_image(path: Path, seed: int, size: tuple[int, int] = IMAGE_SIZE, alpha: bool = False) -> Path:
    """Write pattern(seed) at path in the format its suffix names (jpg, png, bmp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = pattern(seed, size)
    suffix = path.suffix.lower()
    if alpha:
        im = im.convert("RGBA")
        im.putalpha(200)
    if suffix in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=92)
    elif suffix == ".png":
        im.save(path, format="PNG")
    elif suffix == ".bmp":
        im.save(path, format="BMP")
    else:
        raise ValueError(f"fake images are jpg, png or bmp, not {path.suffix}")
    return path


def reencode(src: Path, dst: Path, scale: float = 1.5, quality: int = 70) -> Path:
    """A near duplicate of src: resized by scale and re-encoded as JPEG."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(src) as im:
        im = im.convert("RGB")
        im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR).save(
            dst, format="JPEG", quality=quality
        )
    return dst


def break_file(path: Path, how: str) -> Path:
    """Make path a zero-byte file (how="empty") or cut it to a third of its bytes (how="truncated")."""
    data = path.read_bytes()
    path.write_bytes(b"" if how == "empty" else data[: max(1, len(data) // 3)])
    return path


def add_junk(folder: Path, image_name: str = "IMG_0001.jpg") -> list[Path]:
    """The OS debris real copies carry: .DS_Store, Thumbs.db and a __MACOSX/ resource-fork twin."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = folder / ".DS_Store"
    ds.write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(32))
    thumbs = folder / "Thumbs.db"
    thumbs.write_bytes(b"\xd0\xcf\x11\xe0" + bytes(32))
    mac = folder / "__MACOSX" / image_name
    mac.parent.mkdir(parents=True, exist_ok=True)
    mac.write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble header, not an image
    return [ds, thumbs, mac]


def write_csv(
    path: Path, header: Iterable[str], rows: Iterable[Iterable[object]], delimiter: str = ","
) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(list(header))
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def isic_id(number: int) -> str:
    return f"ISIC_{number:07d}"


def make_ham10000(
    root: Path,
    n_lesions: int = 14,
    variant: str = "parts",
    test_format: str | None = "onehot",
    n_test: int = 14,
    metadata_ext: bool = True,
    dataset_column: bool = False,
    extra_test_columns: bool = True,
    with_missing: int = 0,
    with_unlisted: int = 0,
    corrupt: bool = False,
    junk: bool = True,
    seed: int = 0,
) -> FakeSet:
    """HAM10000 + (optionally) the ISIC 2018 Task 3 test set.

    variant: "parts" (HAM10000_images_part_1/ + _part_2/), "merged" (one HAM10000_images/ folder) or
    "challenge" (the ISIC 2018 Task 3 release: ISIC2018_Task3_Training_Input/, one-hot
    ISIC2018_Task3_Training_GroundTruth.csv, lesion ids in ISIC2018_Task3_Training_LesionGroupings.csv; the
    test images then go to ISIC2018_Task3_Test_Input/).
    test_format: "onehot" (challenge ground truth; extra score_weight/validation_weight columns when
    extra_test_columns), "dx" (dataverse metadata format) or None (no test set). Lesion i has dx
    HAM_DX[i % 7] and 1-3 images, so several images share a lesion_id. with_missing: that many metadata
    rows lose their image; with_unlisted: that many extra images no row lists; corrupt: one listed image
    zero-byte and one truncated. metadata_ext=False writes `HAM10000_metadata` without `.csv`.
    """
    if variant not in ("parts", "merged", "challenge"):
        raise ValueError("variant is 'parts', 'merged' or 'challenge'")
    info = FakeSet(root=root, name="ham10000", variant=f"{variant}, test={test_format}")
    folders = {
        "parts": [root / "HAM10000_images_part_1", root / "HAM10000_images_part_2"],
        "merged": [root / "HAM10000_images"],
        "challenge": [root / "ISIC2018_Task3_Training_Input"],
    }[variant]
    rows = []
    number = 24306
    for lesion in range(n_lesions):
        lesion_id = f"HAM_{lesion + 118:07d}"
        dx = HAM_DX[lesion % len(HAM_DX)]
        for _ in range(1 + (lesion * 7 + seed) % 3):
            image_id = isic_id(number)
            number += 1
            folder = folders[len(rows) % len(folders)]
            path = write_image(folder / f"{image_id}.jpg", _seed("ham", seed, image_id))
            row = [lesion_id, image_id, dx, "histo" if dx == "mel" else "follow_up", "45.0", "male", "back"]
            if dataset_column:
                row.append("vidir_modern")
            rows.append(row)
            info.images[image_id] = path
            info.labels[image_id] = dx
            info.groups[image_id] = lesion_id
            info.extras[image_id] = {"dx_type": row[3], "age": row[4], "sex": row[5], "localization": row[6]}
    if variant == "challenge":
        confirm = {"histo": "histopathology", "follow_up": "serial imaging showing no change"}
        one_hot = [[r[1], *(_one_hot(r[2]))] for r in rows]
        write_csv(root / "ISIC2018_Task3_Training_GroundTruth.csv", ISIC2018_ONE_HOT_HEADER, one_hot)
        groupings = [[r[1], r[0], confirm[r[3]]] for r in rows]
        write_csv(
            root / "ISIC2018_Task3_Training_LesionGroupings.csv",
            ["image", "lesion_id", "diagnosis_confirm_type"],
            groupings,
        )
    else:
        header = list(HAM_METADATA_HEADER) + (["dataset"] if dataset_column else [])
        write_csv(root / ("HAM10000_metadata.csv" if metadata_ext else "HAM10000_metadata"), header, rows)
    _drop_images(info, with_missing)
    for k in range(with_unlisted):
        info.unlisted.append(
            write_image(folders[0] / f"{isic_id(29000 + k)}.jpg", _seed("ham-unlisted", seed, k))
        )
    if corrupt:
        ids = sorted(info.images)
        info.broken.append(break_file(info.images[ids[0]], "empty"))
        info.broken.append(break_file(info.images[ids[1]], "truncated"))
    if test_format is not None:
        images = "ISIC2018_Task3_Test_Input" if variant == "challenge" else "ISIC2018_Task3_Test_Images"
        _make_isic2018_test(root / images, root, info, test_format, n_test, extra_test_columns, seed)
    if junk:
        info.junk += add_junk(folders[0], f"._{isic_id(24306)}.jpg")
    return info


def _one_hot(dx: str) -> list[str]:
    return ["1.0" if dx == code.lower() else "0.0" for code in ISIC2018_ONE_HOT_HEADER[1:]]


def _make_isic2018_test(
    folder: Path, root: Path, info: FakeSet, test_format: str, n_test: int, extra_columns: bool, seed: int
) -> None:
    one_hot_rows, dx_rows = [], []
    for k in range(n_test):
        image_id = isic_id(34524 + k)
        dx = HAM_DX[k % len(HAM_DX)]
        lesion_id = f"HAM_{7000 + k:07d}"
        info.images[image_id] = write_image(folder / f"{image_id}.jpg", _seed("ham-test", seed, image_id))
        info.labels[image_id] = dx
        info.test_ids.add(image_id)
        one_hot_rows.append([image_id, *_one_hot(dx), *(["1.0", "1.0"] if extra_columns else [])])
        dx_rows.append([lesion_id, image_id, dx, "histo", "50.0", "female", "trunk", "vienna_dias"])
        if test_format == "dx":
            info.groups[image_id] = lesion_id
    truth = root / "ISIC2018_Task3_Test_GroundTruth.csv"
    if test_format == "onehot":
        header = list(ISIC2018_ONE_HOT_HEADER) + (
            ["score_weight", "validation_weight"] if extra_columns else []
        )
        write_csv(truth, header, one_hot_rows)
    elif test_format == "dx":
        write_csv(truth, [*HAM_METADATA_HEADER, "dataset"], dx_rows)
    else:
        raise ValueError("test_format is 'onehot', 'dx' or None")


def _drop_images(info: FakeSet, n: int) -> None:
    """Delete the files of the last n listed images, so their metadata rows have no image."""
    for image_id in sorted(info.images)[len(info.images) - n :] if n else []:
        info.images.pop(image_id).unlink()
        info.missing.append(image_id)


def make_pad_ufes_20(
    root: Path,
    n_patients: int = 12,
    variant: str = "parts",
    with_missing: int = 0,
    with_unlisted: int = 0,
    corrupt: bool = False,
    junk: bool = True,
    seed: int = 0,
) -> FakeSet:
    """PAD-UFES-20: metadata.csv with the publisher's 26 columns and PNG images.

    variant: "parts" (images/imgs_part_1..3/) or "flat" (images/). Patient p has 1-2 lesions and each lesion
    1-2 photos; lesion diagnoses cycle through ACK BCC MEL NEV SCC SEK. One image is an RGBA PNG (alpha).
    `fitspatrick` is e.g. "3.0", or empty for some patients (unknown).
    """
    if variant not in ("parts", "flat"):
        raise ValueError("variant is 'parts' or 'flat'")
    info = FakeSet(root=root, name="pad-ufes-20", variant=variant)
    images = root / "images"
    folders = [images / f"imgs_part_{k}" for k in (1, 2, 3)] if variant == "parts" else [images]
    rows = []
    lesion_number = 1765
    for p in range(n_patients):
        patient_id = f"PAT_{1516 + p * 7}"
        fitz = "" if p % 5 == 4 else f"{1 + p % 6}.0"
        for _ in range(1 + p % 2):
            diagnostic = PAD_DIAGNOSTICS[lesion_number % len(PAD_DIAGNOSTICS)]
            for n in range(1 + lesion_number % 2):
                img_id = f"{patient_id}_{lesion_number}_{530 + n}.png"
                path = folders[len(rows) % len(folders)] / img_id
                write_image(path, _seed("pad", seed, img_id), alpha=not rows)
                values = {
                    "patient_id": patient_id,
                    "lesion_id": lesion_number,
                    "smoke": "False",
                    "drink": "False",
                    "background_father": "POMERANIA",
                    "background_mother": "POMERANIA",
                    "age": 55 + p,
                    "pesticide": "False",
                    "gender": "FEMALE" if p % 2 else "MALE",
                    "skin_cancer_history": "True",
                    "cancer_history": "True",
                    "has_piped_water": "True",
                    "has_sewage_system": "True",
                    "fitspatrick": fitz,
                    "region": "FACE",
                    "diameter_1": "6.0",
                    "diameter_2": "5.0",
                    "diagnostic": diagnostic,
                    "itch": "False",
                    "grew": "False",
                    "hurt": "False",
                    "changed": "False",
                    "bleed": "False",
                    "elevation": "True",
                    "img_id": img_id,
                    "biopsed": "True" if diagnostic != "NEV" else "False",
                }
                rows.append([values[c] for c in PAD_HEADER])
                info.images[img_id] = path
                info.labels[img_id] = diagnostic
                info.groups[img_id] = patient_id
                info.extras[img_id] = {
                    "skin_type": fitz[:1] if fitz else "-1",
                    "lesion_id": str(lesion_number),
                }
            lesion_number += 1
    write_csv(root / "metadata.csv", PAD_HEADER, rows)
    _drop_images(info, with_missing)
    for k in range(with_unlisted):
        info.unlisted.append(
            write_image(folders[-1] / f"PAT_9{k:03d}_99{k}_1.png", _seed("pad-unlisted", seed, k))
        )
    if corrupt:
        ids = sorted(info.images)
        info.broken.append(break_file(info.images[ids[0]], "empty"))
        info.broken.append(break_file(info.images[ids[1]], "truncated"))
    if junk:
        info.junk += add_junk(images)
    return info


def make_fitzpatrick17k(
    root: Path,
    n: int = 18,
    csv_name: str = "fitzpatrick17k.csv",
    layout: str = "flat",
    with_missing: int = 3,
    with_unlisted: int = 0,
    corrupt: bool = False,
    junk: bool = True,
    seed: int = 0,
) -> FakeSet:
    """Fitzpatrick17k: the metadata CSV (`fitzpatrick17k.csv` or `fitzpatrick17kv2.csv`) and `<md5hash>.jpg`.

    layout: "flat" (images/<md5>.jpg) or "nested" (images/<three_partition_label>/<md5>.jpg). with_missing rows
    (dead links) have no image. fitzpatrick_scale cycles 1..6 and -1; `qc` is set on every fourth row.
    info.labels holds three_partition_label; info.extras[md5] has "label", "nine_partition_label",
    "three_partition_label" and "skin_type".
    """
    if layout not in ("flat", "nested"):
        raise ValueError("layout is 'flat' or 'nested'")
    info = FakeSet(root=root, name="fitzpatrick17k", variant=f"{csv_name}, {layout}")
    rows = []
    for i in range(n):
        md5 = hashlib.md5(f"fitz-{seed}-{i}".encode()).hexdigest()
        fine, nine, three = FITZ_CONDITIONS[i % len(FITZ_CONDITIONS)]
        scale = (1, 2, 3, 4, 5, 6, -1)[i % 7]
        url = f"https://www.dermaamin.com/site/images/clinical-pic/{fine[0]}/{fine.replace(' ', '-')}{i}.jpg"
        qc = "1 Diagnostic" if i % 4 == 0 else ""
        rows.append(
            [md5, scale, max(scale, 1), fine, nine, three, qc, url, "".join(ch for ch in url if ch.isalnum())]
        )
        folder = root / "images" / (three if layout == "nested" else "")
        info.images[md5] = write_image(folder / f"{md5}.jpg", _seed("fitz", seed, md5))
        info.labels[md5] = three
        info.extras[md5] = {
            "label": fine,
            "nine_partition_label": nine,
            "three_partition_label": three,
            "skin_type": str(scale),
            "qc": qc,
        }
    write_csv(root / csv_name, FITZ_HEADER, rows)
    _drop_images(info, with_missing)
    for k in range(with_unlisted):
        md5 = hashlib.md5(f"fitz-unlisted-{seed}-{k}".encode()).hexdigest()
        info.unlisted.append(write_image(root / "images" / f"{md5}.jpg", _seed("fitz-unlisted", seed, k)))
    if corrupt:
        ids = sorted(info.images)
        info.broken.append(break_file(info.images[ids[0]], "empty"))
        info.broken.append(break_file(info.images[ids[1]], "truncated"))
    if junk:
        info.junk += add_junk(root / "images")
    return info


def make_isic_archive(
    root: Path,
    ids: int | Iterable[str] = 8,
    include_images_from: Iterable[Path] = (),
    reencoded_from: Iterable[Path] = (),
    with_metadata: bool = True,
    with_missing: int = 0,
    with_unlisted: int = 0,
    junk: bool = True,
    seed: int = 0,
) -> FakeSet:
    """An ISIC archive download as isic-cli writes it: ISIC_xxxxxxx.jpg + metadata.csv (`isic_id` first).

    ids: how many fresh images (ids from ISIC_0060000 up), or the ISIC ids to write. include_images_from:
    image files copied byte for byte under their own names (e.g. HAM10000 images: same id, same bytes).
    reencoded_from: files resized x1.5 and re-encoded as JPEG under fresh ids (near duplicates that only a
    perceptual hash can catch). info.extras[id]["copy_of"] names the source of every copy.
    with_metadata=False gives a bare folder of ISIC_*.jpg. with_unlisted: images no metadata row lists
    (only meaningful with metadata).
    """
    info = FakeSet(root=root, name="isic-archive", variant="metadata" if with_metadata else "bare")
    wanted = [isic_id(60000 + k) for k in range(ids)] if isinstance(ids, int) else list(ids)
    for k, image_id in enumerate(wanted):
        info.images[image_id] = write_image(root / f"{image_id}.jpg", _seed("isic", seed, image_id))
        info.labels[image_id] = ("nevus", "melanoma", "seborrheic keratosis")[k % 3]
        info.groups[image_id] = f"IL_{1000000 + k // 2:07d}"
    for src in include_images_from:
        dst = root / src.name
        dst.write_bytes(src.read_bytes())
        info.images[src.stem] = dst
        info.labels[src.stem] = "nevus"
        info.extras[src.stem] = {"copy_of": str(src)}
    for k, src in enumerate(reencoded_from):
        image_id = isic_id(80000 + k)
        info.images[image_id] = reencode(src, root / f"{image_id}.jpg")
        info.labels[image_id] = "nevus"
        info.extras[image_id] = {"copy_of": str(src)}
    if with_metadata:
        rows = []
        for image_id in info.images:
            rows.append(
                [
                    image_id,
                    "Anonymous",
                    "CC-BY",
                    "45",
                    "posterior torso",
                    "benign",
                    info.labels[image_id],
                    "histopathology",
                    "dermoscopic",
                    info.groups.get(image_id, ""),
                    "True",
                    "IP_1234567",
                    "male",
                ]
            )
        write_csv(root / "metadata.csv", ISIC_CLI_HEADER, rows)
        _drop_images(info, with_missing)
        for k in range(with_unlisted):
            info.unlisted.append(
                write_image(root / f"{isic_id(90000 + k)}.jpg", _seed("isic-unlisted", seed, k))
            )
    if junk:
        info.junk += add_junk(root)
    return info


def make_derm7pt(
    root: Path,
    n_cases: int = 10,
    with_split_files: bool = True,
    with_missing: int = 0,
    junk: bool = True,
    seed: int = 0,
) -> FakeSet:
    """derm7pt `release_v0/` under root: meta/meta.csv, meta/{train,valid,test}_indexes.csv, images/.

    Case c (case_num c+1) has a clinical photo `<Dir>/<Dir>0NN.jpg` and a dermoscopic photo `<DIR>/<DIR>0NN.JPG`
    (the publisher mixes case in names). Ids are the paths listed in meta.csv (relative to images/). Index
    files hold 0-based row positions: the first 60 % of cases train, the next 20 % valid, the rest test.
    with_missing: that many listed images are not written.
    """
    release = root / "release_v0"
    info = FakeSet(
        root=root, name="derm7pt", variant="with split files" if with_split_files else "no split files"
    )
    rows, positions = [], {"train": [], "valid": [], "test": []}
    n_train, n_valid = int(n_cases * 0.6), int(n_cases * 0.2)
    for c in range(n_cases):
        diagnosis, folder = DERM7PT_DIAGNOSES[c % len(DERM7PT_DIAGNOSES)]
        clinic = f"{folder}/{folder}{2 * c + 1:03d}.jpg"
        derm = f"{folder.upper()}/{folder.upper()}{2 * c:03d}.JPG"
        split = "train" if c < n_train else "valid" if c < n_train + n_valid else "test"
        positions[split].append(c)
        rows.append(
            [c + 1, diagnosis, 1, "absent", "absent", "absent", "absent", "absent", "absent", "absent", "low"]
            + ["flat", "back", "female", clinic, derm, ""]
        )
        for listed in (clinic, derm):
            info.images[listed] = write_image(release / "images" / listed, _seed("derm7pt", seed, listed))
            info.labels[listed] = diagnosis
            info.groups[listed] = str(c + 1)
            if split == "test":
                info.test_ids.add(listed)
    write_csv(release / "meta" / "meta.csv", DERM7PT_HEADER, rows)
    if with_split_files:
        for split, rows_of in positions.items():
            write_csv(release / "meta" / f"{split}_indexes.csv", ["indexes"], [[p] for p in rows_of])
    _drop_images(info, with_missing)
    if junk:
        info.junk += add_junk(release / "images")
    return info


def make_mednode(
    root: Path, n_melanoma: int = 3, n_naevus: int = 4, wrapper: bool = True, seed: int = 0
) -> FakeSet:
    """MED-NODE: `complete_mednode_dataset/{melanoma,naevus}/*.jpg` under root (wrapper=True) or directly
    `root/{melanoma,naevus}` (wrapper=False: root is the complete_mednode_dataset folder itself)."""
    base = root / "complete_mednode_dataset" if wrapper else root
    info = FakeSet(root=root, name="mednode", variant="wrapper" if wrapper else "folder itself")
    for cls, count, first in (("melanoma", n_melanoma, 7), ("naevus", n_naevus, 3)):
        for k in range(count):
            image_id = f"{cls}/{first * 1000 + k * 37}.jpg"
            info.images[image_id] = write_image(base / image_id, _seed("mednode", seed, image_id))
            info.labels[image_id] = cls
    info.junk += add_junk(base)
    return info


def make_sd260(
    root: Path,
    classes: Iterable[str] = ("Acne_Vulgaris", "Eczema", "Psoriasis", "Tinea_Corporis"),
    per_class: int = 3,
    wrapper: str | None = "SD-260",
    seed: int = 0,
) -> FakeSet:
    """SD-260 / SD-198: `<wrapper>/<condition>/*.jpg` (wrapper=None: condition folders directly in root)."""
    base = root / wrapper if wrapper else root
    info = FakeSet(root=root, name="sd260", variant=f"wrapper={wrapper}")
    for cls in classes:
        for k in range(per_class):
            image_id = f"{cls}/{cls.lower()}_{k:03d}.jpg"
            info.images[image_id] = write_image(base / image_id, _seed("sd", seed, image_id))
            info.labels[image_id] = cls
    info.junk += add_junk(base)
    return info


PH2_TXT_HEADER = (
    "||   Name   || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Pigment Network "
    "|| Dots/Globules || Streaks || Regression Areas || Blue-Whitish Veil ||   Colors   ||"
)


def make_ph2(
    root: Path, n_cases: int = 6, with_txt: bool = True, with_unlisted: int = 0, seed: int = 0
) -> FakeSet:
    """PH2: `PH2Dataset/PH2 Dataset images/IMDnnn/IMDnnn_Dermoscopic_Image/IMDnnn.bmp` with the lesion and
    roi masks in sibling folders (never to be read as images) and `PH2Dataset/PH2_dataset.txt` (the
    `||`-separated table; Clinical Diagnosis 0/1/2). with_unlisted: cases on disk the txt does not list.
    info.labels holds common_nevus / atypical_nevus / melanoma."""
    base = root / "PH2Dataset"
    info = FakeSet(root=root, name="ph2", variant="with txt" if with_txt else "no txt")
    names = ("common_nevus", "atypical_nevus", "melanoma")
    lines = [PH2_TXT_HEADER]
    for k in range(n_cases + with_unlisted):
        case = f"IMD{2 + k * 3:03d}"
        folder = base / "PH2 Dataset images" / case
        path = write_image(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp", _seed("ph2", seed, case))
        mask = Image.new("L", IMAGE_SIZE, 0)
        (folder / f"{case}_lesion").mkdir(parents=True, exist_ok=True)
        mask.save(folder / f"{case}_lesion" / f"{case}_lesion.bmp")
        (folder / f"{case}_roi").mkdir(parents=True, exist_ok=True)
        mask.save(folder / f"{case}_roi" / f"{case}_R1_Label4.bmp")
        if k >= n_cases:
            info.unlisted.append(path)
            continue
        code = k % 3
        info.images[case] = path
        info.labels[case] = names[code]
        histo = "Melanoma" if code == 2 else ""
        lines.append(
            f"|| {case} || {histo:^22} || {code:^18} ||     A     ||        T        ||  A  ||  A  ||  A  ||  A  ||  4 5  ||"
        )
    lines += [
        "",
        "Legends:",
        "Clinical Diagnosis:",
        "  0 - Common Nevus;",
        "  1 - Atypical Nevus;",
        "  2 - Melanoma.",
    ]
    if with_txt:
        (base / "PH2_dataset.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    info.junk += add_junk(base)
    return info


def digit_images(size: int = 32, tint: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 real 8x8 handwritten digits (shipped offline) as (N, size, size, 3) uint8 RGB
    (bilinear upscaling, ink bright on dark), and their labels (N,).

    `tint` (for ColorMe, which rebuilds red and blue from green: on grey digits that is the identity): red
    and blue become the strength of the horizontal and vertical strokes at each pixel (absolute vertical
    and horizontal derivatives of the ink, scaled to [0, 1]). One fixed rule for every image, so the colour
    carries no label of its own; predicting it, and its histogram, takes knowing where strokes run, which
    is what a digit is made of."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8) in [0, 1]
    up = np.stack([np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR)) for g in gray])
    up = np.clip(up, 0.0, 1.0)  # (N, size, size)
    if not tint:
        rgb = np.repeat(up[..., None], 3, axis=-1)
    else:
        scale = size / 8  # a full ink step spans about one original pixel
        red = np.clip(np.abs(np.gradient(up, axis=1)) * scale, 0.0, 1.0)  # across rows: horizontal strokes
        blue = np.clip(np.abs(np.gradient(up, axis=2)) * scale, 0.0, 1.0)  # across columns: vertical strokes
        rgb = np.stack([red, up, blue], axis=-1)
    return (rgb * 255 + 0.5).astype(np.uint8), digits.target.astype(np.int64)


def write_digit_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    """One PNG per image, named by index, in a flat folder (an unlabelled corpus for `ingest --dataset
    folder`)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        p = folder / f"digit{i:04d}.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths
