"""Fixtures for the model tests: the `tiny` config on CPU, one thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_scene import Scene

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
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """Fresh tiny components (tests change scales and weights)."""
    return build_components(TINY, seed=0)


@pytest.fixture
def scene() -> Scene:
    return Scene()


def write_triplets(root: Path, identities: int = 6, seed: int = 0) -> Path:
    """A small triplet dataset in the data contract's layout, written by the dataset's own
    writer: `identities` characters (the last one a single image), images of two aspect
    ratios, raw face-embedding norms like ArcFace's (about 20-30). Returns the data root."""
    from assets.triplets import Triplet, write_manifest, write_triplet

    rng = np.random.default_rng(seed)
    out = root / "triplets"
    out.mkdir(parents=True)
    rows = []
    for i in range(identities):
        height, width = (48, 80) if i % 2 else (64, 64)
        mask = np.zeros((height, width, 3), np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
        embedding = rng.standard_normal(512).astype(np.float32)
        single = i == identities - 1
        images = {
            name: rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for name in ("reference.png", "reference_crop.png", "target.png", "target_pose.png")
        }
        images["target_mask.png"] = mask
        triplet = Triplet(
            triplet_id=f"single-{i}" if single else f"movie-c{i:04d}",
            source="single" if single else "movie",
            movie="" if single else "movie",
            character_id=-1 if single else i,
            reference_frame=0,
            target_frame=0 if single else 50,
            prompt=f"A person number {i} wearing a red coat walks through a grey street.",
            face_embedding=[float(v) for v in embedding / np.linalg.norm(embedding)],
            face_embedding_raw_norm=float(20 + i),
            images=images,
        )
        rows.append(write_triplet(triplet, out))
    write_manifest(rows, [], out, {"profile": "tiny"})
    return root


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
