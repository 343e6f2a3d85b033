"""The production storage, for real: a throwaway PostgreSQL server holds Dagster's instance (as
k8s/dagster/values.yaml configures it) and MLflow's tracking and account stores (k8s/mlflow's
server command, `cameo-auth`, with the production Secrets' backends), and the chain runs on
it, each command signed in with its service's account as on the cluster: concurrent dataset
builds, a tiny training run building its features and registering its model (training), the
promotion (promoter), serving and `cameo lineage` (serving)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from core.versioning import dvc_md5
from orchestration.production import PostgresServer, PostgresUnavailable, TrackingServer
from orchestration.production import dagster_home as production_dagster_home
from tests.conftest import PARAMS
from training.tracking_auth import TRACKING_ACCOUNTS

pytestmark = pytest.mark.slow
CAMEO = str(Path(sys.executable).parent / "cameo")


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresUnavailable as e:
        pytest.skip(str(e))
    with server:
        yield server


@pytest.fixture(scope="module")
def stack(postgres: PostgresServer, sample_root: Path, tmp_path_factory) -> Iterator[dict]:
    """Dagster's instance and the MLflow server on `postgres`, two data roots with the sample
    movie and singles, tiny params training 2 steps; the environment the commands get."""
    tmp = tmp_path_factory.mktemp("production")
    # The commands run here; `cameo lineage` reads git where it runs (no dvc.lock committed).
    subprocess.run(["git", "init", "-q", str(tmp)], check=True)
    roots = {}
    for name in ("a", "b"):
        roots[name] = tmp / name
        for folder in ("movies", "singles"):
            shutil.copytree(sample_root / folder, roots[name] / folder)
    values = yaml.safe_load(PARAMS.read_text())
    values["profiles"]["tiny"]["training"].update(max_steps=2, validation_samples=0)
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    instance_env = production_dagster_home(postgres, tmp / "dagster")
    with (
        TrackingServer(postgres, tmp / "artifacts") as tracking,
        pytest.MonkeyPatch.context() as patch,
    ):
        # The instance's password, for this process's reads of it.
        patch.setenv("DAGSTER_PG_PASSWORD", instance_env["DAGSTER_PG_PASSWORD"])
        env = {
            **os.environ,
            **instance_env,
            "MLFLOW_TRACKING_URI": tracking.url,
            "CAMEO_PROFILE": "tiny",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        stack = {"tmp": tmp, "env": env, "params": str(params), **roots}
        # The Secret cameo-mlflow-accounts, mounted as files; the admin creates the accounts.
        (passwords := tmp / "mlflow-accounts").mkdir()
        for name in TRACKING_ACCOUNTS:
            (passwords / name).write_text(f"{name}-password")
        stack["passwords"] = passwords
        cameo(stack, "model", "accounts", "--passwords-dir", str(passwords), as_=tracking.admin)
        env["MLFLOW_TRACKING_USERNAME"] = "cameo-dagster"
        env["MLFLOW_TRACKING_PASSWORD"] = account_password(stack, "cameo-dagster")
        yield stack


def account_password(stack: dict, account: str) -> str:
    return (stack["passwords"] / account).read_text()


def cameo(stack: dict, *args: str, as_: tuple[str, str] | str | None = None) -> str:
    """`cameo *args`, signed in to MLflow as the account `as_` (a service's name, or a user
    name and password; default: Dagster's, as the dataset builds)."""
    env = stack["env"]
    if as_ is not None:
        username, password = (as_, account_password(stack, as_)) if isinstance(as_, str) else as_
        env = {**env, "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}
    done = subprocess.run([CAMEO, *args], cwd=stack["tmp"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"cameo {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def builds(stack: dict) -> dict[str, list[subprocess.CompletedProcess]]:
    """Three `cameo dataset build` at once on one Postgres instance: two of the whole dataset
    on data root a, one of the frames on b."""
    args = ["--params", stack["params"], "--profile", "tiny"]
    commands = [
        ("a", ["--data", str(stack["a"])]),
        ("a", ["--data", str(stack["a"])]),
        ("b", ["--data", str(stack["b"]), "--until", "frames"]),
    ]
    started = [
        (name, subprocess.Popen(
            [CAMEO, "dataset", "build", *options, *args], cwd=stack["tmp"], env=stack["env"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
        for name, options in commands
    ]  # fmt: skip
    done: dict[str, list[subprocess.CompletedProcess]] = {"a": [], "b": []}
    for name, process in started:
        stdout, stderr = process.communicate(timeout=600)
        done[name].append(
            subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
        )
    return done


def test_concurrent_builds_keep_one_build_per_data_dir(builds, stack: dict):
    ok, refused = sorted(builds["a"], key=lambda p: p.returncode)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert refused.returncode == 1
    assert f"{stack['a']} is being built by pid" in refused.stderr
    assert "(or pass --wait)" in refused.stderr
    # Another data dir builds beside it on the same instance.
    (b,) = builds["b"]
    assert b.returncode == 0, b.stdout + b.stderr
    with dg.DagsterInstance.from_config(stack["env"]["DAGSTER_HOME"]) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        jobs = {"a": ["movie_job", "triplets_job"], "b": ["movie_job"]}
        for name, expected in jobs.items():
            runs = instance.get_runs(dg.RunsFilter(tags={"cameo/data": str(stack[name])}))
            # The refused build recorded no run.
            assert sorted(r.job_name for r in runs) == expected
            assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}


def test_the_chain_runs_on_the_production_storage(builds, stack: dict):
    data, params = str(stack["a"]), stack["params"]
    trained = cameo(
        stack, "train", "--params", params, "--data", data, "--unlocked", "--steps", "2",
        "--output-dir", str(stack["tmp"] / "checkpoints"), "--no-progress", as_="cameo-training",
    )  # fmt: skip
    assert "registered 1 of cameo-inpaint" in trained
    cameo(stack, "model", "promote", "latest", as_="cameo-promoter")
    served = cameo(
        stack, "serve-check", "--data", data, "--params", params, "--steps", "2",
        as_="cameo-serving",
    )  # fmt: skip
    assert "answers /ping" in served and (stack["a"] / "serving" / "output.png").is_file()
    lineage = json.loads(
        cameo(stack, "lineage", "models:/cameo-inpaint@champion", "--json", as_="cameo-serving")
    )
    assert lineage["dataset_md5"] == dvc_md5(stack["a"] / "triplets")
    assert lineage["commits"] == []  # trained --unlocked: no commit records this dataset
    with dg.DagsterInstance.from_config(stack["env"]["DAGSTER_HOME"]) as instance:
        [built] = instance.get_runs(dg.RunsFilter(job_name="triplets_job"))
    # The Dagster run found through the Postgres instance is the one that built the dataset.
    assert [run["run_id"] for run in lineage["dagster_runs"]] == [built.run_id]
