"""A disk cache of decoded images, keyed by a hash of the dataset's file contents.

Decoding 10,000 JPEGs takes seconds on every study start and in every worker
process, while reading the decoded uint8 tensor back takes milliseconds. The key
hashes every file's relative path and bytes together with the decoding options,
so an edited, added or removed image gives a new key and the stale entry is
simply not read again. Entries are written atomically, so several workers that
miss at once each write a complete file and the last rename wins.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the decoded layout changes, so old entries are ignored
ENV_CACHE_DIR = "PLAYBOOK_CACHE_DIR"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Decoded:
    """A source's images as its loader decoded them; ``load_source`` may still convert channels and resize."""

    images: torch.Tensor  # N×C×H×W uint8
    labels: torch.Tensor  # N int64
    class_names: list[str]
    sources: list[str]
    skipped: list[str]  # bad files left out (data.bad_files: skip)


def cache_dir() -> Path:
    """Return the cache folder: ``$PLAYBOOK_CACHE_DIR``, else ``$XDG_CACHE_HOME/playbook``, else ~/.cache/playbook."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "playbook"


def content_key(files: list[Path], root: Path, options: dict[str, Any]) -> str:
    """Hash each file's path relative to ``root`` and its bytes, then the decoding options."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"format={CACHE_FORMAT};".encode())
    for path in files:
        relative = path.relative_to(root).as_posix().encode()
        digest.update(len(relative).to_bytes(4, "little") + relative)
        digest.update(path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            while chunk := handle.read(HASH_CHUNK):
                digest.update(chunk)
    for name in sorted(options):
        digest.update(f";{name}={options[name]!r}".encode())
    return digest.hexdigest()


def entry_path(key: str, folder: Path | None = None) -> Path:
    """Return where the entry for ``key`` is stored."""
    return (folder or cache_dir()) / "images" / f"{key}.pt"


def read(key: str, folder: Path | None = None) -> Decoded | None:
    """Return the cached entry for ``key``, or None when it is missing or unreadable."""
    path = entry_path(key, folder)
    if not path.is_file():
        return None
    try:
        content = torch.load(path, weights_only=True)
        entry = Decoded(content["images"], content["labels"], list(content["class_names"]),
                        list(content["sources"]), list(content["skipped"]))
    except Exception as error:  # a damaged file can raise any error from the unpickler, so any error means decode anew
        log.warning("ignoring the unreadable image cache entry %s (%s: %s); decoding again", path,
                    type(error).__name__, error)
        return None
    if len(entry.images) != len(entry.labels) or len(entry.sources) != len(entry.labels):
        log.warning("ignoring the image cache entry %s: its images, labels and sources differ in length", path)
        return None
    return entry


def write(key: str, entry: Decoded, folder: Path | None = None) -> Path | None:
    """Store ``entry`` under ``key`` with an atomic rename; return the path, or None when the folder is not writable."""
    path = entry_path(key, folder)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(handle, "wb") as stream:
            torch.save({"images": entry.images.contiguous(), "labels": entry.labels,
                        "class_names": entry.class_names, "sources": entry.sources,
                        "skipped": entry.skipped}, stream)
        os.replace(temporary, path)
    except OSError as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        log.warning("could not write the image cache entry %s (%s); the next start decodes again. "
                    "Set %s to a writable folder, or data.cache: false.", path, error, ENV_CACHE_DIR)
        return None
    return path
