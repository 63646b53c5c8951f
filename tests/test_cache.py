"""Disk cache of decoded images: hits, misses on changed content, and failures that fall back to decoding."""

import logging
import shutil

import pytest
import torch
from PIL import Image

import pipeline.data
from pipeline import cache
from pipeline.data import load_images
from pipeline.spec import DataSpec

from test_data import _write_cifar, _write_folder


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(cache.ENV_CACHE_DIR, str(root))
    return root


def _entries(root):
    folder = root / "images"
    return sorted(folder.glob("*.pt")) if folder.exists() else []


def _forbid_decoding(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these images")

    monkeypatch.setattr(pipeline.data, "_decode_imagefolder", fail)
    monkeypatch.setattr(pipeline.data, "_load_cifar10", fail)


def test_imagefolder_second_load_reads_cache(tmp_path, cache_root, monkeypatch):
    _write_folder(tmp_path / "images")
    first = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    assert len(_entries(cache_root)) == 1
    _forbid_decoding(monkeypatch)
    second = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    assert torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)
    assert first.sources == second.sources
    assert first.fingerprint == second.fingerprint


def test_moved_folder_hits_with_new_paths(tmp_path, cache_root, monkeypatch):
    _write_folder(tmp_path / "old")
    load_images(DataSpec(source="imagefolder", path=tmp_path / "old"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    _forbid_decoding(monkeypatch)
    moved = load_images(DataSpec(source="imagefolder", path=tmp_path / "new"))
    assert moved.sources[0] == str(tmp_path / "new" / "class0" / "0.png")


def test_changed_image_misses(tmp_path, cache_root):
    _write_folder(tmp_path / "images")
    load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    edited = tmp_path / "images" / "class1" / "3.png"
    image = Image.open(edited).convert("RGB")
    image.putpixel((4, 4), (1, 2, 3))
    image.save(edited)
    data = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    assert len(_entries(cache_root)) == 2
    index = data.sources.index(str(edited))
    assert data.images[index, :, 4, 4].tolist() == [1, 2, 3]


def test_decoding_options_are_part_of_key(tmp_path, cache_root):
    _write_folder(tmp_path / "images")
    load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    resized = load_images(DataSpec(source="imagefolder", path=tmp_path / "images", image_size=10))
    assert resized.images.shape[-1] == 10
    assert len(_entries(cache_root)) == 2


def test_cache_off_writes_nothing(tmp_path, cache_root):
    _write_folder(tmp_path / "images")
    load_images(DataSpec(source="imagefolder", path=tmp_path / "images", cache=False))
    assert _entries(cache_root) == []


def test_cifar10_second_load_reads_cache(tmp_path, cache_root, monkeypatch):
    _write_cifar(tmp_path)
    first = load_images(DataSpec(source="cifar10", path=tmp_path))
    _forbid_decoding(monkeypatch)
    second = load_images(DataSpec(source="cifar10", path=tmp_path))
    assert torch.equal(first.images, second.images)
    assert first.sources == second.sources


def test_corrupt_entry_is_decoded_again(tmp_path, cache_root, caplog):
    _write_folder(tmp_path / "images")
    first = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    (entry,) = _entries(cache_root)
    entry.write_bytes(b"truncated")
    with caplog.at_level(logging.WARNING):
        again = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    assert "unreadable image cache entry" in caplog.text
    assert torch.equal(first.images, again.images)


def test_unwritable_cache_still_loads(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(cache.ENV_CACHE_DIR, str(blocker))
    _write_folder(tmp_path / "images")
    with caplog.at_level(logging.WARNING):
        data = load_images(DataSpec(source="imagefolder", path=tmp_path / "images"))
    assert len(data.labels) == 12
    assert "could not write the image cache entry" in caplog.text


def test_skipped_files_survive_cache(tmp_path, cache_root, caplog):
    _write_folder(tmp_path / "images")
    (tmp_path / "images" / "class0" / "notes.txt").write_text("not an image")
    spec = DataSpec(source="imagefolder", path=tmp_path / "images", bad_files="skip")
    first = load_images(spec)
    with caplog.at_level(logging.WARNING):
        second = load_images(spec)
    assert first.skipped == second.skipped
    assert second.skipped[0].startswith(str(tmp_path / "images" / "class0" / "notes.txt"))
    assert "skipped 1 bad file" in caplog.text


def test_key_covers_paths_and_bytes(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"12")
    base = cache.content_key([root / "a" / "x.png"], root, {})
    (root / "a" / "x.png").write_bytes(b"13")
    assert cache.content_key([root / "a" / "x.png"], root, {}) != base
    (root / "a" / "x.png").rename(root / "a" / "y.png")
    (root / "a" / "y.png").write_bytes(b"12")
    assert cache.content_key([root / "a" / "y.png"], root, {}) != base
    assert cache.content_key([root / "a" / "y.png"], root, {"image_size": 8}) != \
        cache.content_key([root / "a" / "y.png"], root, {"image_size": 9})
    assert len(base) == 40  # 20-byte BLAKE2b digest in hex
