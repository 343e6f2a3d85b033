"""`bench/dataset_gpu.py`: the smoke run at tiny sizes on CPU goes through every stage's code,
and the capacity plan labels each throughput measured or estimated by where it came from."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from bench import capacity, dataset_gpu, gpu_window
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


def test_a_gpu_window_runs_it_part_by_part(tmp_path: Path) -> None:
    """`make gpu-window PART=dataset`'s arguments: each figure is kept in OUT as it is measured,
    a part forced to fail costs only its rows, and with no budget every part is skipped, each
    with a line in the section."""
    assert gpu_window.PARTS["dataset"] == "bench.dataset_gpu"
    out = tmp_path / "out"
    arguments = gpu_window.bench_arguments(out, 600, True, None, "sam")
    figures = dataset_gpu.main(arguments)
    assert "sam" not in {f.key for f in figures} and "caption" in {f.key for f in figures}
    kept = (out / "dataset_figures.txt").read_text().splitlines()
    assert len(kept) == len(figures) and kept[0].startswith("faces: SCRFD-10GF layout")
    section = (out / "BENCHMARKS.md").read_text()
    assert "- failed: sam: RuntimeError: forced to fail" in section
    assert (out / "dataset_figures.json").is_file()

    broke = tmp_path / "broke"
    assert dataset_gpu.main(gpu_window.bench_arguments(broke, 0, True, None, None)) == []
    section = (broke / "BENCHMARKS.md").read_text()
    for part in dataset_gpu.ESTIMATE_S:
        assert f"- skipped: {part}: estimated 1 s, 0 s left" in section


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
