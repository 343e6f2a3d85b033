"""The Dagster `model` asset: training as a subprocess, recorded with its MLflow run."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from core.versioning import dvc_md5
from orchestration.cli.materialize import describe
from orchestration.definitions import STAGES, build_resources
from orchestration.evaluation_assets import (
    FACE_CHECK,
    evaluation,
    face_similarity_above_threshold,
    face_similarity_check,
)
from orchestration.training_assets import FEATURES_CHECK, LOSS_CHECK, features, model
from tests.conftest import tracking_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp_path))
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["training"]["output_dir"] = str(tmp_path / "checkpoints")
    # Half the tiny run, no validation samples: enough steps for the loss check (as the
    # Dagster UI test trains).
    values["profiles"]["tiny"]["training"].update(max_steps=12, validation_samples=0)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _materialize(
    root: Path, params_file: Path, selection: list | None = None, instance=None
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*STAGES, features, model, evaluation, face_similarity_above_threshold],
        selection=selection or [model],
        instance=instance or dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(root), str(params_file), "tiny"),
        raise_on_error=False,
    )


@pytest.mark.slow
def test_model_and_evaluation_assets_train_score_and_record_the_run(
    triplets_root, params_file, tmp_path
):
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(
        triplets_root,
        params_file,
        dg.AssetSelection.assets(features, model, evaluation).without_checks()
        | dg.AssetSelection.checks_for_assets(features, model, evaluation),
        instance,
    )
    assert result.success
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks[FEATURES_CHECK].passed, checks[FEATURES_CHECK].description
    assert checks[LOSS_CHECK].passed, checks[LOSS_CHECK].description
    assert checks[FACE_CHECK].passed and checks[FACE_CHECK].description.startswith("off")
    events = {
        e.materialization.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert events["features"]["triplets"].value == 6
    metadata = events["model"]
    scored = events["evaluation"]
    assert scored["mlflow_run_id"].value == metadata["mlflow_run_id"].value
    assert "| full " in scored["ablations"].value and "| ground_truth " in scored["ablations"].value
    # The calibrations' identity is recorded beside the model's, or why it could not be (no
    # NaN: here the model paints noise, and a triplet's frames may show no face dlib finds).
    for row_metric in ("ground_truth/face_similarity", "paste/face_copy_paste"):
        assert (row_metric in scored) != (f"not_scored_eval/{row_metric}" in scored), row_metric
    assert scored["model_uri"].value.startswith("models:/m-")
    # The training subprocess logged to this test's store (another test may have pointed this
    # process's MLflow elsewhere).
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.info.status == "FINISHED"
    assert metadata["dataset_md5"].value == dvc_md5(triplets_root / "triplets")
    assert run.data.tags["dataset_md5"] == metadata["dataset_md5"].value
    assert f"/runs/{run.info.run_id}?workflowType=machine_learning" in metadata["mlflow_run"].value
    assert (tmp_path / "checkpoints" / "final" / "cameo_checkpoint.json").is_file()

    # Materialised again with nothing changed, the model is current: the same run, no training.
    again = _materialize(triplets_root, params_file, [model], instance)
    [event] = again.get_asset_materialization_events()
    reused = {key: value.value for key, value in event.materialization.metadata.items()}
    assert reused["reused"] and reused["mlflow_run_id"] == metadata["mlflow_run_id"].value
    assert describe("model", reused).startswith("current, not retrained: MLflow run")


def test_model_asset_fails_with_the_cause(tmp_path, params_file):
    result = _materialize(tmp_path / "empty-data", params_file)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "no dataset at" in message and "dvc repro dataset" in message


def test_face_similarity_check_fails_below_the_threshold_and_without_a_face():
    assert face_similarity_check(0.45, 0.3).passed
    below = face_similarity_check(0.2, 0.3)
    assert not below.passed and "0.200, threshold 0.3" in below.description
    none = face_similarity_check(float("nan"), 0.3)
    assert not none.passed and "no face found" in none.description
    assert face_similarity_check(float("nan"), None).passed
