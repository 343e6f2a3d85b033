"""The persistent instance as a user sees it: `dagster asset materialize` and the web UI."""

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from orchestration.dataset_definitions import STAGE_NAMES
from orchestration.synthetic_assets import SYNTHETIC_ASSETS
from serving.server import free_port, wait_until_answering
from tests.conftest import REPO, SCREENSHOTS, needs_chromium, tracking_store

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def instance_env(sample_root: Path, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "CAMEO_DATA": str(sample_root)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("movies", ["sample"])
    return env


def test_one_partition_rematerialises_from_the_dagster_cli(instance_env):
    subprocess.run(
        [
            BIN / "dagster",
            "asset",
            "materialize",
            "-m",
            "orchestration.definitions",
            "--select",
            "frames",
            "--partition",
            "sample",
        ],
        cwd=REPO,
        env=instance_env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    with dg.DagsterInstance.from_config(instance_env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("frames"))
    assert event is not None and event.asset_materialization.partition == "sample"


@pytest.fixture(scope="module")
def trained(instance_env, tmp_path_factory) -> dict:
    """`cameo materialize features model evaluation` on this instance, as `make demo` runs the
    training side (12 tiny steps on synthetic triplets, MLflow in a temp store: the two
    buckets alternate, so fewer steps compare one bucket's loss with the other's in the
    loss check): its output, data root, params file and tracking URI."""
    import yaml

    from tests.triplets import write_triplets

    tmp = tmp_path_factory.mktemp("trained")
    data = write_triplets(tmp / "data")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"].update(
        max_steps=12, output_dir=str(tmp / "checkpoints"), validation_samples=0
    )
    values["profiles"]["tiny"]["evaluation"]["samples"] = 1
    params = tmp / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    tracking_uri = tracking_store(tmp)
    env = {**instance_env, "MLFLOW_TRACKING_URI": tracking_uri}
    command = [BIN / "cameo", "materialize", "--params", str(params), "--data", str(data)]
    done = subprocess.run(
        [*command, "features", "model", "evaluation"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return {
        "stdout": done.stdout, "data": data, "params": params, "tracking_uri": tracking_uri,
        "checkpoints": tmp / "checkpoints",
    }  # fmt: skip


def test_training_materialises_in_dagster_and_a_current_model_is_not_retrained(
    instance_env, trained
):
    """The features, model and evaluation assets pass their checks and record the training's
    MLflow run; materialised again with nothing changed, the model is current: the same run,
    no training."""
    from mlflow.tracking import MlflowClient

    from core.versioning import dvc_md5
    from orchestration.cli.materialize import describe
    from orchestration.dataset_definitions import build_resources
    from orchestration.definitions import build_definitions
    from orchestration.evaluation_assets import IDENTITY_CHECK
    from orchestration.runs import materialize
    from orchestration.training_assets import FEATURES_CHECK, LOSS_CHECK

    out = trained["stdout"]
    assert "model: trained" in out and ", registered as cameo-inpaint/1\n" in out
    assert "evaluation: cameo-inpaint/1 (models:/m-" in out
    with dg.DagsterInstance.from_config(instance_env["DAGSTER_HOME"]) as instance:
        checks = {
            name: instance.get_latest_asset_check_evaluation_record(
                dg.AssetCheckKey(dg.AssetKey(asset), name)
            ).evaluation
            for asset, name in (
                ("features", FEATURES_CHECK), ("model", LOSS_CHECK), ("evaluation", IDENTITY_CHECK)
            )
        }  # fmt: skip
        events = {
            name: instance.get_latest_materialization_event(
                dg.AssetKey(name)
            ).asset_materialization.metadata
            for name in ("features", "model", "evaluation")
        }
    assert checks[FEATURES_CHECK].passed, checks[FEATURES_CHECK].description
    assert checks[LOSS_CHECK].passed, checks[LOSS_CHECK].description
    # The tiny profile sets no face-similarity threshold: a warning, not a green pass.
    face = checks[IDENTITY_CHECK]
    assert not face.passed and face.severity == dg.AssetCheckSeverity.WARN
    assert face.description.startswith("not checked") and "warning: check evaluation." in out
    assert events["features"]["triplets"].value == 6
    metadata, scored = events["model"], events["evaluation"]
    assert scored["mlflow_run_id"].value == metadata["mlflow_run_id"].value
    assert "| full " in scored["ablations"].value and "| ground_truth " in scored["ablations"].value
    # The calibrations' identity is recorded beside the model's, or why it could not be (no
    # NaN: here the model paints noise, and a triplet's frames may show no face dlib finds).
    for row_metric in ("ground_truth/face_similarity", "paste/face_copy_paste"):
        assert (row_metric in scored) != (f"not_scored_eval/{row_metric}" in scored), row_metric
    assert scored["model_uri"].value.startswith("models:/m-")
    # The registered version (not only the logged model's id), with its page, on both.
    for recorded in (metadata, scored):
        assert recorded["registered_model"].value == "cameo-inpaint/1"
        page = recorded["registered_model_page"].value
        assert page.endswith("/#/models/cameo-inpaint/versions/1")
    run = MlflowClient(tracking_uri=trained["tracking_uri"]).get_run(
        metadata["mlflow_run_id"].value
    )
    assert run.info.status == "FINISHED"
    assert metadata["dataset_md5"].value == dvc_md5(trained["data"] / "triplets")
    assert run.data.tags["dataset_md5"] == metadata["dataset_md5"].value
    assert f"/runs/{run.info.run_id}?workflowType=machine_learning" in metadata["mlflow_run"].value
    assert (trained["checkpoints"] / "final" / "cameo_checkpoint.json").is_file()
    # DVC's metrics of the `evaluate` stage: the full model's figures the asset recorded.
    figures = json.loads((trained["checkpoints"] / "evaluation.json").read_text())
    assert (
        figures
        and figures.items()
        <= {
            key: round(float(value.value), 4) for key, value in scored.items() if key in figures
        }.items()
    )

    with (
        pytest.MonkeyPatch.context() as patch,
        dg.DagsterInstance.from_config(instance_env["DAGSTER_HOME"]) as instance,
    ):
        patch.setenv("MLFLOW_TRACKING_URI", trained["tracking_uri"])
        resources = build_resources(str(trained["data"]), str(trained["params"]), "tiny")
        # As `cameo materialize model` runs it.
        again = materialize(build_definitions(resources), "training_job", ["model"], instance)
    assert again.success, again.message
    reused = again.metadata["model"]
    assert reused["reused"] and reused["mlflow_run_id"] == metadata["mlflow_run_id"].value
    assert describe("model", reused).startswith("current, not retrained: MLflow run")

    # The runs list tells the runs apart by their assets; the training's log is its lines,
    # without progress bars or empty entries.
    with dg.DagsterInstance.from_config(instance_env["DAGSTER_HOME"]) as instance:
        by_assets = {
            run.tags["cameo/assets"]: run
            for run in instance.get_runs(dg.RunsFilter(job_name="training_job"))
        }
        assert set(by_assets) == {"features,model,evaluation", "model"}
        logs = instance.all_logs(by_assets["features,model,evaluation"].run_id)
    lines = [entry.user_message for entry in logs if entry.dagster_event is None]
    assert any(line.startswith("trained 12 steps on dataset") for line in lines), lines
    assert all(line.strip() and "Downloading artifacts" not in line for line in lines)


@pytest.fixture(scope="module")
def webserver(instance_env, trained) -> Iterator[str]:
    """Dagster's webserver on the instance `trained` materialised; its URL."""
    port = free_port()
    server = subprocess.Popen(
        [
            BIN / "dagster-webserver",
            "-m",
            "orchestration.definitions",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=instance_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering("dagster-webserver", f"{url}/server_info", server, 120)
        yield url
    finally:
        server.kill()  # the webserver ignores SIGTERM
        server.wait(timeout=30)


def test_ui_shows_assets_partitions_and_blocking_checks(webserver):
    query = (
        "{ assetNodes { assetKey { path } partitionKeys "
        "assetMaterializations(limit: 1) { runId "
        "metadataEntries { label ... on TextMetadataEntry { text } } } "
        "assetChecksOrError { ... on AssetChecks { checks { name blocking "
        "executionForLatestMaterialization { status evaluation { severity } } } } } } }"
    )
    request = urllib.request.Request(
        f"{webserver}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"content-type": "application/json"},
    )
    nodes = json.load(urllib.request.urlopen(request, timeout=30))["data"]["assetNodes"]
    by_name = {n["assetKey"]["path"][0]: n for n in nodes}
    synthetic = {asset.key.to_user_string() for asset in SYNTHETIC_ASSETS}
    assert set(by_name) == {*STAGE_NAMES, *synthetic, "features", "model", "evaluation"}
    # The synthetic group: off in the demo, so no character partition; its in-batch check
    # warns, never blocks (a dropped batch is data, not a failure).
    synthetic_nodes = [by_name.pop(name) for name in sorted(synthetic)]
    assert [node["partitionKeys"] for node in synthetic_nodes] == [[], [], []]
    assert [
        [(c["name"], c["blocking"]) for c in node["assetChecksOrError"]["checks"]]
        for node in synthetic_nodes
    ] == [[], [], [("one_person_in_the_batch", False)]]
    features = by_name.pop("features")
    model, evaluation = by_name.pop("model"), by_name.pop("evaluation")
    assert model["partitionKeys"] == evaluation["partitionKeys"] == features["partitionKeys"] == []
    checks = {
        name: [(c["name"], c["blocking"]) for c in node["assetChecksOrError"]["checks"]]
        for name, node in (("features", features), ("model", model), ("evaluation", evaluation))
    }
    assert checks == {
        "features": [("features_cover_the_dataset", True)],
        "model": [("loss_decreases", True)],
        "evaluation": [("identity_kept_without_copying", True)],
    }
    # The check the tiny profile switches off shows as a warning (yellow), not as passed.
    (face,) = evaluation["assetChecksOrError"]["checks"]
    latest = face["executionForLatestMaterialization"]
    assert latest["status"] == "FAILED" and latest["evaluation"]["severity"] == "WARN"
    # What `cameo materialize` did shows in the UI: the training side is materialised, the
    # model and its evaluation naming the registered version.
    for node in (features, model, evaluation):
        assert len(node["assetMaterializations"]) == 1, node
    for node in (model, evaluation):
        (materialization,) = node["assetMaterializations"]
        texts = {e["label"]: e.get("text") for e in materialization["metadataEntries"]}
        assert texts["registered_model"] == "cameo-inpaint/1", texts
    for name, node in by_name.items():
        # Every stage is per movie but the dataset, which gathers all of them.
        assert node["partitionKeys"] == ([] if name == "triplets" else ["sample"])
        assert [(c["name"], c["blocking"]) for c in node["assetChecksOrError"]["checks"]] == [
            (f"{name}_expectations", True)
        ]


def test_the_project_config_finds_the_code_location(instance_env):
    # `dg dev` (make ui) and `dg check defs` with no -m: [tool.dg] names the code location
    # [tool.dagster] also names for `dagster` commands; the venv is the project's.
    done = subprocess.run(
        [BIN / "dg", "check", "defs"],
        cwd=REPO,
        env={**instance_env, "VIRTUAL_ENV": str(BIN.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout + done.stderr
    assert "All definitions loaded successfully" in said
    assert "does not match" not in said  # dg's warning of another venv than the project's


def test_the_activated_venv_uses_the_repos_instance():
    activate = Path(sys.prefix) / "bin" / "activate"
    if Path(sys.prefix).parent != REPO or "DAGSTER_HOME" not in activate.read_text():
        pytest.skip("not the venv `make` builds in this repo")
    environ = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    shell = subprocess.run(
        ["bash", "-c", f'source "{activate}" && echo "$DAGSTER_HOME"'],
        env=environ,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.strip() == str(REPO / ".dagster")


@needs_chromium
def test_a_check_that_judged_nothing_is_not_shown_as_passed_in_the_page(webserver, browser):
    """In headless Chromium, the `evaluation` asset's checks tab, as a user opens it: the
    identity gate the tiny profile switches off is not shown as passed, and says why."""
    from orchestration.evaluation_assets import IDENTITY_CHECK

    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(f"{webserver}/assets/evaluation?view=checks")
    page.get_by_text(IDENTITY_CHECK).first.wait_for(timeout=60_000)
    skip = page.get_by_role("button", name="Skip")  # Dagster's community dialog, first visit
    if skip.count():
        skip.first.click()
    page.get_by_text("not checked: evaluation.min_face_similarity is null").first.wait_for()
    shown = page.inner_text("body")
    # Dagster labels a check failed at WARN severity "Failed" in its yellow tag (red at ERROR).
    assert "Failed" in shown and "Passed" not in shown and "Not evaluated" not in shown, shown
    if SCREENSHOTS:
        page.screenshot(path=Path(SCREENSHOTS) / "dagster-evaluation-check.png")
