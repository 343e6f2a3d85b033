"""The MLflow UI shows what evaluation logs: a tiny training run scored at each validation step
and evaluated with its ablations, served by the real `mlflow server`, read in headless
Chromium (Debian's `chromium`, driven by Playwright's Python package)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import precompute_features, write_triplets

from serving.server import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
# Closed network: no background requests, no first-run or update checks (they stall the page).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason="needs Debian's chromium (apt-get install chromium; .ci/run installs it)",
    ),
]


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory) -> Iterator[tuple[str, str, str]]:
    """(tracking URI, experiment id, run id) of a 4-step tiny run with validation at steps 2
    and 4, its model logged and evaluated with every ablation."""
    import mlflow
    import torch

    from orchestration.params import load_params
    from serving.registry import log_model
    from training.evaluate import evaluate_logged_model
    from training.loop import train

    root = tmp_path_factory.mktemp("ui")
    previous_uri, previous_cwd = os.environ.get("MLFLOW_TRACKING_URI"), Path.cwd()
    uri = f"sqlite:///{root / 'mlruns.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.chdir(root)
    torch.set_num_threads(1)
    try:
        data = precompute_features(write_triplets(root / "data"))
        values = load_params(REPO / "params.yaml", "tiny")
        params = values.training.updated(
            "training", output_dir=str(root / "out"), max_steps=4, validate_every=2
        )
        result = train(
            params,
            data_root=data,
            lock_file=None,
            show_progress=False,
            priors=values.priors(),
            evaluation=values.evaluation,
        )
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
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, "mlflow server exited"
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def test_the_run_page_lists_the_evaluation_metrics(browser, mlflow_ui, evaluated_run):
    _, experiment_id, run_id = evaluated_run
    page = _open(browser, f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}")
    page.get_by_text("val_loss", exact=True).wait_for()
    for metric in ("eval/pck_body", "eval/full/saturation_ratio", "eval/inpainting/face_found"):
        assert page.get_by_text(metric, exact=True).count() == 1, metric


def test_model_metrics_show_charts_over_steps_and_the_grids(browser, mlflow_ui, evaluated_run):
    _, experiment_id, run_id = evaluated_run
    url = f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics"
    page = _open(browser, url)
    page.get_by_text("eval/full", exact=True).wait_for()
    # Sections render as they scroll into view: scroll through, noting what appeared.
    ablations = ("inpainting", "face", "face_body", "full")
    sections, loaded, step_ranges = set(), set(), set()
    page.mouse.move(500, 500)
    for _ in range(40):
        for ablation in ablations:
            if page.get_by_text(f"evaluation/{ablation}", exact=True).count():
                sections.add(ablation)
        for image in page.locator("img[src*='get-artifact'][src*='evaluation~']").all():
            if image.evaluate("image => image.complete && image.naturalWidth > 0"):
                loaded.add(image.get_attribute("src").split("~")[1])
        for slider in page.get_by_role("slider").all():
            low, high = (slider.get_attribute(f"aria-value{e}") for e in ("min", "max"))
            step_ranges.add((low, high))
        page.mouse.wheel(0, 500)
        page.wait_for_timeout(300)
    # One image section per ablation: the 5-panel grids keyed by triplet; the model's own
    # (validation at steps 2 and 4) has a step slider over both.
    assert sections == set(ablations)
    assert loaded, "no grid image loaded"
    assert ("2", "4") in step_ranges


def test_the_evaluation_table_opens_as_a_table(browser, mlflow_ui, evaluated_run):
    _, experiment_id, run_id = evaluated_run
    page = _open(browser, f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts")
    page.get_by_text("evaluation", exact=True).first.click()
    page.get_by_text("ablations.json", exact=True).click()
    page.get_by_text("View as table").wait_for()
    for header in ("ablation", "samples", "face_similarity", "pck_face", "saturation_ratio"):
        page.get_by_text(header, exact=True).first.wait_for()
    for ablation in ("inpainting", "face_body", "full"):
        assert page.get_by_text(ablation, exact=True).count() >= 1, ablation
