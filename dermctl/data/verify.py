"""Images checked against their manifest's sha256 before `embed`, `finetune` and `pretrain` use them.

An image replaced after ingest (even by another valid image) would otherwise give results for pictures
the manifest does not describe. Checking must stay cheap, so it shares ingest's hash cache
(`manifests/.hashcache.json`: absolute path -> size, mtime_ns, sha256): a file whose size and mtime are
those of its cache entry is not read again; any other file is hashed, compared and its entry updated.
Right after `ingest` every entry is fresh, so the check costs one stat() per image.

Rows without a sha256 (hand-made manifests) get the current one filled in, from the same cache, so that
what was used is recorded (embeddings key their reuse on these hashes).
"""

from __future__ import annotations

import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from dermctl.data.manifest import Manifest, check_images
from dermctl.errors import DataError, DermctlError
from dermctl.provenance import sha256_bytes, sha256_file
from dermctl.workspace import atomic_write_json

# Ingest's hash cache (dermctl.data.ingest.HashCache; not imported: ingest pulls in scipy, ~0.5 s).
CACHE_NAME = ".hashcache.json"
CACHE_VERSION = 1
_HASH_THREADS = 8  # hashlib releases the GIL: a few threads keep a disk busy


def verify_images(manifest: Manifest, cache_folder: str | os.PathLike[str]) -> list[Path]:
    """Resolved paths of every row, after checking each image exists and has the manifest's sha256.

    Raises DataError naming the first missing or changed file (with "re-run ingest"). Fills in empty
    sha256 values in place. `cache_folder` holds the hash cache (a workspace's `manifests/`); entries of
    files hashed here are added to it."""
    paths = [manifest.resolve(r) for r in manifest.rows]
    cache_path = Path(cache_folder) / CACHE_NAME
    entries = _load_cache(cache_path)
    keys: list[Path] = []
    stamps: list[tuple[int, int]] = []
    real_dirs: dict[Path, str] = {}  # one realpath() per folder, not per image: the check stays ~one stat
    for p in paths:
        try:
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                key, st = p.resolve(), os.stat(p)
            else:
                folder = real_dirs.get(p.parent)
                if folder is None:
                    folder = real_dirs[p.parent] = os.path.realpath(p.parent)
                key = Path(folder, p.name)
        except OSError:
            check_images(manifest)  # names the missing file(s)
            raise
        if not stat.S_ISREG(st.st_mode):
            check_images(manifest)
        keys.append(key)  # as ingest keys its cache: the absolute path, links resolved
        stamps.append((st.st_size, st.st_mtime_ns))
    current: dict[int, str] = {}
    todo: list[tuple[int, tuple[int, int]]] = []
    for i, key in enumerate(keys):
        entry = entries.get(str(key))
        if _fresh(entry, stamps[i]):
            current[i] = str(entry["sha256"])  # type: ignore[index]
        else:
            todo.append((i, stamps[i]))
    if todo:
        with ThreadPoolExecutor(max_workers=min(_HASH_THREADS, len(todo))) as pool:
            hashes = list(pool.map(lambda t: _hash(keys[t[0]], manifest), todo))
        for (i, stamp), digest in zip(todo, hashes, strict=True):
            current[i] = digest
            old = entries.get(str(keys[i]))
            # Same bytes under a new stamp (touched, copied back): ingest's other fields stay valid; an
            # entry with the sha256 only is re-examined by ingest (it needs phash, size and reason too).
            keep = old if isinstance(old, dict) and old.get("sha256") == digest else {}
            entries[str(keys[i])] = {**keep, "size": stamp[0], "mtime_ns": stamp[1], "sha256": digest}
        try:
            atomic_write_json(cache_path, {"version": CACHE_VERSION, "entries": entries})
        except DermctlError:  # read-only manifests folder, full disk: only the next check is slower
            pass
    for i, row in enumerate(manifest.rows):
        if not row.sha256:
            row.sha256 = current[i]
        elif row.sha256.lower() != current[i]:
            changed = sum(
                1 for j, r in enumerate(manifest.rows) if r.sha256 and r.sha256.lower() != current[j]
            )
            more = f" (and {changed - 1} more)" if changed > 1 else ""
            raise DataError(
                f"{keys[i]}: image changed since it was listed in {manifest.path} (sha256 {current[i][:12]}... "
                f"!= {row.sha256[:12]}...){more}; re-run ingest, or restore the original file"
            )
    return paths


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # missing or damaged: every image is hashed, as ingest does
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return {}
    entries = data.get("entries")
    return dict(entries) if isinstance(entries, dict) else {}


def _fresh(entry: Any, stamp: tuple[int, int]) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("size") == stamp[0]
        and entry.get("mtime_ns") == stamp[1]
        and isinstance(entry.get("sha256"), str)
        and len(entry["sha256"]) == 64
    )


def _hash(path: Path, manifest: Manifest) -> str:
    try:
        return sha256_file(path)
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read image listed in {manifest.path}: {exc.strerror or exc}"
        ) from exc


def images_key(manifest: Manifest) -> str:
    """One hash over the rows' image hashes, in order (after `verify_images`): what a derived file was
    computed from, beyond the manifest file's own hash (a hand-made manifest has no sha256 column)."""
    return sha256_bytes("\n".join(r.sha256.lower() for r in manifest.rows).encode("ascii"))
