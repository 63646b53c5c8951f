"""Shared fixtures: tiny real studies on digits in temporary folders."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"

TINY_SPEC = {
    "name": "tiny",
    "seed": 0,
    "data": {"source": "digits"},
    "model": {"arch": "small_cnn", "small_cnn": {"depth": 1, "width": {"choices": [8, 16]}}},
    "train": {
        "lr": {"low": 1.0e-3, "high": 1.0e-2, "log": True},
        "weight_decay": {"low": 1.0e-6, "high": 1.0e-4, "log": True},
        "batch_size": 32,
        "epochs": 1,
    },
    "search": {"trials": 2},
    "latency": {"warmup": 2, "repeats": 10},
}


@pytest.fixture
def tiny_spec() -> dict:
    """Return a fresh copy of a 2-trial, 1-epoch digits spec."""
    return copy.deepcopy(TINY_SPEC)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in an empty folder with no MLflow tracking URI from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def _image_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # One decoded-image cache for the whole session, so the CIFAR-10 JPEGs decode once, never in ~/.cache.
    os.environ["PLAYBOOK_CACHE_DIR"] = str(tmp_path_factory.mktemp("image-cache"))


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    # Tests share 2 cores with pytest itself; one intra-op thread is faster for tiny models.
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
