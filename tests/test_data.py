"""Data stage: loading, the stratified split, its manifest and normalization."""

import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import (
    SPLITS,
    DataError,
    apply_shift,
    find_duplicates,
    load_images,
    load_study_data,
    normalization,
    prepare,
    split_dataset,
    split_from_manifest,
)
from pipeline.spec import DataSpec, Fractions, ShiftSpec


@pytest.fixture(scope="module")
def digits():
    return load_images(DataSpec(source="digits"))


def test_digits_loads_real_images(digits):
    assert digits.images.shape == (1797, 1, 8, 8)
    assert digits.images.dtype == torch.uint8
    assert int(digits.images.max()) == 255
    assert np.bincount(digits.labels.numpy()).tolist()[:3] == [178, 182, 177]
    assert digits.class_names == [str(i) for i in range(10)]


def test_split_disjoint_and_complete(digits):
    split = split_dataset(digits.labels, Fractions(), seed=0)
    parts = [set(split.part(name).tolist()) for name in SPLITS]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not parts[i] & parts[j]
    assert set().union(*parts) == set(range(1797))


def test_split_sizes_follow_fractions(digits):
    fractions = Fractions(train=0.6, train_dev=0.1, dev=0.15, test=0.15)
    split = split_dataset(digits.labels, fractions, seed=0)
    for name in SPLITS:
        expected = getattr(fractions, name) * 1797
        assert abs(len(split.part(name)) - expected) <= 10, name


def test_split_is_stratified(digits):
    labels = digits.labels.numpy()
    split = split_dataset(labels, Fractions(), seed=3)
    overall = np.bincount(labels, minlength=10) / len(labels)
    for name in SPLITS:
        share = np.bincount(labels[split.part(name)], minlength=10) / len(split.part(name))
        # Largest-remainder rounding keeps each class within one image per part.
        assert np.abs(share - overall).max() < 0.01, name


def test_split_deterministic_per_seed(digits):
    first = split_dataset(digits.labels, Fractions(), seed=7, fingerprint=digits.fingerprint)
    again = split_dataset(digits.labels, Fractions(), seed=7, fingerprint=digits.fingerprint)
    other = split_dataset(digits.labels, Fractions(), seed=8, fingerprint=digits.fingerprint)
    assert first.hash == again.hash
    assert np.array_equal(first.dev, again.dev)
    assert first.hash != other.hash
    assert not np.array_equal(first.dev, other.dev)


def test_manifest_round_trip_and_tamper(digits):
    split = split_dataset(digits.labels, Fractions(), seed=0, fingerprint=digits.fingerprint)
    manifest = split.manifest()
    assert manifest["sizes"]["train"] == len(split.train)
    restored = split_from_manifest(manifest)
    assert np.array_equal(restored.test, split.test)
    assert restored.hash == split.hash

    manifest["parts"]["dev"].append(int(split.train[0]))
    with pytest.raises(DataError, match="hash"):
        split_from_manifest(manifest)


def test_manifest_overlap_detected(digits):
    split = split_dataset(digits.labels, Fractions(), seed=0)
    manifest = split.manifest()
    manifest["parts"]["dev"][0] = manifest["parts"]["train"][0]
    body = {k: v for k, v in manifest.items() if k != "hash"}
    from pipeline.data import _hash_json

    manifest["hash"] = _hash_json(body)
    with pytest.raises(DataError, match="is in both"):
        split_from_manifest(manifest)


def test_normalization_uses_train_only():
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    images[2:] = 255  # the non-train images are white; the train images black
    stats = normalization(images, np.array([0, 1]))
    assert stats.mean == (0.0,)
    stats_all = normalization(images, np.array([0, 1, 2, 3]))
    assert stats_all.mean == pytest.approx((0.5,))


def test_prepare_leaves_out_test(digits):
    split = split_dataset(digits.labels, Fractions(), seed=0)
    prepared = prepare(digits, split)
    assert set(prepared.x) == {"train", "train_dev", "dev"}
    train = prepared.x["train"]
    assert train.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert train.std(dim=(0, 2, 3)).sub(1).abs().max() < 1e-3


def _write_folder(root, sizes=(6, 6), mode="RGB"):
    for label, color in enumerate([(10, 10, 10), (240, 240, 240)]):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(sizes[label]):
            image = Image.new(mode, (5, 5), color if mode == "RGB" else color[0])
            image.putpixel((0, 0), (i * 20,) * 3 if mode == "RGB" else i * 20)  # no two images alike
            image.save(folder / f"{i}.png")


def test_imagefolder_loads_classes(tmp_path):
    _write_folder(tmp_path)
    data = load_images(DataSpec(source="imagefolder", path=tmp_path))
    assert data.images.shape == (12, 3, 5, 5)
    assert data.class_names == ["class0", "class1"]
    assert data.labels.tolist() == [0] * 6 + [1] * 6
    assert int(data.images[7, 0, 1, 1]) == 240
    assert data.sources[0].endswith("class0/0.png")


def test_imagefolder_resizes_once(tmp_path):
    _write_folder(tmp_path, mode="L")
    data = load_images(DataSpec(source="imagefolder", path=tmp_path, image_size=12))
    assert data.images.shape == (12, 1, 12, 12)


def test_imagefolder_reports_bad_files(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "class0" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        load_images(DataSpec(source="imagefolder", path=tmp_path))


def test_imagefolder_empty_class(tmp_path):
    _write_folder(tmp_path)
    (tmp_path / "class2").mkdir()
    with pytest.raises(DataError, match="no readable images under .*: class2"):
        load_images(DataSpec(source="imagefolder", path=tmp_path))


def _write_cifar(root, per_batch=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"labels": [i % 10 for i in range(per_batch)]}
        with (folder / name).open("wb") as handle:
            pickle.dump(batch, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, handle)
    return folder


def test_cifar10_python_layout(tmp_path):
    folder = _write_cifar(tmp_path)
    data = load_images(DataSpec(source="cifar10", path=tmp_path))
    assert data.images.shape == (24, 3, 32, 32)
    assert data.class_names[3] == "c3"
    with (folder / "data_batch_1").open("rb") as handle:
        first = pickle.load(handle, encoding="bytes")[b"data"][0]
    assert np.array_equal(data.images[0].numpy().reshape(-1), first)


def test_cifar10_rejects_code_in_pickle(tmp_path):
    folder = _write_cifar(tmp_path)
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": print}, handle)
    with pytest.raises(DataError, match="refusing to load"):
        load_images(DataSpec(source="cifar10", path=tmp_path))


def test_cifar10_missing_files(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(DataError, match="data_batch_1"):
        load_images(DataSpec(source="cifar10", path=tmp_path))


def test_fake_warns_about_random_labels(caplog):
    with caplog.at_level(logging.WARNING):
        data = load_images(DataSpec(source="fake", fake_size=30, image_size=8))
    assert data.images.shape == (30, 3, 8, 8)
    assert "random labels" in caplog.text


def test_shifted_dev_test_come_from_copy(digits):
    spec = DataSpec(dev_test={"shift": {"brightness": 0.5}})
    data, split, duplicates = load_study_data(spec)
    count = len(digits.labels)
    assert len(data.labels) == 2 * count
    assert split.train.max() < count
    assert split.train_dev.max() < count
    assert split.dev.min() >= count
    assert split.test.min() >= count
    index = int(split.dev[0])
    original = digits.images[index - count].float()
    assert torch.allclose(data.images[index].float(), (original * 0.5).round(), atol=0.51)
    assert data.labels[index] == digits.labels[index - count]
    assert duplicates.count == 0


def test_shift_rotates_and_lowers_contrast():
    image = torch.zeros(1, 1, 9, 9, dtype=torch.uint8)
    image[0, 0, 4, :] = 200  # a horizontal bar
    rotated = apply_shift(image, ShiftSpec(rotate=90))
    assert rotated[0, 0, :, 4].float().mean() > 150  # now vertical
    assert rotated[0, 0, 4, 0] < 50
    flat = apply_shift(image, ShiftSpec(contrast=0.5))
    assert float(flat.float().std()) == pytest.approx(float(image.float().std()) * 0.5, rel=0.05)


def test_other_source_for_dev_test(tmp_path):
    _write_folder(tmp_path / "train")
    _write_folder(tmp_path / "field")
    # Make the dev/test folder's images differ from the training ones.
    for path in (tmp_path / "field").rglob("*.png"):
        Image.open(path).convert("RGB").point(lambda value: value // 2).save(path)
    spec = DataSpec(source="imagefolder", path=tmp_path / "train",
                    dev_test={"source": "imagefolder", "path": tmp_path / "field"},
                    fractions={"train": 0.5, "train_dev": 0.2, "dev": 0.15, "test": 0.15})
    data, split, _ = load_study_data(spec)
    assert len(data.labels) == 24
    assert sorted(split.train.tolist() + split.train_dev.tolist()) == list(range(12))
    assert sorted(split.dev.tolist() + split.test.tolist()) == list(range(12, 24))
    assert "field" in data.sources[int(split.dev[0])]


def test_fake_overlap_caught():
    spec = DataSpec(source="fake", fake_size=40, image_size=8, dev_test={"source": "fake", "fake_size": 40})
    with pytest.raises(DataError, match="more than one split part"):
        load_study_data(spec)


def test_fake_distinct_offsets_pass():
    spec = DataSpec(source="fake", fake_size=40, image_size=8,
                    dev_test={"source": "fake", "fake_size": 40, "fake_offset": 1000})
    _, _, duplicates = load_study_data(spec)
    assert duplicates.count == 0


def test_duplicates_reported_as_warning(caplog):
    spec = DataSpec(source="fake", fake_size=40, image_size=8, duplicates="warn",
                    dev_test={"source": "fake", "fake_size": 40})
    with caplog.at_level(logging.WARNING):
        _, split, duplicates = load_study_data(spec)
    assert duplicates.count == len(split.dev) + len(split.test)
    assert "more than one split part" in caplog.text


def test_find_duplicates_across_parts_only(digits):
    split = split_dataset(digits.labels, Fractions(), seed=0)
    images = digits.images.clone()
    images[int(split.dev[0])] = images[int(split.train[0])]
    images[int(split.train[2])] = images[int(split.train[1])]  # inside one part: allowed
    duplicates = find_duplicates(images, split)
    assert duplicates.count == 1
    assert duplicates.groups[0] == {"train": [int(split.train[0])], "dev": [int(split.dev[0])]}


def _write_mixed_folder(root, count=12):
    """Two classes of distinct images in grayscale, RGBA and RGB modes."""
    modes = ["L", "RGBA", "RGB"]
    for label in range(2):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(count):
            mode = modes[i % 3]
            level = 30 + 200 * label
            color = level if mode == "L" else (level, level, level, 255) if mode == "RGBA" else (level,) * 3
            image = Image.new(mode, (6, 6), color)
            image.putpixel((0, 0), i * 10 if mode == "L" else (i * 10,) * len(image.getbands()))
            image.save(folder / f"{i}.png")


def test_mixed_modes_become_rgb(tmp_path):
    _write_mixed_folder(tmp_path)
    data = load_images(DataSpec(source="imagefolder", path=tmp_path))
    assert data.images.shape == (24, 3, 6, 6)
    # Grayscale 30 becomes (30, 30, 30); RGBA drops its alpha.
    assert data.images[0, :, 1, 1].tolist() == [30, 30, 30]
    assert data.images[13, :, 1, 1].tolist() == [230, 230, 230]


def test_bad_files_listed_then_skipped(tmp_path):
    _write_mixed_folder(tmp_path)
    (tmp_path / "class0" / "notes.txt").write_text("not an image")
    (tmp_path / "class1" / "empty.png").write_bytes(b"")
    (tmp_path / "class1" / "cut.png").write_bytes((tmp_path / "class1" / "0.png").read_bytes()[:40])
    with pytest.raises(DataError) as stopped:
        load_images(DataSpec(source="imagefolder", path=tmp_path))
    message = str(stopped.value)
    assert "3 bad file(s)" in message
    assert "notes.txt (not an image file" in message
    assert "empty.png (empty file)" in message
    assert "cut.png" in message
    assert "data.bad_files: skip" in message

    data = load_images(DataSpec(source="imagefolder", path=tmp_path, bad_files="skip"))
    assert data.images.shape[0] == 24
    assert len(data.skipped) == 3


def test_bad_file_list_is_capped(tmp_path):
    _write_mixed_folder(tmp_path)
    for i in range(25):
        (tmp_path / "class0" / f"junk{i:02d}.dat").write_text("x")
    with pytest.raises(DataError) as stopped:
        load_images(DataSpec(source="imagefolder", path=tmp_path))
    assert "25 bad file(s)" in str(stopped.value)
    assert "... and 5 more" in str(stopped.value)
