"""The Dagster `model` asset's failure and the evaluation's identity gate. The assets trained,
scored and materialised again on a persistent instance: tests/test_dagster_ui.py."""

from __future__ import annotations

import math
from dataclasses import replace

import dagster as dg
import pandas as pd

from orchestration.dataset_definitions import STAGES, build_resources
from orchestration.evaluation_assets import (
    IdentityFigures,
    evaluation,
    identity_gate,
    identity_kept_without_copying,
    identity_share,
)
from orchestration.training_assets import features, model
from tests.conftest import PARAMS, tracking_store
from training.params import EvaluationParams


def test_model_asset_fails_with_the_cause(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp_path))
    result = dg.materialize(
        [*STAGES, features, model, evaluation, identity_kept_without_copying],
        selection=[model],
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(tmp_path / "empty-data"), str(PARAMS), "tiny"),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "no dataset at" in message and "dvc repro dataset" in message


def test_the_identity_gate_punishes_copying_and_missing_faces_and_names_each_number():
    params = EvaluationParams(min_face_similarity=0.91)
    good = IdentityFigures(
        face_found=1.0, identity_share=0.75, copy_paste=0.1, paste_copy_paste=0.6
    )
    assert identity_gate(good, params).passed
    # One face in sixteen, well kept, and a pasted reference: three failures, each named.
    copying = IdentityFigures(
        face_found=1 / 16, identity_share=1 / 16, copy_paste=0.99, paste_copy_paste=0.6
    )
    failed = identity_gate(copying, params)
    assert not failed.passed and failed.severity == dg.AssetCheckSeverity.ERROR
    assert "a face in 0.06 of the outputs, below 0.9" in failed.description
    assert "sim_gt >= 0.91 in 0.06 of the outputs, below 0.5" in failed.description
    assert "copy-paste 0.990, not below the pasted reference's 0.600" in failed.description
    # Copy-paste not scored (reference and target too close): judged on the rest, and said.
    unscored = identity_gate(replace(good, copy_paste=math.nan), params)
    assert unscored.passed and "copy-paste not scored" in unscored.description
    assert "copy_paste" not in unscored.metadata and "face_found" in unscored.metadata
    # No threshold: a warning that nothing was judged, which blocks nothing; never a pass.
    off = identity_gate(good, EvaluationParams(min_face_similarity=None))
    assert not off.passed and off.severity == dg.AssetCheckSeverity.WARN
    assert off.description.startswith("not checked: evaluation.min_face_similarity is null")


def test_identity_share_counts_outputs_without_a_face_as_missing():
    samples = pd.DataFrame(
        {
            "ablation": ["full", "full", "full", "full", "paste"],
            "face_similarity_gt": [0.95, 0.92, 0.5, math.nan, 0.99],
        }
    )
    assert identity_share(samples, 0.91) == 0.5
    assert math.isnan(identity_share(samples, None))
