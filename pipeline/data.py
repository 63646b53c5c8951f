"""Data stage: load images once as tensors, split them, and normalize with train statistics.

Images stay ``uint8`` tensors of shape N×C×H×W until a trial needs them as floats.
Nothing is downloaded: every source reads local files or data bundled with a package.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import cache
from pipeline.spec import DataSpec, Fractions, ShiftSpec

log = logging.getLogger(__name__)

SPLITS = ("train", "train_dev", "dev", "test")
MAX_LISTED_BAD_FILES = 20
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
MANIFEST_VERSION = 1


class DataError(ValueError):
    """Images that cannot be loaded or split, with the path or value and the fix."""


@dataclass(frozen=True)
class ImageData:
    """Decoded images with labels, in dataset order."""

    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N
    class_names: list[str]
    sources: list[str]  # file path or "<source>/<index>" per image
    fingerprint: str  # sha256 of pixels, labels and class names
    skipped: tuple[str, ...] = ()  # bad files left out under data.bad_files: skip

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class Split:
    """Dataset indices of the four parts, and the hash that pins them."""

    train: np.ndarray
    train_dev: np.ndarray
    dev: np.ndarray
    test: np.ndarray
    seed: int
    fingerprint: str
    hash: str = field(default="")

    def part(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def manifest(self) -> dict:
        """Return the split as JSON-ready data, including its content hash."""
        body = _manifest_body(self.seed, self.fingerprint, {name: self.part(name) for name in SPLITS})
        return {**body, "hash": _hash_json(body)}


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and standard deviation of the train split, in [0, 1] pixel units."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Return float32 images scaled to [0, 1] and standardized per channel."""
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (images.float() / 255.0 - mean) / std


# ---------------------------------------------------------------------------
# Loading


def load_images(spec: DataSpec) -> ImageData:
    """Decode every image of the spec's training source once into a uint8 tensor.

    Raises:
        DataError: a missing folder, an empty class, or an unreadable image.
    """
    return load_source(spec.source, spec.path, channels=spec.channels, image_size=spec.image_size,
                       fake_size=spec.fake_size, fake_classes=spec.fake_classes, fake_offset=spec.fake_offset,
                       bad_files=spec.bad_files, use_cache=spec.cache)


def load_source(source: str, path: Path | None, *, channels: int | None = None, image_size: int | None = None,
                fake_size: int = 500, fake_classes: int = 10, fake_offset: int = 0,
                bad_files: str = "error", use_cache: bool = True) -> ImageData:
    """Decode one source's images, converted to ``channels`` and resized to ``image_size`` when given.

    CIFAR-10 and ImageFolder images come from the disk cache when ``use_cache`` is
    set and the files are unchanged; see ``pipeline.cache``.
    """
    skipped: list[str] = []
    if source == "digits":
        images, labels, names, sources = _load_digits()
    elif source == "cifar10":
        folder = path / "cifar-10-batches-py"
        files = [folder / name for name in CIFAR_FILES]
        _check_cifar_files(folder)
        decoded = _decode_with_cache(files, folder, {"source": source}, lambda: _load_cifar10(path), use_cache)
        images, labels, names, sources = decoded.images, decoded.labels, decoded.class_names, decoded.sources
    elif source == "imagefolder":
        classes, files = _list_imagefolder(path)
        # Class folders count even when empty: the labels and the error for an empty class depend on them.
        options = {"source": source, "classes": classes, "channels": channels, "image_size": image_size,
                   "bad_files": bad_files}
        decoded = _decode_with_cache(files, path, options, lambda: _decode_imagefolder(
            path, classes, files, channels, image_size, bad_files), use_cache)
        images, labels, names = decoded.images, decoded.labels, decoded.class_names
        # The cache stores paths relative to the folder, so a moved dataset still hits.
        sources = [str(path / source) for source in decoded.sources]
        skipped = [str(path / entry) for entry in decoded.skipped]
        if skipped:
            log.warning("skipped %d bad file(s) under %s (data.bad_files: skip); the list is logged on the "
                        "parent run as bad_files.txt", len(skipped), path)
    else:
        images, labels, names, sources = _load_fake(fake_size, fake_classes, fake_offset, channels, image_size)

    if channels is not None and images.shape[1] != channels:
        images = _convert_channels(images, channels)
    if image_size is not None and images.shape[-1] != image_size:
        images = resize(images, image_size)
    return ImageData(images, labels, names, sources, _fingerprint(images, labels, names), tuple(skipped))


def apply_shift(images: torch.Tensor, shift: ShiftSpec) -> torch.Tensor:
    """Rotate, then scale contrast around each image's mean, then scale brightness; once, in uint8."""
    from torchvision.transforms.v2 import functional as TF

    shifted = images
    if shift.rotate:
        shifted = TF.rotate(shifted, shift.rotate, interpolation=TF.InterpolationMode.BILINEAR)
    pixels = shifted.float()
    if shift.contrast != 1.0:
        mean = pixels.mean(dim=(1, 2, 3), keepdim=True)
        pixels = mean + (pixels - mean) * shift.contrast
    pixels = pixels * shift.brightness
    return pixels.round().clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Duplicates:
    """Images with identical pixels in more than one split part."""

    groups: list[dict[str, list[int]]]  # per pixel pattern: part name -> dataset indices

    @property
    def count(self) -> int:
        return len(self.groups)

    def describe(self, limit: int = 5) -> str:
        shown = "; ".join(", ".join(f"{part} {indices}" for part, indices in group.items())
                          for group in self.groups[:limit])
        more = f"; and {self.count - limit} more" if self.count > limit else ""
        return f"{self.count} image(s) appear in more than one split part: {shown}{more}"


def find_duplicates(images: torch.Tensor, split: Split) -> Duplicates:
    """Find images whose pixels are identical across split parts (within a part is allowed)."""
    owners: dict[bytes, dict[str, list[int]]] = {}
    flat = images.reshape(len(images), -1).numpy()
    for name in SPLITS:
        for index in split.part(name).tolist():
            digest = hashlib.blake2b(flat[index].tobytes(), digest_size=16).digest()
            owners.setdefault(digest, {}).setdefault(name, []).append(index)
    return Duplicates([group for group in owners.values() if len(group) > 1])


def load_study_data(spec: DataSpec) -> tuple[ImageData, Split, Duplicates]:
    """Load and split a study's images, with dev and test from ``spec.dev_test`` when given.

    The training source always supplies train and train-dev. Without ``dev_test``
    it supplies all four parts. With a shift only, dev and test are shifted copies
    of the images that the split puts there. With another source, dev and test come
    from it alone. Identical images across parts are reported, or raise DataError
    when ``spec.duplicates`` is "error".
    """
    main = load_images(spec)
    fractions = spec.fractions
    dev_test = spec.dev_test
    if dev_test is None:
        data = main
        split = split_dataset(main.labels, fractions, spec.split_seed, main.fingerprint)
    elif dev_test.source is None:
        parts = _stratified_parts(main.labels.numpy(), _shares(fractions, SPLITS), spec.split_seed)
        copy = apply_shift(main.images, dev_test.shift)
        data = _concatenate(main, ImageData(copy, main.labels, main.class_names,
                                            [f"{source} (shifted)" for source in main.sources], ""))
        offset = len(main.labels)
        parts["dev"], parts["test"] = parts["dev"] + offset, parts["test"] + offset
        split = _make_split(parts, spec.split_seed, data.fingerprint)
    else:
        other = load_source(dev_test.source, dev_test.path, channels=main.channels, image_size=main.image_size,
                            fake_size=dev_test.fake_size, fake_classes=spec.fake_classes,
                            fake_offset=dev_test.fake_offset, bad_files=spec.bad_files, use_cache=spec.cache)
        if other.class_names != main.class_names:
            raise DataError(f"data.dev_test classes {other.class_names} differ from the training classes "
                            f"{main.class_names}; both sources need the same class names")
        if dev_test.shift is not None:
            other = ImageData(apply_shift(other.images, dev_test.shift), other.labels, other.class_names,
                              other.sources, "")
        train_parts = _stratified_parts(main.labels.numpy(), _shares(fractions, ("train", "train_dev")),
                                        spec.split_seed)
        held_out = _stratified_parts(other.labels.numpy(), _shares(fractions, ("dev", "test")), spec.split_seed)
        data = _concatenate(main, other)
        offset = len(main.labels)
        parts = {**train_parts, **{name: indices + offset for name, indices in held_out.items()}}
        split = _make_split(parts, spec.split_seed, data.fingerprint)

    duplicates = find_duplicates(data.images, split)
    if duplicates.count:
        message = duplicates.describe()
        if spec.duplicates == "error":
            raise DataError(f"{message}. Identical images in train and dev or test inflate the scores. Remove "
                            "them from the data (for FakeData, give dev_test another fake_offset), or set "
                            "data.duplicates: warn to go on.")
        log.warning("%s", message)
    return data, split, duplicates


def _shares(fractions: Fractions, names: tuple[str, ...]) -> dict[str, float]:
    total = sum(getattr(fractions, name) for name in names)
    return {name: getattr(fractions, name) / total for name in names}


def _concatenate(first: ImageData, second: ImageData) -> ImageData:
    if first.images.shape[1:] != second.images.shape[1:]:
        raise DataError(f"dev/test images have shape {tuple(second.images.shape[1:])}, training images "
                        f"{tuple(first.images.shape[1:])}; set data.image_size and data.channels")
    images = torch.cat([first.images, second.images])
    labels = torch.cat([first.labels, second.labels])
    return ImageData(images, labels, first.class_names, first.sources + second.sources,
                     _fingerprint(images, labels, first.class_names), first.skipped + second.skipped)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images to size×size once, with antialiasing when shrinking."""
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _load_digits() -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixel values are counts 0..16 of set pixels in 4×4 blocks; scale them to 0..255.
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    images = torch.from_numpy(pixels).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    names = [str(name) for name in bunch.target_names]
    return images, labels, names, [f"digits/{index}" for index in range(len(labels))]


CIFAR_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_FILES = CIFAR_BATCHES + ("batches.meta",)


def _check_cifar_files(folder: Path) -> None:
    missing = [name for name in CIFAR_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"CIFAR-10 files missing under {folder}: {', '.join(missing)}; unpack "
                        "cifar-10-python.tar.gz into data.path. Nothing is downloaded.")


def _load_cifar10(root: Path) -> cache.Decoded:
    """Read the CIFAR-10 python layout: data_batch_1..5, test_batch and batches.meta."""
    folder = root / "cifar-10-batches-py"
    _check_cifar_files(folder)
    names = CIFAR_BATCHES
    arrays, labels, sources = [], [], []
    for name in names:
        batch = _read_cifar_pickle(folder / name)
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{folder / name}: expected rows of 3072 pixel values, got shape {data.shape}")
        arrays.append(data.reshape(-1, 3, 32, 32))
        batch_labels = list(batch[b"labels"])
        labels += batch_labels
        sources += [f"cifar10/{name}/{i}" for i in range(len(batch_labels))]
    meta = _read_cifar_pickle(folder / "batches.meta")
    classes = [label.decode() if isinstance(label, bytes) else str(label) for label in meta[b"label_names"]]
    return cache.Decoded(torch.from_numpy(np.concatenate(arrays)), torch.tensor(labels, dtype=torch.int64),
                         classes, sources, [])


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, so a crafted file cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 file")
        return super().find_class(module, name)


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as handle:
            content = _ArrayUnpickler(handle, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        raise DataError(f"{path} is not a readable CIFAR-10 batch: {error}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch: expected a dict, got {type(content).__name__}")
    return content


def _list_imagefolder(root: Path) -> tuple[list[str], list[Path]]:
    """Return the class folder names and every file under them, in a stable order."""
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DataError(f"no class folders in {root}; put one sub-folder of images per class there")
    files = []
    for name in classes:
        files += sorted(p for p in (root / name).rglob("*") if p.is_file() and not p.name.startswith("."))
    return classes, files


def _decode_imagefolder(root: Path, classes: list[str], listed: list[Path], channels: int | None,
                        image_size: int | None, bad_files: str = "error") -> cache.Decoded:
    """Decode one folder per class; bad files stop the load, or are skipped and listed.

    Sources and skipped files are returned relative to ``root``.
    """
    from PIL import Image, UnidentifiedImageError

    label_of = {name: label for label, name in enumerate(classes)}
    files: list[tuple[Path, int]] = []
    bad: list[str] = []
    for path in listed:
        if path.suffix.lower() in IMAGE_SUFFIXES:
            files.append((path, label_of[path.relative_to(root).parts[0]]))
        else:
            bad.append(f"{path} (not an image file: suffix {path.suffix or 'none'})")

    decoded, kept = [], []
    for path, label in files:
        try:
            with Image.open(path) as image:
                image.load()
                decoded.append(image.copy())
                kept.append((path, label))
        except (OSError, UnidentifiedImageError, ValueError) as error:
            bad.append(f"{path} ({'empty file' if path.stat().st_size == 0 else error})")
    if bad and bad_files == "error":
        shown = "\n  ".join(bad[:MAX_LISTED_BAD_FILES])
        more = f"\n  ... and {len(bad) - MAX_LISTED_BAD_FILES} more" if len(bad) > MAX_LISTED_BAD_FILES else ""
        raise DataError(f"{len(bad)} bad file(s) under {root}:\n  {shown}{more}\n"
                        "remove or replace them, or set data.bad_files: skip to leave them out")
    present = {label for _, label in kept}
    empty = [classes[label] for label in range(len(classes)) if label not in present]
    if empty:
        raise DataError(f"class folder(s) with no readable images under {root}: {', '.join(empty)}; "
                        "add images or remove the folders")

    if channels is None:
        grayscale_modes = ("1", "L", "LA", "I", "I;16", "F")
        channels = 1 if all(image.mode in grayscale_modes for image in decoded) else 3
    mode = "L" if channels == 1 else "RGB"
    sizes = {image.size for image in decoded}
    if image_size is None and len(sizes) > 1:
        raise DataError(f"images under {root} have {len(sizes)} different sizes (for example "
                        f"{sorted(sizes)[:3]}); set data.image_size to resize them once")
    arrays = []
    for image in decoded:
        # Mixed modes (grayscale, RGBA, palette) all become the model's channel count here.
        image = image.convert(mode)
        if image_size is not None and image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    images = torch.from_numpy(np.stack(arrays))
    labels = torch.tensor([label for _, label in kept], dtype=torch.int64)
    root_prefix = f"{root}{os.sep}"
    return cache.Decoded(images, labels, classes, [str(path.relative_to(root)) for path, _ in kept],
                         [entry.removeprefix(root_prefix) for entry in bad])


def _decode_with_cache(files: list[Path], root: Path, options: dict, decode: Callable[[], cache.Decoded],
                       use_cache: bool) -> cache.Decoded:
    """Return the cached decoding of ``files`` when their contents are unchanged, else decode and store it."""
    if not use_cache:
        return decode()
    started = time.perf_counter()
    key = cache.content_key(files, root, options)
    entry = cache.read(key)
    if entry is not None:
        log.info("read %d decoded images of %s from the cache in %.2f s (key %s)", len(entry.labels), root,
                 time.perf_counter() - started, key[:12])
        return entry
    entry = decode()
    stored = cache.write(key, entry)
    if stored is not None:
        log.info("decoded %d images of %s in %.2f s and cached them in %s", len(entry.labels), root,
                 time.perf_counter() - started, stored)
    return entry


def _load_fake(count: int, classes: int, offset: int, channels: int | None, image_size: int | None
               ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    from torchvision.datasets import FakeData

    log.warning("data source 'fake' draws random labels: accuracy stays at chance "
                "(1/%d). Use it for smoke tests only.", classes)
    channels = channels or 3
    size = image_size or 32
    dataset = FakeData(size=count, image_size=(channels, size, size), num_classes=classes, random_offset=offset)
    mode = "L" if channels == 1 else "RGB"
    arrays, labels = [], []
    for image, label in dataset:
        array = np.asarray(image.convert(mode), dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
        labels.append(int(label))
    names = [str(index) for index in range(classes)]
    return (torch.from_numpy(np.stack(arrays)), torch.tensor(labels, dtype=torch.int64), names,
            [f"fake/{offset + index}" for index in range(len(labels))])


def _convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    # ITU-R BT.601 luma weights, as PIL's "L" conversion uses.
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def _fingerprint(images: torch.Tensor, labels: torch.Tensor, names: list[str]) -> str:
    digest = hashlib.sha256()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    digest.update(json.dumps(names).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Splitting


def split_dataset(labels: torch.Tensor | np.ndarray, fractions: Fractions, seed: int,
                  fingerprint: str = "") -> Split:
    """Split indices into train, train-dev, dev and test, stratified by label.

    Each class is shuffled with ``seed`` and cut by the fractions, rounding by largest
    remainder. Every part therefore keeps the class proportions up to one image per
    class, and the same labels, fractions and seed always give the same split.
    """
    parts = _stratified_parts(np.asarray(labels), _shares(fractions, SPLITS), seed)
    return _make_split(parts, seed, fingerprint)


def _stratified_parts(labels: np.ndarray, shares: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    names = list(shares)
    weights = np.array([shares[name] for name in names])
    rng = np.random.default_rng(seed)
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for position, label in enumerate(np.unique(labels)):
        members = rng.permutation(np.flatnonzero(labels == label))
        counts = _largest_remainder(len(members), weights, rotate=position)
        for name, chunk in zip(names, np.split(members, np.cumsum(counts)[:-1])):
            chunks[name].append(chunk)
    return {name: np.sort(np.concatenate(parts)).astype(np.int64) for name, parts in chunks.items()}


def _largest_remainder(total: int, shares: np.ndarray, rotate: int) -> np.ndarray:
    exact = shares * total
    counts = np.floor(exact).astype(int)
    remainders = exact - counts
    # Rotating the tie order per class keeps ties from always favouring one part.
    order = sorted(range(len(shares)), key=lambda i: (-round(remainders[i], 9), (i - rotate) % len(shares)))
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return counts


def _make_split(parts: dict[str, np.ndarray], seed: int, fingerprint: str) -> Split:
    split = Split(**parts, seed=seed, fingerprint=fingerprint,
                  hash=_hash_json(_manifest_body(seed, fingerprint, parts)))
    check_disjoint(split)
    return split


def check_disjoint(split: Split) -> None:
    """Raise DataError if an index appears in two parts, or twice in one."""
    seen: dict[int, str] = {}
    for name in SPLITS:
        indices = split.part(name)
        if len(np.unique(indices)) != len(indices):
            raise DataError(f"split part '{name}' lists an index twice")
        for index in indices.tolist():
            if index in seen:
                raise DataError(f"index {index} is in both '{seen[index]}' and '{name}'")
            seen[index] = name


def split_from_manifest(manifest: dict) -> Split:
    """Rebuild a Split from its manifest, checking the version and the hash."""
    if manifest.get("version") != MANIFEST_VERSION:
        raise DataError(f"split manifest version {manifest.get('version')!r} is not supported "
                        f"(expected {MANIFEST_VERSION})")
    body = {key: value for key, value in manifest.items() if key != "hash"}
    if _hash_json(body) != manifest.get("hash"):
        raise DataError("split manifest hash does not match its contents; the file was edited or damaged")
    parts = {name: np.asarray(manifest["parts"][name], dtype=np.int64) for name in SPLITS}
    split = Split(**parts, seed=manifest["seed"], fingerprint=manifest["dataset_fingerprint"],
                  hash=manifest["hash"])
    check_disjoint(split)
    return split


def _manifest_body(seed: int, fingerprint: str, parts: dict[str, np.ndarray]) -> dict:
    return {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "dataset_fingerprint": fingerprint,
        "sizes": {name: int(len(indices)) for name, indices in parts.items()},
        "parts": {name: [int(i) for i in indices] for name, indices in parts.items()},
    }


def _hash_json(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def normalization(images: torch.Tensor, train: np.ndarray) -> Normalization:
    """Compute per-channel mean and std over the train split only."""
    pixels = images[torch.from_numpy(train)].float() / 255.0
    mean = pixels.mean(dim=(0, 2, 3))
    std = pixels.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return Normalization(tuple(mean.tolist()), tuple(std.tolist()))


@dataclass(frozen=True)
class PreparedData:
    """Normalized float tensors of every split, ready for batching by index."""

    x: dict[str, torch.Tensor]
    y: dict[str, torch.Tensor]
    indices: dict[str, np.ndarray]
    stats: Normalization

    def to(self, device: torch.device) -> PreparedData:
        """Return the data with the images on ``device``; labels stay on the CPU, where metrics are computed."""
        if all(x.device == device for x in self.x.values()):
            return self
        return PreparedData({name: x.to(device) for name, x in self.x.items()}, self.y, self.indices, self.stats)


def resize_prepared(prepared: PreparedData, size: int) -> PreparedData:
    """Return the prepared tensors resized once to size×size (bilinear, antialiased when shrinking)."""
    if all(x.shape[-1] == size for x in prepared.x.values()):
        return prepared
    x = {name: F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
         for name, images in prepared.x.items()}
    return PreparedData(x, prepared.y, prepared.indices, prepared.stats)


def prepare(data: ImageData, split: Split, parts: tuple[str, ...] = ("train", "train_dev", "dev")) -> PreparedData:
    """Normalize the given parts with train statistics; the test part is left out by default."""
    stats = normalization(data.images, split.train)
    x, y, indices = {}, {}, {}
    for name in parts:
        index = torch.from_numpy(split.part(name))
        x[name] = stats.apply(data.images[index]).contiguous()
        y[name] = data.labels[index]
        indices[name] = split.part(name)
    return PreparedData(x, y, indices, stats)
