"""The tracking server's accounts, for real: `mlflow server --app-name cameo-auth` (MLflow's
basic-auth app with cameo's alias rule) on a free port, the accounts of k8s/mlflow created by
`cameo model accounts`, and each account's requests: nobody gets in without a password; the serving
account reads but cannot write a run, register a version or move `champion`; the training
account writes and registers but cannot move an alias; the promoter can."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from serving.server import free_port, wait_until_answering
from tests.conftest import tracking_store
from training.tracking import REGISTERED_MODEL
from training.tracking_auth import PROMOTERS_ENV, TRACKING_ACCOUNTS, create_accounts

pytestmark = pytest.mark.slow
ADMIN = ("admin", "admin-password-0a1b")
PASSWORDS = {name: f"{name}-password" for name in TRACKING_ACCOUNTS}
MODEL = REGISTERED_MODEL


@contextlib.contextmanager
def account(url: str, username: str, password: str) -> Iterator[MlflowClient]:
    """MLflow's client sending this account's credentials (as the pods' Secrets set them)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", username)
        patch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        yield MlflowClient(url)


def as_admin(url: str, function: Callable, *args: Any) -> None:
    """`function(*args)` with the admin's credentials and `url` as MLflow's tracking URI, which
    this process's MLflow forgets after."""
    with pytest.MonkeyPatch.context() as patch, account(url, *ADMIN):
        patch.setenv("MLFLOW_TRACKING_URI", url)
        function(*args)
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("tracking-auth")
    config = root / "auth.ini"
    config.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{root / 'auth.db'}\nadmin_username = {ADMIN[0]}\n"
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key",
        PROMOTERS_ENV: "cameo-promoter",
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--app-name", "cameo-auth",
        "--backend-store-uri", tracking_store(root),
        "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_answering("mlflow server", f"{url}/health", process, 120, log)
        # As on the cluster: the passwords are files of a mounted Secret.
        (secret := root / "passwords").mkdir()
        for name, password in PASSWORDS.items():
            (secret / name).write_text(password + "\n")
        admin = {"MLFLOW_TRACKING_USERNAME": ADMIN[0], "MLFLOW_TRACKING_PASSWORD": ADMIN[1]}
        created = subprocess.run(
            [str(Path(sys.executable).parent / "cameo"), "model", "accounts",
             "--passwords-dir", str(secret)],
            env={**os.environ, **admin, "MLFLOW_TRACKING_URI": url}, cwd=root,
            capture_output=True, text=True,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        assert "cameo-serving: reads only" in created.stdout
        yield url
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def test_no_password_no_entry(server):
    search = f"{server}/api/2.0/mlflow/experiments/search"
    assert requests.post(search, json={"max_results": 1}, timeout=10).status_code == 401
    wrong = ("cameo-serving", "not-the-password")
    assert requests.post(search, json={"max_results": 1}, auth=wrong).status_code == 401


def test_serving_reads_and_can_change_nothing(server):
    with account(server, "cameo-training", PASSWORDS["cameo-training"]) as training:
        experiment = training.get_experiment_by_name("cameo").experiment_id
        run = training.create_run(experiment)
        training.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    with account(server, "cameo-serving", PASSWORDS["cameo-serving"]) as serving:
        assert serving.get_registered_model(MODEL).name == MODEL
        assert serving.get_run(run.info.run_id).info.run_id == run.info.run_id
        for write in (
            lambda: serving.create_run(experiment),
            lambda: serving.log_metric(run.info.run_id, "train/loss", 1.0),
            lambda: serving.create_model_version(MODEL, f"runs:/{run.info.run_id}/model"),
            lambda: serving.set_registered_model_alias(MODEL, "champion", "1"),
        ):
            with pytest.raises(MlflowException, match="error code 403"):
                write()


def test_training_registers_and_only_the_promoter_moves_champion(server):
    with account(server, "cameo-training", PASSWORDS["cameo-training"]) as training:
        experiment = training.get_experiment_by_name("cameo").experiment_id
        run = training.create_run(experiment)
        training.log_metric(run.info.run_id, "train/loss", 0.5)
        version = training.create_model_version(
            MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id
        ).version
        with pytest.raises(MlflowException, match="'cameo-training' may not move or delete"):
            training.set_registered_model_alias(MODEL, "champion", version)
    with account(server, "cameo-promoter", PASSWORDS["cameo-promoter"]) as promoter:
        promoter.set_registered_model_alias(MODEL, "champion", version)
    with (
        account(server, "cameo-training", PASSWORDS["cameo-training"]) as training,
        pytest.raises(MlflowException, match="error code 403"),  # MLflow's own: not MANAGE
    ):
        training.delete_registered_model_alias(MODEL, "champion")
    with account(server, "cameo-serving", PASSWORDS["cameo-serving"]) as serving:
        assert serving.get_model_version_by_alias(MODEL, "champion").version == version


def test_accounts_are_created_again_with_new_passwords(server):
    """Rotating a password, changing a permission: create_accounts again."""
    rotated = {**PASSWORDS, "cameo-serving": "rotated-password"}
    more = {**TRACKING_ACCOUNTS, "cameo-serving": {"experiment": "EDIT"}}
    as_admin(server, create_accounts, rotated, more)
    search = f"{server}/api/2.0/mlflow/experiments/search"
    old = ("cameo-serving", PASSWORDS["cameo-serving"])
    assert requests.post(search, json={"max_results": 1}, auth=old).status_code == 401
    new = ("cameo-serving", "rotated-password")
    assert requests.post(search, json={"max_results": 1}, auth=new).status_code == 200
    with account(server, *new) as serving:  # its permission changed too
        serving.create_run(serving.get_experiment_by_name("cameo").experiment_id)
