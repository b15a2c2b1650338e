"""The embeddings file: frozen features of one task's images under one model, in HDF5.

`embeddings/<model_id>/<task key>.h5` (`Workspace.task_key`: the task's name, plus a hash of the manifest's
path for a manifest outside the workspace; written by `dermctl embed`, or by users bringing their own features)::

    features      (N, D) float32   one row per manifest row, in manifest order
    labels        (N,)   int64     index into the class_names attribute; -1 = unlabelled
    split         (N,)   utf-8     train | val | test
    paths         (N,)   utf-8     image path as written in the manifest
    groups        (N,)   utf-8     manifest `group` (patient / lesion), "" when none
    sha256        (N,)   utf-8     SHA-256 of the image bytes
    image_id      (N,)   utf-8     published image id, "" when none
    extra/<col>   (N,)   utf-8     adapter extra columns of the manifest, e.g. extra/skin_type

    attributes: format ("dermctl.embeddings/1"), model_id, init, backbone, checkpoint_sha256,
    manifest_sha256, images_sha256 (hash of the rows' image hashes), class_names (JSON list), feature_rule, image_size, mean, std (JSON lists),
    channels ("rgb" | "green"), dermctl_version, complete (true only once every row is written)

Only features, labels, split and the class_names attribute are required to evaluate; an empty
manifest_sha256 disables the "built from this manifest" check.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dermctl import __version__
from dermctl.errors import DataError
from dermctl.provenance import sha256_file
from dermctl.workspace import Workspace, atomic_path, atomic_write_text

FORMAT = "dermctl.embeddings/1"
REQUIRED = ("features", "labels", "split")
STRING_DATASETS = ("split", "paths", "groups", "sha256", "image_id")
JSON_ATTRS = ("class_names", "mean", "std")


def _h5py() -> Any:
    import h5py

    return h5py


def _str_array(values: Sequence[Any]) -> np.ndarray:
    h5py = _h5py()
    return np.array([str(v) for v in values], dtype=h5py.string_dtype("utf-8"))


def _encode_attr(key: str, value: Any) -> Any:
    if key in JSON_ATTRS:
        return json.dumps(list(value))
    if isinstance(value, bool):
        return bool(value)
    if value is None:
        return ""
    return value


def seal_path(path: str | os.PathLike[str]) -> Path:
    """The integrity seal next to an embeddings file: `<file>.sha256` (its SHA-256, written by dermctl)."""
    p = Path(path)
    return p.with_name(p.name + ".sha256")


@contextlib.contextmanager
def sealed_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """`atomic_path` plus the seal. Before the rename the seal lists the new hash and the old one, after it
    only the new one, so a reader accepts the file whatever moment a crash hits."""
    target = Path(path)
    seal = seal_path(target)
    old = seal.read_text(encoding="utf-8").split()[:1] if seal.is_file() else []
    with atomic_path(target) as tmp:
        yield tmp
        new = sha256_file(tmp)
        atomic_write_text(seal, " ".join([new, *old]) + "\n")
    atomic_write_text(seal, new + "\n")


def verify_seal(path: str | os.PathLike[str]) -> None:
    """Check a file written by dermctl against its seal before HDF5 parses it (a damaged HDF5 file can
    make the HDF5 library hang or crash). Files brought by users without a seal are not checked."""
    p = Path(path)
    seal = seal_path(p)
    if not p.is_file():
        return
    if not seal.is_file():
        _probe_unsealed(p)
        return
    if sha256_file(p) not in seal.read_text(encoding="utf-8").split():
        raise DataError(
            f"{p}: content does not match {seal.name} (truncated or altered); rebuild it with `dermctl embed --force`"
        )


_PROBE = (
    "import sys, h5py\n"
    "with h5py.File(sys.argv[1], 'r') as f:\n"
    "    [f.attrs[k] for k in f.attrs]\n"
    "    f.visititems(lambda name, obj: getattr(obj, 'shape', None))\n"
)


def _probe_unsealed(p: Path) -> None:
    """A file without a seal (brought by a user) is first opened in a child process with a time limit: a
    damaged HDF5 file can make libhdf5 hang or crash, and that must end in an error, not a stuck command."""
    import subprocess
    import sys

    timeout = float(os.environ.get("DERMCTL_HDF5_PROBE_TIMEOUT", "120"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE, str(p)], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"{p}: the HDF5 library hangs reading this file (damaged?); rebuild it") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1][:160]
        raise DataError(f"{p}: not a readable HDF5 embeddings file ({last})")


class EmbeddingWriter:
    """Writes one embeddings file row batch by row batch (the features dataset is preallocated, so
    memory does not grow with N). `complete` is set only by `close()` after every row is written."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        n: int,
        labels: Sequence[int],
        split: Sequence[str],
        attrs: dict[str, Any],
        paths: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
        sha256: Sequence[str] | None = None,
        image_id: Sequence[str] | None = None,
        extras: dict[str, Sequence[str]] | None = None,
    ) -> None:
        h5py = _h5py()
        self.n = int(n)
        self.written = 0
        self._file = h5py.File(path, "w")
        f = self._file
        f.attrs["format"] = FORMAT
        f.attrs["dermctl_version"] = __version__
        for key, value in attrs.items():
            f.attrs[key] = _encode_attr(key, value)
        f.attrs["complete"] = False
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64).reshape(self.n))
        blanks = [""] * self.n
        columns = {"split": split, "paths": paths, "groups": groups, "sha256": sha256, "image_id": image_id}
        for name, values in columns.items():
            f.create_dataset(name, data=_str_array(blanks if values is None else values))
        grp = f.create_group("extra")
        for name, values in (extras or {}).items():
            grp.create_dataset(name, data=_str_array(values))
        self._features: Any = None

    def write(self, batch: np.ndarray) -> None:
        """Append the next rows' features (B, D)."""
        b = np.asarray(batch, dtype=np.float32)
        if self._features is None:
            chunk_rows = max(1, min(self.n, (1 << 20) // max(1, 4 * b.shape[1])))
            self._features = self._file.create_dataset(
                "features", shape=(self.n, b.shape[1]), dtype=np.float32, chunks=(chunk_rows, b.shape[1])
            )
        if self.written + b.shape[0] > self.n:
            raise ValueError(f"too many rows: {self.written + b.shape[0]} > {self.n}")
        self._features[self.written : self.written + b.shape[0]] = b
        self.written += b.shape[0]

    def close(self, attrs: dict[str, Any] | None = None) -> None:
        """Mark the file complete (after every row is written), adding `attrs` first."""
        if self.written != self.n:
            raise ValueError(f"{self.written} of {self.n} rows written")
        if self._features is None:
            self._file.create_dataset("features", shape=(0, 0), dtype=np.float32)
        for key, value in (attrs or {}).items():
            self._file.attrs[key] = _encode_attr(key, value)
        self._file.attrs["complete"] = True
        self._file.close()

    def abort(self) -> None:
        self._file.close()


def write_embeddings(
    path: str | os.PathLike[str],
    features: Any,
    labels: Sequence[int],
    split: Sequence[str],
    attrs: dict[str, Any],
    **columns: Any,
) -> Path:
    """Write a whole embeddings file at once, atomically (for users bringing their own features)."""
    feats = np.asarray(features, dtype=np.float32)
    with sealed_path(path) as tmp:
        writer = EmbeddingWriter(tmp, feats.shape[0], labels, split, attrs, **columns)
        try:
            writer.write(feats)
            writer.close()
        except BaseException:
            writer.abort()
            raise
    return Path(path)


@dataclass
class Embeddings:
    """An embeddings file in memory."""

    path: Path
    features: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    attrs: dict[str, Any]
    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    groups: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    sha256: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    image_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs.get("class_names") or [])

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def mask(self, split: str) -> np.ndarray:
        return self.split == split

    def take(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of the labelled rows of one split."""
        m = self.mask(split) & (self.labels >= 0)
        return self.features[m], self.labels[m]


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The attributes of an embeddings file (JSON attributes decoded). DataError when unreadable."""
    h5py = _h5py()
    p = Path(path)
    verify_seal(p)
    try:
        with h5py.File(p, "r") as f:
            return _decode_attrs(f.attrs)
    except FileNotFoundError as exc:
        raise DataError(f"{p}: embeddings file not found") from exc
    except OSError as exc:
        raise DataError(
            f"{p}: not a readable HDF5 embeddings file ({str(exc).splitlines()[0][:120]})"
        ) from exc


def _decode_attrs(raw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, np.generic):
            value = value.item()
        if key in JSON_ATTRS and isinstance(value, str):
            try:
                value = json.loads(value) if value else []
            except json.JSONDecodeError:
                value = None
        out[key] = value
    return out


def read_embeddings(path: str | os.PathLike[str]) -> Embeddings:
    """Read and validate an embeddings file; every problem is a one-line DataError naming the file."""
    h5py = _h5py()
    p = Path(path)
    verify_seal(p)
    try:
        with h5py.File(p, "r") as f:
            attrs = _decode_attrs(f.attrs)
            missing = [name for name in REQUIRED if name not in f]
            if missing:
                raise DataError(f"{p}: embeddings file lacks dataset(s) {', '.join(missing)}")
            if attrs.get("complete") is False:
                raise DataError(
                    f"{p}: embeddings file is incomplete (an interrupted `dermctl embed`?); rebuild it"
                )
            features = np.asarray(f["features"][()], dtype=np.float32)
            labels = np.asarray(f["labels"][()], dtype=np.int64)
            n = features.shape[0]
            strings = {
                name: f[name].asstr()[()] if name in f else np.array([""] * n, dtype=object)
                for name in STRING_DATASETS
            }
            extras = {name: ds.asstr()[()] for name, ds in f["extra"].items()} if "extra" in f else {}
    except FileNotFoundError as exc:
        raise DataError(f"{p}: embeddings file not found") from exc
    except OSError as exc:
        raise DataError(
            f"{p}: not a readable HDF5 embeddings file ({str(exc).splitlines()[0][:120]})"
        ) from exc
    if features.ndim != 2:
        raise DataError(f"{p}: features must be 2-D (N, D), found shape {features.shape}")
    for name, arr in [("labels", labels), *strings.items(), *((f"extra/{k}", v) for k, v in extras.items())]:
        if arr.shape[0] != n:
            raise DataError(f"{p}: dataset {name} has {arr.shape[0]} rows, features has {n}")
    if not isinstance(attrs.get("class_names"), list) or not attrs["class_names"]:
        raise DataError(f"{p}: attribute class_names must be a non-empty JSON list of class names")
    k = len(attrs["class_names"])
    if labels.size and (labels.min() < -1 or labels.max() >= k):
        raise DataError(f"{p}: labels must lie in -1..{k - 1} (class_names has {k} names)")
    if not np.isfinite(features).all():
        raise DataError(f"{p}: features contain NaN or Inf")
    return Embeddings(
        path=p,
        features=features,
        labels=labels,
        split=strings["split"],
        attrs=attrs,
        paths=strings["paths"],
        groups=strings["groups"],
        sha256=strings["sha256"],
        image_id=strings["image_id"],
        extras=extras,
    )


def models_with_embeddings(
    workspace: Workspace, task: str, manifest_path: str | os.PathLike[str] | None = None
) -> list[str]:
    """Model ids that have embeddings of `task` (sorted). With `manifest_path`, of exactly that manifest
    (its task key); else of any task of that name (`<task>.h5` or `<task>-<8 hex>.h5`)."""
    root = workspace.embeddings
    if not root.is_dir():
        return []
    if manifest_path is not None:
        key = workspace.task_key(manifest_path)
        return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / f"{key}.h5").is_file())
    pattern = re.compile(re.escape(task) + r"(-[0-9a-f]{8})?\.h5")
    return sorted(
        d.name
        for d in root.iterdir()
        if d.is_dir() and any(pattern.fullmatch(f.name) for f in d.glob(glob.escape(task) + "*.h5"))
    )


SKIN_TYPE_COLUMN = "skin_type"  # Fitzpatrick skin type extra (1-6, -1 unknown) of Fitzpatrick17k-like tasks


@dataclass
class TaskData:
    """One model's embeddings of one task, split and checked against the task's current manifest."""

    task: str
    model_id: str
    embeddings: Embeddings
    manifest_path: Path
    manifest_sha256: str
    embeddings_sha256: str

    @property
    def class_names(self) -> list[str]:
        return self.embeddings.class_names

    @property
    def n_classes(self) -> int:
        return self.embeddings.n_classes

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return self.embeddings.take(name)

    @property
    def test_sha256(self) -> list[str]:
        return [str(s) for s in self.embeddings.sha256[self._test]]

    @property
    def _test(self) -> np.ndarray:
        return self.embeddings.mask("test") & (self.embeddings.labels >= 0)

    @property
    def test_skin_types(self) -> np.ndarray | None:
        col = self.embeddings.extras.get(SKIN_TYPE_COLUMN)
        if col is None:
            return None
        # a blank skin type is "unknown", as fine-tuning names it: one group, not two
        test = np.asarray(col[self._test]).astype(str)
        return np.where(np.char.strip(test) == "", "unknown", test)

    def data_summary(self) -> dict[str, Any]:
        """The manifest a result came from and its labelled images per class and split."""
        emb = self.embeddings
        counts: dict[str, dict[str, int]] = {}
        for split in ("train", "val", "test"):
            labels = emb.labels[emb.mask(split) & (emb.labels >= 0)]
            per = np.bincount(labels, minlength=self.n_classes)
            counts[split] = {name: int(n) for name, n in zip(self.class_names, per, strict=True)}
        # The manifest's file name and hash, not its path: a moved workspace or `--task x.csv` typed
        # differently is the same result.
        return {
            "task": self.task,
            "manifest": self.manifest_path.name,
            "manifest_sha256": self.manifest_sha256,
            "class_counts": counts,
        }

    def test_predictions(self, pred: np.ndarray) -> dict[str, list[Any]]:
        """The headline test predictions per image: sha256, true and predicted class index."""
        _, y = self.split("test")
        return {"sha256": self.test_sha256, "y_true": [int(v) for v in y], "y_pred": [int(v) for v in pred]}

    def reports(
        self, pred: np.ndarray, scores: np.ndarray | None, bootstrap: int = 1000, seed: int = 0
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]] | None]:
        """(classification report of test predictions, per-skin-type reports or None)."""
        from dermctl.eval.metrics import by_group, classification_report

        _, y = self.split("test")
        report = classification_report(y, pred, self.n_classes, scores, self.class_names, bootstrap, seed)
        groups = self.test_skin_types
        per = None
        if groups is not None:
            per = by_group(y, pred, groups, self.n_classes, scores, self.class_names, bootstrap, seed)
        return report, per

    def inputs(self, checkpoint_sha256: str | None = None) -> dict[str, str]:
        return {
            "embeddings": self.embeddings_sha256,
            "manifest": self.manifest_sha256,
            "checkpoint": checkpoint_sha256 or str(self.embeddings.attrs.get("checkpoint_sha256", "")),
        }


def load_task_embeddings(workspace: Workspace, model_id: str, task: str, manifest_path: Path) -> TaskData:
    """Read embeddings/<model_id>/<task>.h5 and check it was built from `manifest_path` as it is now
    (DataError otherwise) and that train and test hold labelled images."""
    from dermctl.provenance import sha256_file

    path = workspace.embedding_path(model_id, workspace.task_key(manifest_path))
    if not path.is_file():
        raise DataError(
            f"{path}: no embeddings of task {task!r} for model {model_id!r} (run `dermctl embed --model ... --task {task}`)"
        )
    emb = read_embeddings(path)
    manifest_sha = sha256_file(manifest_path)
    built_from = str(emb.attrs.get("manifest_sha256") or "")
    if built_from and built_from != manifest_sha:
        raise DataError(
            f"{path}: built from a different version of manifest {manifest_path} (sha256 {built_from[:12]}... != "
            f"{manifest_sha[:12]}...); rerun `dermctl embed` for this model"
        )
    for split in ("train", "test"):
        if not (emb.mask(split) & (emb.labels >= 0)).any():
            raise DataError(
                f"{path}: no labelled {split} image (a task needs labelled train and test splits)"
            )
    if (emb.labels[emb.mask("test")] < 0).any() or (emb.labels[emb.mask("train")] < 0).any():
        raise DataError(f"{path}: unlabelled images (label -1) in the train or test split of a task")
    return TaskData(task, model_id, emb, manifest_path, manifest_sha, sha256_file(path))
