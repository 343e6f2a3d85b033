"""`bench/dataset_gpu.py`: the smoke run at tiny sizes on CPU goes through every stage's code,
and the capacity plan labels each throughput measured or estimated by where it came from."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import capacity, dataset_gpu
from bench.dataset_gpu_figures import Figure

torch.set_num_threads(1)


def test_smoke_run_writes_every_stage(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    figures = dataset_gpu.main(["--smoke", "--report", str(report)])
    assert {f.key for f in figures} == {
        "detector", "recogniser", "sam", "sam_encoder", "pose", "caption", "vision"
    }  # fmt: skip
    assert all(f.per_second and f.per_second > 0 for f in figures)
    text = report.read_text()
    assert "## Dataset stages (GPU) (smoke)" in text
    assert text.count("(smoke) |") == len(figures)  # never presented as measured throughput
    assert "(measured)" not in text and capacity.SECTION not in text


def test_figures_saved_on_one_machine_are_reported_on_another(tmp_path: Path) -> None:
    """The accelerator machine saves the figures; the sections are written from them here."""
    saved, report = tmp_path / "figures.json", tmp_path / "BENCHMARKS.md"
    figures = dataset_gpu.main(["--smoke", "--figures", str(saved), "--no-report"])
    assert not report.exists()
    again = dataset_gpu.main(["--from-figures", str(saved), "--report", str(report)])
    assert again == figures
    assert "## Dataset stages (GPU) (smoke)" in report.read_text()


@pytest.fixture(scope="module")
def full_size() -> list[Figure]:
    """The full-size figures counted on the meta device, throughput not measured."""
    run = dataset_gpu.Run("full", "cpu", False, repeats=1, warmup=0, tiles=9, new_tokens=200)
    return dataset_gpu.measure(run)


def test_full_size_counts(full_size: list[Figure]) -> None:
    by_key = {f.key: f for f in full_size}
    assert all(f.per_second is None for f in full_size)
    # Published sizes: SAM ViT-H 641M, ArcFace R100 65M, InternVL2-26B about 25B parameters.
    assert by_key["sam"].params == pytest.approx(641e6, rel=0.01)
    assert by_key["recogniser"].params == pytest.approx(65.2e6, rel=0.01)
    assert by_key["caption"].params == pytest.approx(25e9, rel=0.05)
    assert by_key["caption"].language_params == pytest.approx(19.3e9, rel=0.05)


def gpu_cells(plan: str) -> list[str]:
    """The GPU items/s cell of each stage row of the plan's stage table (nine columns)."""
    rows = [line.split(" | ") for line in plan.splitlines() if line.startswith("| ")]
    return [cells[2] for cells in rows if len(cells) == 9 and cells[1][0].isdigit()]


def test_plan_labels_estimates_and_measurements(full_size: list[Figure]) -> None:
    estimated = gpu_cells(capacity.plan(full_size))
    assert len(estimated) == 4 and all(cell.endswith("(estimated)") for cell in estimated)
    measured = gpu_cells(capacity.plan([replace(f, per_second=100.0) for f in full_size]))
    assert all(cell.endswith("(measured)") for cell in measured)
    assert measured[0] == "40.0 (measured)"  # a frame: the detector and 1.5 recogniser faces
