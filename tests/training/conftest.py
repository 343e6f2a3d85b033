"""Fixtures for the model tests: the `tiny` config on CPU, one thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_scene import Scene

from tests.conftest import tracking_store
from tests.triplets import write_triplets
from training.model import TINY, build_components

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The machine's cores are shared; one thread also keeps CPU results reproducible.
    torch.set_num_threads(1)


@pytest.fixture
def temp_tracking(tmp_path, monkeypatch) -> None:
    """MLflow in a SQLite store of the test's temp dir, which is also the working directory
    (artifacts and git lookups stay there)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp_path))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """Fresh tiny components (tests change scales and weights)."""
    return build_components(TINY, seed=0)


@pytest.fixture
def scene() -> Scene:
    return Scene()


def precompute_features(root: Path, **overrides: Any) -> Path:
    """The features stage of the tiny params (with `overrides`) over `root`'s triplets, as
    `dvc repro features` runs it; returns `root`."""
    from orchestration.params import load_params
    from training.features import precompute

    training = load_params(REPO / "params.yaml", "tiny").training
    precompute(training.updated("training", **overrides), root)
    return root


@pytest.fixture
def triplets_root(tmp_path) -> Path:
    """Six triplets and their features (the tiny profile's), as `dvc repro features` leaves
    them."""
    return precompute_features(write_triplets(tmp_path / "data"))
