"""Fixtures for the model tests: the `tiny` config on CPU, one thread."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tiny_scene import Scene

from training.model import TINY, build_components


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The machine's cores are shared; one thread also keeps CPU results reproducible.
    torch.set_num_threads(1)


@pytest.fixture
def tiny() -> dict[str, Any]:
    """Fresh tiny components (tests change scales and weights)."""
    return build_components(TINY, seed=0)


@pytest.fixture
def scene() -> Scene:
    return Scene()
