"""The Dagster `model` asset: training as a subprocess, recorded with its MLflow run."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from assets.layout import dvc_md5
from orchestration.definitions import STAGES, build_resources
from orchestration.training_assets import LOSS_CHECK, model

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params_file(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["training"]["output_dir"] = str(tmp_path / "checkpoints")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _materialize(root: Path, params_file: Path) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*STAGES, model],
        selection=[model],
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(root), str(params_file), "tiny"),
        raise_on_error=False,
    )


@pytest.mark.slow
def test_model_asset_trains_and_records_the_run(triplets_root, params_file, tmp_path):
    result = _materialize(triplets_root, params_file)
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == LOSS_CHECK and check.passed, check.description
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    # The training subprocess logged to this test's store (another test may have pointed this
    # process's MLflow elsewhere).
    client = MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run(metadata["mlflow_run_id"].value)
    assert run.info.status == "FINISHED"
    assert metadata["dataset_md5"].value == dvc_md5(triplets_root / "triplets")
    assert run.data.tags["dataset_md5"] == metadata["dataset_md5"].value
    assert metadata["mlflow_run"].value.endswith(f"/runs/{run.info.run_id}")
    assert (tmp_path / "checkpoints" / "final" / "cameo_checkpoint.json").is_file()


def test_model_asset_fails_with_the_cause(tmp_path, params_file):
    result = _materialize(tmp_path / "empty-data", params_file)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert "no dataset at" in message and "dvc repro dataset" in message
