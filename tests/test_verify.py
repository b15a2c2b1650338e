"""Images checked against their manifest's sha256 (dermctl.data.verify), cheap through ingest's hash cache."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers_methods import make_images

from dermctl.data import ingest
from dermctl.data import verify as verify_mod
from dermctl.data.manifest import Manifest, Row, fill_hashes, write_manifest
from dermctl.data.verify import images_key, verify_images
from dermctl.errors import DataError


def _manifest(tmp_path: Path, n: int = 4) -> Manifest:
    images = make_images(tmp_path / "img", n)
    m = Manifest("c", [Row(path=str(p), role="corpus") for p in images])
    fill_hashes(m)  # as ingest writes it
    write_manifest(m, tmp_path / "c.csv")
    return m


def test_shares_ingests_hash_cache_format() -> None:
    assert verify_mod.CACHE_NAME == ingest.CACHE_NAME and verify_mod.CACHE_VERSION == ingest.CACHE_VERSION


def test_unchanged_images_are_not_rehashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _manifest(tmp_path)
    cache_dir = tmp_path / "manifests"
    assert len(verify_images(m, cache_dir)) == 4  # first check hashes and fills the cache
    entries = json.loads((cache_dir / ".hashcache.json").read_text())["entries"]
    assert len(entries) == 4 and all(len(e["sha256"]) == 64 for e in entries.values())

    def no_hashing(_p: object) -> str:
        raise AssertionError("an unchanged image was hashed again")

    monkeypatch.setattr(verify_mod, "sha256_file", no_hashing)
    verify_images(m, cache_dir)  # only stat() calls now


def test_entries_written_by_ingest_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = _manifest(tmp_path)
    cache = ingest.HashCache(tmp_path / "manifests" / ingest.CACHE_NAME)
    ingest.examine_all([Path(m.resolve(r)).resolve() for r in m.rows], cache, workers=1)
    cache.save()
    monkeypatch.setattr(verify_mod, "sha256_file", lambda _p: "x" * 64)  # would refuse every image
    verify_images(m, tmp_path / "manifests")


def test_replaced_image_is_named_with_reingest_hint(tmp_path: Path) -> None:
    m = _manifest(tmp_path)
    cache_dir = tmp_path / "manifests"
    verify_images(m, cache_dir)  # cached, so only a changed stamp can reveal the swap
    victim = m.resolve(m.rows[1])
    shutil.copyfile(m.resolve(m.rows[2]), victim)  # another valid image, same size
    with pytest.raises(DataError) as err:
        verify_images(m, cache_dir)
    assert str(victim) in err.value.message and "re-run ingest" in err.value.message
    assert "\n" not in err.value.message


def test_hand_made_rows_get_their_hash_and_key_follows_content(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", 3)
    m = Manifest("c", [Row(path=str(p)) for p in images], path=tmp_path / "c.csv")
    verify_images(m, tmp_path / "manifests")
    assert all(len(r.sha256) == 64 for r in m.rows)
    key = images_key(m)
    original = images[0].read_bytes()
    shutil.copyfile(images[1], images[0])
    m2 = Manifest("c", [Row(path=str(p)) for p in images], path=tmp_path / "c.csv")
    verify_images(m2, tmp_path / "manifests")
    assert images_key(m2) != key
    images[0].write_bytes(original)
    os.utime(images[0], ns=(1, 1))  # a new stamp: re-hashed, back to the original key
    m3 = Manifest("c", [Row(path=str(p)) for p in images], path=tmp_path / "c.csv")
    verify_images(m3, tmp_path / "manifests")
    assert images_key(m3) == key
