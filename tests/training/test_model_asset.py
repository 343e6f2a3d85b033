"""The Dagster `model` asset's failure and the evaluation's check. The assets trained, scored
and materialised again on a persistent instance: tests/test_dagster_ui.py."""

from __future__ import annotations

import dagster as dg

from orchestration.dataset_definitions import STAGES, build_resources
from orchestration.evaluation_assets import (
    evaluation,
    face_similarity_above_threshold,
    face_similarity_check,
)
from orchestration.training_assets import features, model
from tests.conftest import PARAMS, tracking_store


def test_model_asset_fails_with_the_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp_path))
    result = dg.materialize(
        [*STAGES, features, model, evaluation, face_similarity_above_threshold],
        selection=[model],
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(tmp_path / "empty-data"), str(PARAMS), "tiny"),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "no dataset at" in message and "dvc repro dataset" in message


def test_face_similarity_check_fails_below_the_threshold_and_without_a_face_and_warns_when_off():
    assert face_similarity_check(0.45, 0.3).passed
    below = face_similarity_check(0.2, 0.3)
    assert not below.passed and "0.200, threshold 0.3" in below.description
    none = face_similarity_check(float("nan"), 0.3)
    assert not none.passed and "no face found" in none.description
    # No threshold: a warning that nothing was judged, which blocks nothing; never a pass.
    off = face_similarity_check(float("nan"), None)
    assert not off.passed and off.severity == dg.AssetCheckSeverity.WARN
    assert off.description.startswith("not checked: evaluation.min_face_similarity is null")
