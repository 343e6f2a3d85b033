"""What a run looks like in the MLflow UI, without the UI: the experiment's kind, the links
into model-training mode, one param separator, and the grid figure shaped for MLflow's card
(`test_mlflow_ui.py` checks the same in headless Chromium)."""

from __future__ import annotations

import numpy as np
from mlflow.tracking.multimedia import compress_image_size

from training.grid import Panels
from training.tracking import (
    EXPERIMENT,
    EXPERIMENT_KIND,
    configure_tracking,
    experiment_url,
    flatten_params,
    model_version_url,
    run_url,
)


def test_the_experiment_is_tagged_for_model_training_also_when_it_existed(temp_tracking):
    import mlflow

    mlflow.set_tracking_uri(configure_tracking())
    experiment = mlflow.get_experiment_by_name(EXPERIMENT)
    assert EXPERIMENT_KIND.items() <= experiment.tags.items()
    # One made before the tag (an older store) is tagged when next configured.
    client = mlflow.MlflowClient()
    client.delete_experiment_tag(experiment.experiment_id, "mlflow.experimentKind")
    configure_tracking()
    assert EXPERIMENT_KIND.items() <= client.get_experiment(experiment.experiment_id).tags.items()


def test_links_open_the_ui_in_model_training_mode(monkeypatch):
    monkeypatch.setenv("CAMEO_MLFLOW_UI", "http://mlflow:5000")
    assert experiment_url("3") == (
        "http://mlflow:5000/#/experiments/3/runs?workflowType=machine_learning"
    )
    assert run_url("3", "abc") == (
        "http://mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert model_version_url("cameo-inpaint", "2") == (
        "http://mlflow:5000/#/models/cameo-inpaint/versions/2"
    )


def test_links_follow_the_tracking_server_unless_the_ui_is_set(monkeypatch):
    monkeypatch.delenv("CAMEO_MLFLOW_UI", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.studio.example/")
    assert run_url("3", "abc").startswith("https://mlflow.studio.example/#/experiments/3/")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns.db")  # a file: `make mlflow-ui`
    assert run_url("3", "abc").startswith("http://127.0.0.1:5000/#/")
    monkeypatch.setenv("CAMEO_MLFLOW_UI", "http://mlflow:5000")
    assert experiment_url("3").startswith("http://mlflow:5000/#/")


def test_params_are_flattened_with_one_separator():
    nested = {"learning_rate": 1e-5, "cfg_dropout": {"face": 0.05, "all": 0.05}}
    assert flatten_params("training", nested) == {
        "training.learning_rate": "1e-05",
        "training.cfg_dropout.face": "0.05",
        "training.cfg_dropout.all": "0.05",
    }


def test_the_card_figure_reads_when_mlflow_shrinks_it_to_256_pixels():
    """The sheet is the article's single row, a strip once shrunk; the card's rows make it
    near square, for square and wide frames alike, so its 256-px copy fills the card."""
    crop = np.full((80, 40, 3), 200, np.uint8)  # a portrait reference crop
    for height, width in ((64, 64), (64, 96), (576, 1024)):
        frame = np.full((height, width, 3), 128, np.uint8)
        panels = Panels(frame, frame[..., 0], None, crop, frame, "a prompt " * 30)
        sheet, card = panels.sheet(), panels.card()
        assert sheet.width > 3 * sheet.height
        shrunk = compress_image_size(card)  # what the card shows
        assert min(shrunk.size) >= 0.6 * 256, (height, width, card.size)
