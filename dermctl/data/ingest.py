"""The ingest engine: adapter records -> validated, de-duplicated, overlap-free, split manifest + report.

Every data set goes through the same steps (Groger et al. 2023 evaluate on clean, grouped splits; the ISIC
archive used for pretraining must not contain the downstream test images, even re-encoded or resized):

1. the adapter reads the published layout (`Adapter.read`) and says which variant it found;
2. every image is validated once (full decode, size after EXIF, sha256, pHash) in a thread pool, with a
   hash cache (`manifests/.hashcache.json`, keyed by absolute path + size + mtime_ns) so that re-runs on
   unchanged data decode nothing and give a byte-identical manifest;
3. bad files (empty, corrupt, truncated, too small) are excluded and listed (`--strict`: refused);
4. exact duplicates (same sha256) collapse to the first by sorted path; copies with different labels are
   a conflict and all are dropped;
5. `--exclude` manifests: images sharing a sha256 or published image_id with them, or within
   `near_dup_distance` pHash bits of one of theirs, are dropped;
6. near duplicates inside the set are kept but put into one group with their cluster's leader (leader
   clustering, no chains: see `_group_near_duplicates`), so a copy never straddles splits;
7. grouped, stratified, seeded splits (`dermctl.data.splits`); a labelled class that the split cannot
   place in every requested split (too few images or groups) is refused with one line, nothing written;
8. `manifests/<name>.csv` and `manifests/<name>.report.json` are written atomically; an existing manifest
   whose content would change is not replaced without `force`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dermctl.data.adapters.base import AdapterOptions, Record
from dermctl.data.adapters.registry import get_adapter
from dermctl.data.hashing import near_duplicate_pairs
from dermctl.data.hashing import phash as compute_phash
from dermctl.data.images import ImageCheck, decode_checked
from dermctl.data.manifest import COLUMNS, ROLES, Manifest, Row, find_task, read_manifest, to_csv_text
from dermctl.data.splits import assign_splits, split_shortfalls
from dermctl.errors import ConflictError, DataError, UsageError
from dermctl.provenance import provenance, sha256_bytes
from dermctl.workspace import Workspace, atomic_write_json, atomic_write_text

CACHE_NAME = ".hashcache.json"
CACHE_VERSION = 1
GRANULARITIES = ("three", "nine", "fine")
GENERIC_ADAPTERS = ("folder", "csv")
_RESULT_KEYS = ("sha256", "width", "height", "reason", "phash")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

Progress = Callable[[int, int], None]


@dataclass
class IngestOptions:
    """Options of `dermctl ingest` (see docs/ingest.md)."""

    name: str | None = None  # manifest name; default: the data set name (folder/csv: the root's name)
    output: Path | None = None  # manifest path; default manifests/<name>.csv
    label_column: str | None = None
    group_column: str | None = None
    granularity: str | None = None
    role: str | None = None  # task | corpus; default: the adapter's
    unlabelled: bool = False
    exclude: list[Path] = field(default_factory=list)
    strict: bool = False
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.15
    min_size: int = 32
    near_dup_distance: int = 4
    workers: int | None = None
    force: bool = False

    def validate(self) -> None:
        """Check option values up front, before any image is read."""
        if self.name is not None and not _NAME_RE.match(self.name):
            raise UsageError(f"--name: {self.name!r} is not a valid name (letters, digits, '.', '_', '-')")
        if self.granularity is not None and self.granularity not in GRANULARITIES:
            raise UsageError(f"--granularity: {self.granularity!r} is not one of {', '.join(GRANULARITIES)}")
        if self.role is not None and self.role not in ROLES:
            raise UsageError(f"--role: {self.role!r} is not one of {', '.join(ROLES)}")
        for option, value in (("--test-fraction", self.test_fraction), ("--val-fraction", self.val_fraction)):
            if not 0.0 <= value < 1.0:
                raise UsageError(f"{option}: {value} is not in [0, 1)")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise UsageError(
                f"--test-fraction/--val-fraction: {self.test_fraction} + {self.val_fraction} leaves no training data"
            )
        if self.min_size < 1:
            raise UsageError(f"--min-size: {self.min_size} must be at least 1 pixel")
        if not 0 <= self.near_dup_distance <= 64:
            raise UsageError(f"--near-dup-distance: {self.near_dup_distance} is not in 0..64 bits")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers: {self.workers} must be at least 1")

    def to_config(self) -> dict[str, Any]:
        d = asdict(self)
        d["output"] = str(self.output) if self.output else None
        d["exclude"] = [str(p) for p in self.exclude]
        return d


@dataclass
class IngestSummary:
    """What `run_ingest` did; `to_dict()` is the `--json` output of `dermctl ingest`."""

    name: str
    dataset: str
    manifest_path: Path
    report_path: Path
    status: str  # written | unchanged | overwritten
    variant: str
    role: str
    rows: int
    counts: dict[str, dict[str, int]]
    excluded: dict[str, int]
    near_duplicate_pairs: int  # all pairs within --near-dup-distance
    near_duplicate_pairs_apart: int = 0  # of those, pairs left in different groups (no common leader)
    report: dict[str, Any] = field(repr=False, default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dataset": self.dataset,
            "manifest": str(self.manifest_path),
            "report": str(self.report_path),
            "status": self.status,
            "variant": self.variant,
            "role": self.role,
            "rows": self.rows,
            "counts": self.counts,
            "excluded": self.excluded,
            "near_duplicate_pairs": self.near_duplicate_pairs,
            "near_duplicate_pairs_apart": self.near_duplicate_pairs_apart,
        }


@dataclass
class _Item:
    """One validated candidate image on its way to a manifest row."""

    record: Record
    path: Path
    check: ImageCheck
    phash: str
    group: str = ""


# ---------------------------------------------------------------------------------------------------------
# Validation with a hash cache


def examine(path: Path) -> dict[str, Any]:
    """Decode one file once: sha256, upright width/height and pHash, or the reason it is unusable."""
    check, image = decode_checked(path)
    return {
        "sha256": check.sha256,
        "width": check.width,
        "height": check.height,
        "reason": check.reason,
        "phash": compute_phash(image) if image is not None else "",
    }


class HashCache:
    """`manifests/.hashcache.json`: {absolute path: {size, mtime_ns, sha256, phash, width, height, reason}}.

    An entry is reused only while the file's size and mtime_ns are unchanged. The reason stored is the
    decode failure only; "too small" is decided per run from the stored size and --min-size.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        self.dirty = False
        if path.is_file():
            try:
                import json

                data = json.loads(path.read_text(encoding="utf-8"))
                if isinstance(data, dict) and data.get("version") == CACHE_VERSION:
                    self.entries = dict(data.get("entries", {}))
            except (OSError, ValueError):
                self.entries = {}  # a damaged cache is only a slower run, never an error

    def lookup(self, path: Path) -> tuple[dict[str, Any] | None, tuple[int, int] | None]:
        try:
            st = os.stat(path)
        except OSError:
            return None, None
        stamp = (st.st_size, st.st_mtime_ns)
        entry = self.entries.get(str(path))
        if (
            isinstance(entry, dict)
            and entry.get("size") == stamp[0]
            and entry.get("mtime_ns") == stamp[1]
            and all(k in entry for k in _RESULT_KEYS)
        ):
            return entry, stamp
        return None, stamp

    def store(self, path: Path, stamp: tuple[int, int] | None, result: dict[str, Any]) -> None:
        if stamp is None:
            return
        self.entries[str(path)] = {"size": stamp[0], "mtime_ns": stamp[1], **result}
        self.dirty = True

    def save(self) -> None:
        if self.dirty:
            atomic_write_json(self.path, {"version": CACHE_VERSION, "entries": self.entries})
            self.dirty = False


def examine_all(
    paths: list[Path], cache: HashCache, workers: int, progress: Progress | None = None
) -> dict[Path, dict[str, Any]]:
    """Examine every path once (cache hits are not decoded), `workers` threads; progress(done, total)."""
    out: dict[Path, dict[str, Any]] = {}
    todo: list[tuple[Path, tuple[int, int] | None]] = []
    for p in paths:
        entry, stamp = cache.lookup(p)
        if entry is not None:
            out[p] = entry
        else:
            todo.append((p, stamp))
    total = len(paths)
    done = len(out)
    if progress:
        progress(done, total)

    def finish(p: Path, stamp: tuple[int, int] | None, result: dict[str, Any]) -> None:
        nonlocal done
        if stamp is None and not result["reason"]:
            result = {**result, "reason": "unreadable (file vanished while reading)"}
        out[p] = result
        if result["sha256"]:  # an unreadable file is not cached: it may be readable next time
            cache.store(p, stamp, result)
        done += 1
        if progress:
            progress(done, total)

    # Threads suffice: PIL decoding and hashlib release the GIL, and nothing has to be pickled.
    if workers <= 1 or len(todo) <= 1:
        for p, stamp in todo:
            finish(p, stamp, examine(p))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for (p, stamp), result in zip(todo, pool.map(lambda t: examine(t[0]), todo), strict=True):
                finish(p, stamp, result)
    return out


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


# ---------------------------------------------------------------------------------------------------------
# The engine


def run_ingest(
    dataset: str,
    root: Path,
    workspace: Workspace,
    options: IngestOptions,
    progress: Progress | None = None,
) -> IngestSummary:
    """Read `dataset` from `root` and write `<name>.csv` and `<name>.report.json` (see the module doc)."""
    options.validate()
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"--root: {root} does not exist")
    root = root.resolve()
    adapter = get_adapter(dataset)
    name = options.name or _default_name(dataset, root)
    manifest_path = (
        Path(options.output).expanduser() if options.output else workspace.manifests / f"{name}.csv"
    )
    manifest_path = manifest_path.resolve() if manifest_path.is_absolute() else (Path.cwd() / manifest_path)
    if manifest_path.exists() and manifest_path.is_dir():
        raise UsageError(f"--output: {manifest_path} is a folder, expected a manifest file path")
    report_path = manifest_path.with_name(f"{manifest_path.stem}.report.json")
    excluded_manifests = _read_excludes(options.exclude, workspace, manifest_path)

    result = adapter.read(
        root,
        AdapterOptions(
            label_column=options.label_column,
            granularity=options.granularity,
            role=options.role,
            group_column=options.group_column,
            unlabelled=options.unlabelled,
        ),
    )
    role = options.role or result.role or adapter.role
    cache = HashCache(workspace.manifests / CACHE_NAME)
    workers = options.workers or default_workers()

    records = _unique_records(result.records)
    paths = [Path(r.path).expanduser().resolve() for r in records]
    exclude_paths = [m.resolve(r) for m in excluded_manifests for r in m.rows if not (r.sha256 and r.phash)]
    exclude_paths = [p for p in dict.fromkeys(exclude_paths) if p.is_file()]
    examined = examine_all(paths + exclude_paths, cache, workers, progress)

    excluded: list[dict[str, Any]] = []
    items: list[_Item] = []
    for rec, p in zip(records, paths, strict=True):
        res = examined[p]
        check = ImageCheck(
            sha256=res["sha256"], width=res["width"], height=res["height"], reason=res["reason"]
        )
        reason = check.reason or check.too_small(options.min_size)
        if reason:
            excluded.append({"path": str(p), "image_id": rec.image_id, "reason": reason})
            continue
        items.append(_Item(record=rec, path=p, check=check, phash=res["phash"], group=rec.group))
    if options.strict and (excluded or result.missing_images):
        first = (
            excluded[0] if excluded else {"path": result.missing_images[0], "reason": "listed but missing"}
        )
        total = len(excluded) + len(result.missing_images)
        raise DataError(f"--strict: {first['path']}: {first['reason']} ({total} bad or missing files in all)")

    if role == "task":
        unlabelled = [it for it in items if not it.record.label]
        for it in unlabelled:
            excluded.append({"path": str(it.path), "image_id": it.record.image_id, "reason": "no label"})
        items = [it for it in items if it.record.label]

    items.sort(key=lambda it: str(it.path))
    items, duplicates, conflicts = _collapse_duplicates(items)
    items, overlap = _drop_overlap(items, excluded_manifests, examined, options.near_dup_distance)
    key_groups = [it.group for it in items]
    regrouped, near_pairs = _group_near_duplicates(items, options.near_dup_distance)

    if not items:
        raise DataError(
            f"--root: {root} gave no usable images ({len(result.records)} listed, {len(excluded)} bad, "
            f"{sum(len(d['dropped']) for d in duplicates)} duplicates, {len(overlap)} overlapping --exclude)"
        )
    with_test = role == "task"
    splits = assign_splits(
        [it.record.label for it in items],
        [it.group for it in items],
        [str(it.path) for it in items],
        [it.record.split for it in items],
        test_fraction=options.test_fraction,
        val_fraction=options.val_fraction,
        seed=options.seed,
        with_test=with_test,
    )
    try:
        _check_every_class_is_split(items, splits, key_groups, options, with_test)
    except UsageError:
        cache.save()  # the hashes stay valid: a re-run with other options decodes nothing again
        raise
    manifest = _build_manifest(name, dataset, role, items, splits)
    text = to_csv_text(manifest)

    status = "written"
    if manifest_path.is_file():
        try:
            old = manifest_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            old = None
        if old == text:
            status = "unchanged"
        elif not options.force:
            cache.save()
            raise ConflictError(
                f"--output: {manifest_path} exists with different content; refusing to overwrite it "
                f"(pass --force to replace it)"
            )
        else:
            status = "overwritten"

    counts = manifest.counts()
    excluded_counts = dict(
        sorted(
            Counter(
                {
                    "bad_files": sum(1 for e in excluded if e["reason"] != "no label"),
                    "no_label": sum(1 for e in excluded if e["reason"] == "no label"),
                    "duplicates": sum(len(d["dropped"]) for d in duplicates),
                    "label_conflicts": sum(len(c["paths"]) for c in conflicts),
                    "overlap": len(overlap),
                    "missing_images": len(result.missing_images),
                }
            ).items()
        )
    )
    inputs = {"images": sha256_bytes("\n".join(it.check.sha256 for it in items).encode())}
    for m in excluded_manifests:
        inputs[f"exclude:{m.path}"] = m.content_hash()
    report = {
        "name": name,
        "dataset": dataset,
        "root": str(root),
        "variant": result.variant,
        "role": role,
        "manifest": str(manifest_path),
        "manifest_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "status": status,
        "rows": len(manifest.rows),
        "counts": counts,
        "excluded_counts": excluded_counts,
        "excluded": excluded,
        "missing_images": list(result.missing_images),
        "unlisted_images": list(result.unlisted_images),
        "duplicates": duplicates,
        "label_conflicts": conflicts,
        "overlap": overlap,
        "near_duplicates": [
            {
                "a": str(items[i].path),
                "b": str(items[j].path),
                "distance": d,
                "same_group": bool(items[i].group) and items[i].group == items[j].group,
            }
            for i, j, d in near_pairs
        ],
        "regrouped": regrouped,
        "notes": list(result.notes),
        "options": options.to_config(),
        "provenance": provenance(options.to_config() | {"dataset": dataset, "root": str(root)}, inputs),
    }
    if status != "unchanged":
        atomic_write_text(manifest_path, text)
    atomic_write_json(report_path, report)
    cache.save()
    return IngestSummary(
        name=name,
        dataset=dataset,
        manifest_path=manifest_path,
        report_path=report_path,
        status=status,
        variant=result.variant,
        role=role,
        rows=len(manifest.rows),
        counts=counts,
        excluded=excluded_counts,
        near_duplicate_pairs=len(near_pairs),
        near_duplicate_pairs_apart=sum(1 for p in report["near_duplicates"] if not p["same_group"]),
        report=report,
    )


def _default_name(dataset: str, root: Path) -> str:
    if dataset not in GENERIC_ADAPTERS:
        return dataset
    folder = root.parent if root.is_file() else root
    # A generic folder is named after itself; "images" says little, so take its parent's name then.
    base = folder.parent.name if folder.name.lower() in ("images", "imgs", "data") else folder.name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or dataset
    return cleaned


def _read_excludes(paths: list[Path], workspace: Workspace, output: Path) -> list[Manifest]:
    out = []
    for p in paths:
        try:
            path = find_task(workspace.manifests, str(p))
        except DataError as exc:
            raise DataError(f"--exclude: {exc.message}") from exc
        if path.resolve() == output:
            raise UsageError(f"--exclude: {path} is the manifest being written")
        try:
            out.append(read_manifest(path))
        except DataError as exc:
            raise DataError(f"--exclude: {exc.message}") from exc
    return out


def _unique_records(records: list[Record]) -> list[Record]:
    """One record per file (an adapter listing a file twice gives the first listing)."""
    seen: set[Path] = set()
    out = []
    for r in records:
        p = Path(r.path).expanduser().resolve()
        if p not in seen:
            seen.add(p)
            out.append(r)
    return out


def _collapse_duplicates(
    items: list[_Item],
) -> tuple[list[_Item], list[dict[str, Any]], list[dict[str, Any]]]:
    """Same bytes -> one row (the first by sorted path); copies with different labels -> all dropped."""
    by_hash: dict[str, list[_Item]] = defaultdict(list)
    for it in items:
        by_hash[it.check.sha256].append(it)
    keep: list[_Item] = []
    duplicates: list[dict[str, Any]] = []
    conflicts: list[dict[str, Any]] = []
    for it in items:  # items are sorted by path, so the first copy met is the one kept
        copies = by_hash[it.check.sha256]
        if copies[0] is not it:
            continue
        if len(copies) == 1:
            keep.append(it)
            continue
        labels = sorted({c.record.label for c in copies})
        if len(labels) > 1:
            conflicts.append(
                {"sha256": it.check.sha256, "paths": [str(c.path) for c in copies], "labels": labels}
            )
            continue
        if any(c.record.split == "test" for c in copies):
            it.record.split = "test"  # a copy in the publisher's test set keeps the image in test
        groups = sorted({c.group for c in copies if c.group})
        if not it.group and groups:
            it.group = groups[0]
        duplicates.append({"kept": str(it.path), "dropped": [str(c.path) for c in copies[1:]]})
        keep.append(it)
    return keep, duplicates, conflicts


def _drop_overlap(
    items: list[_Item], manifests: list[Manifest], examined: dict[Path, dict[str, Any]], max_distance: int
) -> tuple[list[_Item], list[dict[str, Any]]]:
    """Drop images that appear in an --exclude manifest: same sha256, same image_id, or pHash near it."""
    if not manifests:
        return items, []
    refs: list[dict[str, Any]] = []  # one per excluded-manifest row
    for m in manifests:
        for line, r in enumerate(m.rows, start=2):
            sha, ph = r.sha256, r.phash
            if not (sha and ph):
                res = examined.get(m.resolve(r))
                if res and res["sha256"]:
                    sha, ph = sha or res["sha256"], ph or res["phash"]
            refs.append(
                {
                    "manifest": str(m.path),
                    "line": line,
                    "path": r.path,
                    "image_id": r.image_id,
                    "sha256": sha,
                    "phash": ph,
                }
            )
    by_sha = {ref["sha256"]: ref for ref in reversed(refs) if ref["sha256"]}
    by_id = {ref["image_id"]: ref for ref in reversed(refs) if ref["image_id"]}
    near: dict[int, tuple[int, int]] = {}
    for i, j, d in near_duplicate_pairs(
        [it.phash for it in items], [ref["phash"] for ref in refs], max_distance
    ):
        if i not in near or d < near[i][1]:
            near[i] = (j, d)
    keep: list[_Item] = []
    overlap: list[dict[str, Any]] = []
    for i, it in enumerate(items):
        match, by, dist = None, "", None
        if it.check.sha256 in by_sha:
            match, by = by_sha[it.check.sha256], "sha256"
        elif it.record.image_id and it.record.image_id in by_id:
            match, by = by_id[it.record.image_id], "image_id"
        elif i in near:
            match, by, dist = refs[near[i][0]], "near-duplicate", near[i][1]
        if match is None:
            keep.append(it)
            continue
        entry = {
            "path": str(it.path),
            "image_id": it.record.image_id,
            "by": by,
            "matched_manifest": match["manifest"],
            "matched_line": match["line"],
            "matched_path": match["path"],
            "matched_image_id": match["image_id"],
        }
        if dist is not None:
            entry["distance"] = dist
        overlap.append(entry)
    return keep, overlap


def _group_near_duplicates(
    items: list[_Item], max_distance: int
) -> tuple[list[dict[str, str]], list[tuple[int, int, int]]]:
    """Put near duplicates into one group without chaining; rename the groups that merged.

    Returns (regrouped rows, all near-duplicate pairs). "Near duplicate" (pHash within `max_distance`)
    is not transitive: photos of one class that each differ a little from the next form a chain whose ends
    are unrelated, and linking every pair (connected components) turned such a class into one group.
    So the links are drawn by leader clustering: images are visited by decreasing number of near
    duplicates (ties: smaller sha256, so neither file names nor listing order matter); an image not yet
    clustered leads a new cluster and takes every not-yet-clustered image within `max_distance` of it.
    Every cluster member is thus within the threshold of its leader, and two clusters are never joined by
    a pHash link. Rows sharing the data set's own group (lesion, patient, case) stay together as before,
    and a cluster that touches such a group joins it: a re-encoded copy must follow its original.
    """
    pairs = near_duplicate_pairs([it.phash for it in items], None, max_distance)
    parent = list(range(len(items)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_of_group: dict[str, int] = {}
    for i, it in enumerate(items):
        if it.group:
            union(first_of_group.setdefault(it.group, i), i)
    for member, leader in enumerate(_near_duplicate_leaders(items, pairs)):
        union(member, leader)
    components: dict[int, list[int]] = defaultdict(list)
    for i in range(len(items)):
        components[find(i)].append(i)
    regrouped: list[dict[str, str]] = []
    for members in components.values():
        groups = sorted({items[i].group for i in members if items[i].group})
        ungrouped = sum(1 for i in members if not items[i].group)
        if (len(groups) == 1 and ungrouped == 0) or len(members) == 1:
            continue
        new = groups[0] if groups else f"near-dup-{min(items[i].check.sha256 for i in members)[:12]}"
        for i in members:
            if items[i].group != new:
                regrouped.append({"path": str(items[i].path), "from": items[i].group, "to": new})
                items[i].group = new
    return regrouped, pairs


def _near_duplicate_leaders(items: list[_Item], pairs: list[tuple[int, int, int]]) -> list[int]:
    """Leader clustering over the near-duplicate pairs: the index of each image's cluster leader."""
    neighbours: list[list[int]] = [[] for _ in items]
    for i, j, _d in pairs:
        neighbours[i].append(j)
        neighbours[j].append(i)
    # Most-connected first, so an original with several re-encoded copies leads them all.
    order = sorted(range(len(items)), key=lambda i: (-len(neighbours[i]), items[i].check.sha256))
    leader = [-1] * len(items)
    for i in order:
        if leader[i] >= 0:
            continue
        leader[i] = i
        for j in neighbours[i]:
            if leader[j] < 0:
                leader[j] = i
    return leader


def _check_every_class_is_split(
    items: list[_Item], splits: list[str], key_groups: list[str], options: IngestOptions, with_test: bool
) -> None:
    """Refuse a split that leaves a class out of a split it was asked for, in one line naming the fix.

    key_groups: each item's group before near-duplicate merging (the data set's own key, or ""), to
    tell whether --near-dup-distance cost the class its groups or the class itself is too small.
    """
    labels = [it.record.label for it in items]
    keys = [str(it.path) for it in items]
    fixed = [it.record.split for it in items]
    shortfalls = split_shortfalls(
        labels,
        [it.group for it in items],
        keys,
        splits,
        fixed,
        test_fraction=options.test_fraction,
        val_fraction=options.val_fraction,
        with_test=with_test,
    )
    if not shortfalls:
        return
    first = shortfalls[0]
    has_fixed_test = any(f == "test" for f in fixed)
    rows = [
        i
        for i, it in enumerate(items)
        if it.record.label == first.label and not (has_fixed_test and splits[i] == "test")
    ]
    groups_by_key = len({key_groups[i] or f"r:{keys[i]}" for i in rows})
    needed = len(first.requested)
    where = "/".join(first.requested)
    plural = "s" if first.groups != 1 else ""
    if first.images == 1:
        size = f"it has 1 image and {where} need at least {needed}"
    elif first.groups < needed:
        size = f"its {first.images} images form {first.groups} group{plural} and {where} need {needed} groups"
    else:  # enough groups, but they vote for other classes (mixed labels go with their majority)
        size = f"its {first.images} images lie in {first.groups} groups whose majority is another class"
    if groups_by_key > first.groups:
        cause = (
            f" (near duplicates within --near-dup-distance {options.near_dup_distance} merged "
            f"{groups_by_key} groups into {first.groups}; a group never straddles splits)"
        )
        # Only offered when it is enough: with the data set's groups alone the class could be split.
        fix = (
            "lower --near-dup-distance (0: identical hashes only) if these are distinct photos, or "
            if groups_by_key >= needed
            else ""
        )
    else:
        shared = sorted({key_groups[i] for i in rows})
        one_key = first.images > 1 and len(shared) == 1 and shared[0]
        cause = (
            f" (all share the data set's group {shared[0]!r}; a group never straddles splits)"
            if one_key
            else " (a group never straddles splits)"
            if first.images > 1
            else ""
        )
        fix = ""
    # Fewer splits also work: as many as the class has groups (the whole data set loses them, though).
    optional = [s for s in first.requested if s != "train"]
    if first.groups >= needed:
        zero = " ".join(f"--{s}-fraction 0" for s in first.missing if s != "train")
    elif needed - first.groups >= len(optional):
        zero = " ".join(f"--{s}-fraction 0" for s in optional)
    else:
        zero = " or ".join(f"--{s}-fraction 0" for s in optional)
    fix += "drop the class or merge it into another" + (f", or pass {zero}" if zero else "")
    others = ""
    if len(shortfalls) > 1:
        named = ", ".join(
            f"{s.label!r} ({_count(s.images, 'image')}, {_count(s.groups, 'group')})" for s in shortfalls[1:4]
        )
        more = f" and {len(shortfalls) - 4} more" if len(shortfalls) > 4 else ""
        others = f"; also too small: {named}{more}"
    missing = " and ".join(first.missing)
    raise UsageError(
        f"class {first.label!r} would have no image in {missing}: {size}{cause}; fix: {fix}{others}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _build_manifest(name: str, dataset: str, role: str, items: list[_Item], splits: list[str]) -> Manifest:
    extra_columns: list[str] = []
    for it in items:
        for k in it.record.extras:
            if k not in COLUMNS and k not in extra_columns:
                extra_columns.append(k)
    rows = [
        Row(
            path=str(it.path),
            label=it.record.label,
            split=split,
            group=it.group,
            source=dataset,
            role=role,
            sha256=it.check.sha256,
            width=it.check.width,
            height=it.check.height,
            image_id=it.record.image_id,
            phash=it.phash,
            extras={k: str(it.record.extras.get(k, "")) for k in extra_columns},
        )
        for it, split in zip(items, splits, strict=True)
    ]
    return Manifest(name=name, rows=rows, extra_columns=extra_columns)
