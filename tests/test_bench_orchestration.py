"""bench/orchestration.py's code at 3 partitions, one run through Dagster and one timing of each
kind, so that the benchmark cannot rot; no timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestration.production import PostgresUnavailable, postgres_bin

pytestmark = pytest.mark.slow


def test_the_orchestration_benchmark_runs_at_a_tiny_size(tmp_path: Path):
    try:
        postgres_bin()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    from bench.orchestration import measure, report

    figures = measure(3, sample_runs=1, work_dir=tmp_path, repeats=1)
    assert figures.partitions == 3 and figures.runs == 1
    assert figures.run_wall_s > figures.own_work_s > 0
    assert figures.database_mb > 0
    text = report([figures, figures])
    assert "| measurement | N = 3 | N = 3 | growth x1 N |" in text
    assert "Dagster's overhead per run, in-process (s)" in text
