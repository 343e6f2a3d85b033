"""The MLflow UI shows what evaluation logs: a tiny training run scored at each validation step
and evaluated with its ablations, served by the real `mlflow server`, read in headless
Chromium (Debian's `chromium`, driven by Playwright's Python package)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import precompute_features, write_triplets

from serving.server import free_port, wait_until_answering
from tests.conftest import REPO, SCREENSHOTS, needs_chromium, tracking_store

pytestmark = [
    pytest.mark.slow,
    needs_chromium,
]


RUNS = ("lr-1e-3", "lr-3e-4")  # the two runs compared: learning rates, as `make demo` does


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """(tracking URI, experiment id, run id) of a 4-step tiny run with validation at steps 2
    and 4, its model logged and evaluated with every ablation; beside it, the same run at
    another learning rate (not evaluated), to compare with."""
    import mlflow
    import torch

    from orchestration.params import load_params
    from serving.registry import log_model
    from training.evaluation_log import evaluate_logged_model
    from training.loop import train

    root = tmp_path_factory.mktemp("ui")
    previous_uri, previous_cwd = os.environ.get("MLFLOW_TRACKING_URI"), Path.cwd()
    uri = tracking_store(root)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        data = precompute_features(write_triplets(root / "data"))
        values = load_params(REPO / "params.yaml", "tiny")
        results = []
        for name, learning_rate in zip(RUNS, (1e-3, 3e-4), strict=True):
            params = values.training.updated(
                "training",
                output_dir=str(root / name),
                max_steps=4,
                validate_every=2,
                learning_rate=learning_rate,
            )
            results.append(
                train(
                    params,
                    data_root=data,
                    lock_file=None,
                    run_name=name,
                    show_progress=False,
                    priors=values.priors(),
                    evaluation=values.evaluation,
                )
            )
        result = results[0]
        with mlflow.start_run(run_id=result.run_id):
            info = log_model(result.final_dir, profile="tiny")
        evaluate_logged_model(
            info.model_uri,
            values.training,
            values.evaluation,
            values.faces,
            values.poses,
            data_root=data,
        )
        experiment_id = mlflow.get_run(result.run_id).info.experiment_id
        yield uri, experiment_id, result.run_id
    finally:
        os.chdir(previous_cwd)
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri


@pytest.fixture(scope="module")
def mlflow_ui(evaluated_run) -> Iterator[str]:
    """`mlflow server` on the run's store, on a free port; stopped by its process group."""
    uri = evaluated_run[0]
    port = free_port()
    mlflow = str(Path(sys.executable).parent / "mlflow")
    command = [mlflow, "server", "--backend-store-uri", uri, "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering("mlflow server", f"{url}/health", process, 120)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def _grid_cards(browser, mlflow_ui: str, evaluated_run, monkeypatch):
    """The run's "Model metrics" tab, searched down to its `grid/` image cards."""
    from training.tracking import run_url

    _, experiment_id, run_id = evaluated_run
    monkeypatch.setenv("CAMEO_MLFLOW_UI", mlflow_ui)
    page = _open(browser, run_url(experiment_id, run_id).replace("?", "/model-metrics?"))
    page.get_by_placeholder("Search metric charts").fill("grid/")
    return page


def _wait_until_loaded(page, image) -> None:
    page.wait_for_function(
        "image => image.complete && image.naturalWidth > 0", arg=image.element_handle()
    )


def test_the_experiment_opens_on_its_training_runs(browser, mlflow_ui, evaluated_run, monkeypatch):
    """Tagged as model training; the link cameo prints opens the runs table, in MLflow's
    model-training mode, not the GenAI pages (traces overview, judges, prompts)."""
    import mlflow

    from training.tracking import EXPERIMENT_KIND, experiment_url

    uri, experiment_id, _ = evaluated_run
    experiment = mlflow.MlflowClient(uri).get_experiment(experiment_id)
    assert EXPERIMENT_KIND.items() <= experiment.tags.items()
    monkeypatch.setenv("CAMEO_MLFLOW_UI", mlflow_ui)
    page = _open(browser, experiment_url(experiment_id))
    for name in RUNS:
        page.get_by_text(name, exact=True).first.wait_for()
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url
    for genai in ("Judges", "Prompts & versions", "Usage"):
        assert page.get_by_text(genai, exact=True).count() == 0, genai


def test_two_runs_are_compared_in_the_chart_view(browser, mlflow_ui, evaluated_run, monkeypatch):
    """docs/training.md's way: the runs table's chart view draws both runs in each metric's chart,
    the training curves among them."""
    from training.tracking import experiment_url

    _, experiment_id, _ = evaluated_run
    monkeypatch.setenv("CAMEO_MLFLOW_UI", mlflow_ui)
    page = _open(browser, experiment_url(experiment_id))
    page.get_by_text(RUNS[1], exact=True).first.wait_for()
    # The runs table's view switch: table, chart, artifacts (icons; the input is hidden).
    page.locator("input[name=runs-view-mode][value=CHART]").evaluate("e => e.click()")
    page.wait_for_url("**compareRunsMode=CHART**")
    # Charts render as they scroll into view: the search box brings the loss to the top.
    page.get_by_placeholder("Search metric charts").fill("train/loss")
    for name in RUNS:
        page.get_by_text(f"{name} (train/loss)", exact=True).first.wait_for()
    if SCREENSHOTS:
        page.screenshot(path=Path(SCREENSHOTS) / "mlflow-charts.png")


def test_the_run_page_lists_the_metrics_by_group(browser, mlflow_ui, evaluated_run, monkeypatch):
    from training.tracking import run_url

    _, experiment_id, run_id = evaluated_run
    monkeypatch.setenv("CAMEO_MLFLOW_UI", mlflow_ui)
    page = _open(browser, run_url(experiment_id, run_id))
    page.get_by_text("train/loss", exact=True).first.wait_for()
    for metric in ("valid/loss", "eval/face_found", "eval/full/saturation_ratio"):
        assert page.get_by_text(metric, exact=True).count() == 1, metric
    # Params: one separator, and none of the served model's settings.
    page.get_by_text("training.learning_rate", exact=True).first.wait_for()
    assert page.get_by_text("serving/", exact=False).count() == 0


def test_a_grid_reads_in_the_run_card(browser, mlflow_ui, evaluated_run, monkeypatch):
    """The model's figure of a validation triplet, one per step, in the `grid` section: the
    card opens on step 0 (the untrained model), and its figure fills the card (about 200 px
    square), not a strip a few pixels high, at every step."""
    page = _grid_cards(browser, mlflow_ui, evaluated_run, monkeypatch)
    slider = page.get_by_role("slider").first
    slider.wait_for()
    # The card's step slider spans the validation steps.
    steps = [slider.get_attribute(f"aria-value{end}") for end in ("min", "max")]
    assert steps == ["0", "4"], steps
    box = page.locator("input[type=number]").first
    for step in ("0", "4"):  # the card opens on step 0; another step is typed in its box
        if box.input_value() != step:
            box.fill(step)
            box.press("Tab")
        image = page.locator(f"img[src*='get-artifact'][src*='grid~'][src*='step%2B{step}%2B']")
        image.first.wait_for()
        _wait_until_loaded(page, image.first)
        size = image.first.bounding_box()
        assert size["width"] >= 150 and size["height"] >= 100, (step, size)


def test_the_evaluation_table_opens_as_a_table(browser, mlflow_ui, evaluated_run, monkeypatch):
    from training.tracking import run_url

    _, experiment_id, run_id = evaluated_run
    monkeypatch.setenv("CAMEO_MLFLOW_UI", mlflow_ui)
    page = _open(browser, run_url(experiment_id, run_id).replace("?", "/artifacts?"))
    page.get_by_text("evaluation", exact=True).first.click()
    page.get_by_text("ablations.json", exact=True).click()
    page.get_by_text("View as table").wait_for()
    headers = (
        "ablation",
        "samples",
        "face_similarity",
        "pck_face",
        "saturation_ratio",
        "not_scored",
    )
    for header in headers:
        page.get_by_text(header, exact=True).first.wait_for()
    for ablation in ("inpainting", "face_body", "full"):
        assert page.get_by_text(ablation, exact=True).count() >= 1, ablation


def test_the_grid_picture_is_visible_in_its_card_at_default_settings(
    browser, mlflow_ui, evaluated_run, monkeypatch
):
    """What a user sees, not the image element's box (which keeps its size while the card
    clips it): the element at the picture's centre is the picture itself. The card lists the
    run's params above the picture: the six a run logs leave it in view (eight did not)."""
    page = _grid_cards(browser, mlflow_ui, evaluated_run, monkeypatch)
    image = page.locator("img[src*='get-artifact'][src*='grid~']").first
    image.wait_for()
    _wait_until_loaded(page, image)
    shown = image.evaluate(
        """image => {
            const box = image.getBoundingClientRect();
            const seen = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
            return seen === image || image.contains(seen);
        }"""
    )
    assert shown, "the picture's centre is hidden in its card"
    if SCREENSHOTS:
        page.screenshot(path=Path(SCREENSHOTS) / "mlflow-grid.png")
