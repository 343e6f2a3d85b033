"""`cameo lineage`: two training runs on two dataset versions of a real git + DVC repo each
trace back to their own md5, commit and Dagster run, and `--checkout` restores each byte for
byte."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import precompute_features, write_triplets

from core.versioning import dvc_md5
from orchestration.cli.main import main as cameo
from orchestration.environment import DAGSTER_YAML
from orchestration.lineage import LineageError, checkout, trace
from tests.conftest import tracking_store
from training.tracking import REGISTERED_MODEL

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each test reads the module's two real training runs

# The repo's dataset stage: a Dagster run materialises `triplets` (a copy of one prepared
# version) and records its DVC md5 in the metadata, as assets.triplets does.
BUILD_SCRIPT = """
import shutil
import sys
from pathlib import Path

import dagster as dg

from core.versioning import dvc_md5


@dg.asset(name="triplets")
def triplets() -> dg.MaterializeResult:
    target = Path("data/triplets")
    shutil.copytree(Path("sources") / sys.argv[1] / "triplets", target)
    return dg.MaterializeResult(metadata={"dvc_md5": dvc_md5(target)})


print("dagster run", dg.materialize([triplets], instance=dg.DagsterInstance.get()).run_id)
"""


def run(command: list[str], cwd: Path) -> str:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def git(repo: Path, *args: str) -> str:
    settings = ["user.name=cameo", "user.email=cameo@example.com", "commit.gpgsign=false"]
    options = [part for setting in settings for part in ("-c", setting)]
    return run(["git", *options, *args], repo).strip()


def dvc(repo: Path, *args: str) -> str:
    return run([sys.executable, "-m", "dvc", *args], repo)


def build_and_train(repo: Path, version: str, out: Path) -> dict[str, str]:
    """Select a dataset version, `dvc repro`, commit, push, train two steps (the model is
    registered at the end, as `cameo train` does)."""
    from orchestration.cli.train import train_command

    (repo / "params.yaml").write_text(yaml.safe_dump({"dataset": version}))
    dagster_run = re.search(r"dagster run (\S+)", dvc(repo, "repro")).group(1)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"dataset {version}")
    dvc(repo, "push", "-q")
    precompute_features(repo / "data")  # the features stage (not a stage of this repo)
    params = ["--params", str(REPO / "params.yaml"), "--profile", "tiny", "--steps", "2"]
    options = [*params, "--data", "data", "--output-dir", str(out), "--no-progress"]
    result = train_command.main(options, standalone_mode=False)
    return {
        "run_id": result.run_id,
        "md5": result.dataset_md5,
        "commit": git(repo, "rev-parse", "HEAD"),
        "dagster_run": dagster_run,
        "source": str(repo / "sources" / version / "triplets"),
    }


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> dict:
    """A git + DVC repo whose dataset stage built version `a`, then `b`; one training run
    (registered as versions 1 and 2 of cameo-inpaint, 2 the champion) on each."""
    from serving.registry import promote

    tmp = tmp_path_factory.mktemp("lineage")
    repo, dagster_home = tmp / "repo", tmp / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp))
        patch.setenv("DAGSTER_HOME", str(dagster_home))
        patch.setenv("PYTHONPATH", str(REPO))  # the build script imports assets
        for version, seed in (("a", 1), ("b", 2)):
            write_triplets(repo / "sources" / version, identities=5, seed=seed)
        (repo / "build_dataset.py").write_text(BUILD_SCRIPT)
        stage = {
            "cmd": f"{sys.executable} build_dataset.py ${{dataset}}",
            "deps": ["sources", "build_dataset.py"],
            "params": ["dataset"],
            "outs": ["data/triplets"],
        }
        (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"dataset": stage}}))
        (repo / ".gitignore").write_text("/.lineage/\n/data/features/\n")
        git(repo, "init", "-q")
        dvc(repo, "init", "-q")
        dvc(repo, "remote", "add", "-d", "storage", str(tmp / "remote"))
        patch.chdir(repo)  # training reads dvc.lock and tags HEAD from here
        runs = {v: build_and_train(repo, v, tmp / f"out-{v}") for v in ("a", "b")}
        promote("2")
        yield {"repo": repo, "tmp": tmp, **runs}


def test_each_run_traces_to_its_own_dataset(history):
    for version in ("a", "b"):
        expected = history[version]
        lineage = trace(expected["run_id"])
        assert lineage.model is None
        assert lineage.dataset_md5 == expected["md5"] == dvc_md5(Path(expected["source"]))
        assert lineage.dataset_locked is True
        assert [c.sha for c in lineage.commits] == [expected["commit"]]
        assert lineage.commits[0].path == "data/triplets"
        assert lineage.commits[0].subject == f"dataset {version}"
        assert lineage.code_commit == expected["commit"]
        assert lineage.experiment == "cameo" and lineage.run_status == "FINISHED"
        assert lineage.params["training.max_steps"] == "2"
        assert [r.run_id for r in lineage.dagster_runs] == [expected["dagster_run"]]
    assert history["a"]["md5"] != history["b"]["md5"]


def test_the_digest_is_the_one_the_run_logged_as_its_dataset_input(history):
    import mlflow

    run = mlflow.MlflowClient().get_run(history["a"]["run_id"])
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert digests == {"triplets": history["a"]["md5"], "triplets-validation": history["a"]["md5"]}


def test_model_uris_resolve_to_the_run_that_trained_the_version(history):
    first, second = history["a"]["run_id"], history["b"]["run_id"]
    for uri, run_id, version, aliases in (
        (f"models:/{REGISTERED_MODEL}/1", first, "1", ()),
        ("1", first, "1", ()),
        ("2", second, "2", ("champion",)),
        (f"models:/{REGISTERED_MODEL}@champion", second, "2", ("champion",)),
    ):
        lineage = trace(uri)
        assert (lineage.run_id, lineage.model.version, lineage.model.aliases) == (
            run_id,
            version,
            aliases,
        ), uri
        assert lineage.model.name == REGISTERED_MODEL
    assert trace(f"runs:/{first}/model").dataset_md5 == history["a"]["md5"]


def test_a_checkpoint_logged_apart_traces_to_the_run_that_trained_it(history):
    """`cameo model log` of checkpoints/final/ (whose files name no run), whose weights
    training registered already, names that version instead of registering a copy: the chain
    from it is the run that trained them. (`run.json` naming the run of a final/ logged as a
    new version: tests/serving/test_serving_model.py.)"""
    final = history["tmp"] / "out-a" / "final"
    args = ["--checkpoint", str(final), "--params", str(REPO / "params.yaml"), "--profile", "tiny"]
    result = CliRunner().invoke(cameo, ["model", "log", *args])
    assert result.exit_code == 0, result.output
    version = re.search(rf"are {REGISTERED_MODEL} version (\d+) already", result.output).group(1)
    lineage = trace(version)
    assert lineage.run_id == history["a"]["run_id"]
    assert (lineage.dataset_md5, lineage.dataset_source) == (history["a"]["md5"], "run")
    assert [c.sha for c in lineage.commits] == [history["a"]["commit"]]


def test_cli_prints_the_chain_one_line_each_and_json(history):
    expected = history["a"]
    result = CliRunner().invoke(cameo, ["lineage", "1"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == [
        "model",
        "run",
        "dataset",
        "git",
        "params",
        "dagster",
    ]
    assert lines[0] == f"model    {REGISTERED_MODEL} version 1"
    assert expected["run_id"] in lines[1]
    assert lines[2] == f"dataset  {expected['md5']}, locked in dvc.lock"
    assert lines[3].startswith(f"git      {expected['commit'][:12]} ")
    assert "training.max_steps=2" in lines[4]
    assert expected["dagster_run"] in lines[5]

    result = CliRunner().invoke(cameo, ["lineage", expected["run_id"], "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(trace(expected["run_id"]).to_json())
    assert json.loads(result.stdout)["commits"][0]["sha"] == expected["commit"]


def _assert_same_files(restored: Path, source: Path) -> None:
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    assert sorted(p.relative_to(restored) for p in restored.rglob("*") if p.is_file()) == files
    for name in files:
        assert (restored / name).read_bytes() == (source / name).read_bytes(), name


def test_checkout_restores_each_dataset_byte_for_byte(history):
    repo = history["repo"]
    for version in ("a", "b"):
        expected = history[version]
        as_json = ["--json"] if version == "b" else []  # stdout stays one JSON document
        result = CliRunner().invoke(cameo, ["lineage", expected["run_id"], "--checkout", *as_json])
        assert result.exit_code == 0, result.output
        restored = repo / ".lineage" / expected["md5"][:12] / "data" / "triplets"
        assert f"restored {expected['md5']} at {restored}" in result.output
        if as_json:
            assert json.loads(result.stdout)["dataset_md5"] == expected["md5"]
        _assert_same_files(restored, Path(expected["source"]))
        assert dvc_md5(restored) == expected["md5"]
        assert git(restored.parents[1], "rev-parse", "HEAD") == expected["commit"]
    # Again: the restored worktree is found as it is; the user's workspace was never touched.
    assert checkout(trace(history["a"]["run_id"])).dataset == (
        repo / ".lineage" / history["a"]["md5"][:12] / "data" / "triplets"
    )
    assert git(repo, "status", "--porcelain") == ""
    assert dvc_md5(repo / "data" / "triplets") == history["b"]["md5"]


def test_checkout_pulls_from_the_remote_and_names_what_is_missing(history):
    repo, tmp = history["repo"], history["tmp"]
    lineage = trace(history["a"]["run_id"])
    # An empty cache: the data comes from the remote.
    dvc(repo, "cache", "dir", "--local", str(tmp / "empty-cache"))
    try:
        restored = checkout(lineage, into=tmp / "pulled")
        _assert_same_files(restored.dataset, Path(history["a"]["source"]))
        # Neither cache nor remote has it: one line, and no half-made worktree left.
        dvc(repo, "cache", "dir", "--local", str(tmp / "another-empty-cache"))
        dvc(repo, "remote", "modify", "--local", "storage", "url", str(tmp / "empty-remote"))
        with pytest.raises(LineageError, match=r"neither in the DVC cache .* nor on remote"):
            checkout(lineage, into=tmp / "missing")
        assert not (tmp / "missing").exists()
        assert str(tmp / "missing") not in git(repo, "worktree", "list")
    finally:
        (repo / ".dvc" / "config.local").unlink()


def test_errors_are_one_line_and_say_what_to_do(history, tmp_path):
    import mlflow

    with mlflow.start_run() as bare:
        pass
    with mlflow.start_run() as unlocked:
        mlflow.set_tags({"dataset_md5": "0" * 32 + ".dir", "dataset_locked": "false"})
    for args, message in (
        (["nope"], "no MLflow run nope"),
        (["7"], "7 names no registered model version"),
        ([f"models:/{REGISTERED_MODEL}@nobody"], "names no registered model version"),
        ([f"models:/{REGISTERED_MODEL}"], "expected models:/NAME@ALIAS or models:/NAME/VERSION"),
        ([bare.info.run_id], "has no dataset_md5 tag"),
        ([unlocked.info.run_id, "--checkout"], "trained with --unlocked"),
    ):
        result = CliRunner().invoke(cameo, ["lineage", *args])
        assert result.exit_code == 1, result.output
        error = result.output.splitlines()[-1]
        assert error.startswith("Error: ") and message in error, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
    lineage = trace(unlocked.info.run_id)
    assert lineage.commits == () and "--unlocked" in lineage.lines()[3]
    with pytest.raises(LineageError, match="not in a git repository"):
        trace(history["a"]["run_id"], repo=tmp_path)
    assert asdict(lineage)["dataset_locked"] is False
