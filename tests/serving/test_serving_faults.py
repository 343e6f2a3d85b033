"""Registered versions whose artifacts are gone or incomplete, made for real by removing and
truncating files in the artifact store: `cameo serve` (what it execs, `serving.app`),
`serve-check`, `evaluate` and `inpaint --model` each fail in one line naming the version, the
artifact location and the missing file, without a traceback. And weights registered twice
point to the version that has them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import retrained

from orchestration.cli.main import main
from serving.server import ModelServer, ServerStartError, serve_env
from training.model import ADAPTER_FILES, CONTROLNET_DIR
from training.tracking import REGISTERED_MODEL

CONTROLNET_WEIGHTS = f"{CONTROLNET_DIR}/diffusion_pytorch_model.safetensors"


def _registered_copy(checkpoint: Path) -> tuple[str, Path]:
    """The checkpoint logged and registered as a new version: (version, its artifact folder)."""
    import mlflow

    from serving.artifacts import locate_model
    from serving.registry import log_model

    with mlflow.start_run(run_name="faults"):
        info = log_model(checkpoint, profile="tiny")
    version = str(info.registered_model_version)
    location = locate_model(f"models:/{REGISTERED_MODEL}/{version}").artifact_uri
    return version, Path(location.removeprefix("file://"))


def _fails_in_one_line(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    # A ClickException exits; anything else would be a traceback without CliRunner.
    assert isinstance(result.exception, SystemExit), (args, result.exception)
    return result.output.strip().splitlines()[-1]


def _serve_fails_in_one_line(uri: str) -> str:
    """`python -m serving.app`, the command `cameo serve` execs: it exits before uvicorn."""
    command = [sys.executable, "-m", "serving.app", "--model", uri, "--port", "1"]
    result = subprocess.run(command, capture_output=True, text=True, env=serve_env(), timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    return line


def _every_command_fails(uri: str, data: Path) -> list[str]:
    """The one line each of `cameo serve` (what it execs), `serve-check` and `evaluate` fails
    with."""
    return [
        _serve_fails_in_one_line(uri),
        _fails_in_one_line(["serve-check", "--model", uri, "--data", str(data)]),
        _fails_in_one_line(["evaluate", "--model", uri, "--data", str(data)]),
    ]


@pytest.mark.slow
def test_a_version_whose_artifacts_are_gone(tracking, logged, checkpoint, tmp_path):
    version, folder = _registered_copy(checkpoint)
    shutil.rmtree(folder)
    uri = f"models:/{REGISTERED_MODEL}/{version}"
    for line in _every_command_fails(uri, tmp_path):
        assert f"{REGISTERED_MODEL} version {version}" in line, line
        assert str(folder) in line and "lack MLmodel" in line, line


@pytest.mark.slow
def test_a_version_missing_one_weights_file(tracking, logged, checkpoint, tmp_path):
    version, folder = _registered_copy(checkpoint)
    (folder / "artifacts" / "checkpoint" / ADAPTER_FILES["face"]).unlink()
    uri = f"models:/{REGISTERED_MODEL}/{version}"
    missing = f"artifacts/checkpoint/{ADAPTER_FILES['face']}"
    for line in _every_command_fails(uri, tmp_path):
        assert f"{REGISTERED_MODEL} version {version}" in line, line
        assert str(folder) in line and f"lack {missing}" in line, line


@pytest.mark.slow
def test_a_version_whose_code_file_was_replaced_is_refused_before_it_runs(
    tracking, logged, checkpoint, tmp_path
):
    """Whoever may register a version edits its code file: the server refuses to load it, in
    one line naming both digests, and `cameo model promote` leaves the alias where it was;
    the edited code never runs."""
    import mlflow

    version, folder = _registered_copy(checkpoint)
    ran = tmp_path / "ran"
    code = folder / "logged_model.py"
    code.write_text(f"{code.read_text()}\nopen({str(ran)!r}, 'w').close()\n")
    uri = f"models:/{REGISTERED_MODEL}/{version}"
    line = _serve_fails_in_one_line(uri)
    assert f"{REGISTERED_MODEL} version {version}" in line, line
    assert "is not this installation's logged_model.py" in line and "refusing" in line, line
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version
    line = _fails_in_one_line(["model", "promote", version])
    assert f"{REGISTERED_MODEL} version {version}" in line and "refusing" in line, line
    assert client.get_model_version_by_alias(REGISTERED_MODEL, "champion").version == champion
    assert not ran.exists()


def test_a_version_bringing_code_paths_is_refused(tracking, logged, checkpoint):
    """MLflow puts a version's `code_paths` first on sys.path at load (they could shadow any
    module); cameo logs none, so a version naming some is refused."""
    import yaml

    from serving.artifacts import ModelArtifactsError, check_model_artifacts

    version, folder = _registered_copy(checkpoint)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["code"] = "code"
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(ModelArtifactsError, match="refusing to run code it brings") as error:
        check_model_artifacts(f"models:/{REGISTERED_MODEL}/{version}")
    assert "\n" not in str(error.value)


def test_a_truncated_weights_file_is_named_with_its_sizes(tracking, logged, checkpoint):
    from serving.artifacts import ModelArtifactsError, check_model_artifacts

    version, folder = _registered_copy(checkpoint)
    weights = folder / "artifacts" / "checkpoint" / CONTROLNET_WEIGHTS
    size = weights.stat().st_size
    with weights.open("r+b") as file:
        file.truncate(size // 2)
    with pytest.raises(ModelArtifactsError) as error:
        check_model_artifacts(f"models:/{REGISTERED_MODEL}/{version}")
    message = str(error.value)
    assert "\n" not in message
    assert f"{CONTROLNET_WEIGHTS} has {size // 2} bytes, {size} were logged" in message


def test_an_unknown_version_is_one_line(tracking, logged, tmp_path):
    line = _fails_in_one_line(["serve-check", "--model", f"models:/{REGISTERED_MODEL}/999"])
    assert line.startswith(f"Error: models:/{REGISTERED_MODEL}/999:")


def test_a_server_that_did_not_start_names_its_log_and_keeps_it(tracking, logged):
    """(A server that answered removes its temporary log when it stops: `guarded_server`.)"""
    server = ModelServer(f"models:/{REGISTERED_MODEL}/999", env={"OMP_NUM_THREADS": "1"})
    with pytest.raises(ServerStartError) as failed:
        server.start(wait_s=120)
    assert "the model server exited with 1" in str(failed.value)
    assert f"(log: {server.log_path})" in str(failed.value)
    assert f"models:/{REGISTERED_MODEL}/999" in server.log_path.read_text()
    server.log_path.unlink()


def test_weights_registered_before_point_to_their_version(tracking, logged, checkpoint, tmp_path):
    import mlflow

    from serving.registry import registered_weights, weights_sha256

    client = mlflow.MlflowClient()
    count = len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'"))
    # The same weights under another folder, with another step: still the same weights.
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    first = registered_weights(weights_sha256(copy)).version
    output = CliRunner().invoke(main, ["model", "log", "--checkpoint", str(copy)]).output
    assert f"are {REGISTERED_MODEL} version {first} already" in output, output
    assert "nothing logged" in output
    assert len(client.search_model_versions(f"name = '{REGISTERED_MODEL}'")) == count
    # Changed weights are new.
    changed = retrained(checkpoint, tmp_path / "retrained", shift=0.5)
    assert weights_sha256(changed) != weights_sha256(checkpoint)
    assert registered_weights(weights_sha256(changed)) is None


def test_a_training_run_that_registered_nothing_is_evaluated_by_its_registered_weights(
    tracking, logged, checkpoint, tmp_path
):
    """Training again to the same weights logs no model (they are registered already): the
    `evaluation` asset then scores the version holding them; with no such version it says
    what to do."""
    import dagster as dg
    import mlflow

    from orchestration.evaluation_assets import logged_model_uri

    with mlflow.start_run(run_name="same weights again") as run:
        pass
    experiment = run.info.experiment_id
    version = logged.registered_model_version
    uri = logged_model_uri(run.info.run_id, experiment, checkpoint)
    assert uri == f"models:/{REGISTERED_MODEL}/{version}"
    assert logged_model_uri(logged.run_id, experiment, checkpoint) == logged.model_uri
    changed = retrained(checkpoint, tmp_path / "retrained", shift=0.5)
    with pytest.raises(dg.Failure, match="logged no model: train without --no-register"):
        logged_model_uri(run.info.run_id, experiment, changed)
