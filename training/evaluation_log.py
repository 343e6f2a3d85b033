"""An evaluation into MLflow: its metrics, tables and figures in the active run, and
`evaluate_logged_model`, which scores a logged model and logs into the run that trained it.

Metrics `eval/<metric>` (the model) and `eval/<row>/<metric>` (each calibration and ablation),
those scored only: the artifact `evaluation/not_scored.json` says which are missing and why,
the tag `evaluation.not_scored` sums it up in a line, and the ablation table's `not_scored`
column names them per row. Figures: the model's, one per validation triplet and step, as
the image `grid/<triplet>` (`Panels.card`, legible in the run's card), and every row's full
sheet as the artifact `grids/step-<step>/<triplet>-<row>.png`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.layout import DataLayout
from core.versioning import dvc_md5
from perception.params import FacesParams, PosesParams
from perception.priors import Priors
from training.evaluate import FULL, Evaluation, Evaluator, ValidationSample
from training.params import EvaluationParams, TrainingParams

NOT_SCORED_TAG = "evaluation.not_scored"
NOT_SCORED_FILE = "evaluation/not_scored.json"
TAG_CHARS = 250  # what the run page shows of a tag without cutting it


def not_scored_summary(unscored: dict[str, str]) -> str:
    """One short line for the tag: how many metrics have no value, which, and where the
    reasons are."""
    metrics = sorted({key.rsplit("/", 1)[1] for key in unscored})
    tail = f" (reasons: {NOT_SCORED_FILE})"
    line = f"{len(unscored)} not scored: {', '.join(metrics)}"
    if len(line) + len(tail) > TAG_CHARS:
        line = line[: TAG_CHARS - len(tail) - 1] + "…"
    return line + tail


def log_evaluation(
    evaluation: Evaluation,
    step: int = 0,
    model_id: str | None = None,
    dataset: Any = None,
    cards: bool = True,
) -> None:
    """Into the active MLflow run: the scored metrics at `step` (linked to the logged model and
    the validation dataset where given) and why the others are not (the tag: the latest
    evaluation's); the per-sample table with each output's sheet and the ablation table, both
    appended to across steps and evaluations (`step` column); the notes; each sheet as an
    artifact and, with `cards`, the model's as the image `grid/<triplet>` at `step` (the
    UI's step slider goes through them)."""
    import mlflow

    mlflow.log_metrics(evaluation.metrics(), step=step, model_id=model_id, dataset=dataset)
    unscored = evaluation.unscored()
    mlflow.log_dict(unscored, NOT_SCORED_FILE)  # the latest evaluation's, empty or not
    if unscored:
        mlflow.set_tag(NOT_SCORED_TAG, not_scored_summary(unscored))
    elif NOT_SCORED_TAG in mlflow.get_run(mlflow.active_run().info.run_id).data.tags:
        mlflow.delete_tag(NOT_SCORED_TAG)  # an earlier evaluation's, not this one's
    # `grids` is in the order of the sample rows: one per (row, triplet). The tables start
    # with the columns that say which row is which (the step first: both are appended to).
    sheets = [panels.sheet() for _, _, panels in evaluation.grids]
    samples = evaluation.samples.assign(grid=sheets)
    samples.insert(0, "step", step)
    mlflow.log_table(samples, "evaluation/samples.json")
    summary = evaluation.summary()
    summary["not_scored"] = [
        ", ".join(key.rsplit("/", 1)[1] for key in unscored if key.split("/")[1] == row)
        for row in summary.ablation
    ]
    summary.insert(0, "step", step)
    mlflow.log_table(summary, "evaluation/ablations.json")
    by_source = evaluation.summary(by=("source", "ablation"))
    by_source.insert(0, "step", step)
    mlflow.log_table(by_source, "evaluation/by_source.json")
    mlflow.log_dict(evaluation.notes, "evaluation/notes.json")
    for (row, triplet_id, panels), sheet in zip(evaluation.grids, sheets, strict=True):
        mlflow.log_image(sheet, artifact_file=f"grids/step-{step}/{triplet_id}-{row}.png")
        if cards and row == FULL:
            mlflow.log_image(panels.card(), key=f"grid/{triplet_id}", step=step)


def evaluate_logged_model(
    model_uri: str,
    training: TrainingParams,
    evaluation: EvaluationParams,
    faces: FacesParams,
    poses: PosesParams,
    data_root: str | Path | None = None,
    models_dir: str | Path | None = None,
) -> tuple[Evaluation, str]:
    """Score a logged `cameo-inpaint` model (any MLflow model URI) on the validation split of
    the current triplets, every ablation, and log it into the run that trained it (the model's
    `training_run_id`), linked to the model and the dataset, at the step it was trained to.
    Returns the evaluation and that run's id.

    The split is the model's own: the seed, validation fraction and buckets its run logged.
    The dataset's md5 is tagged, so a score on another dataset version than the one trained on
    shows as such. Its figures are sheets only: the run's `grid/<triplet>` images are
    training's, one per validation step."""
    import mlflow

    from training.data import load_manifest, resolve_buckets, split_by_identity
    from training.tracking import (
        TRAINING_CONFIG_FILE,
        configure_tracking,
        load_pyfunc,
        triplets_dataset,
    )

    configure_tracking()
    info = mlflow.models.get_model_info(model_uri)
    metadata = info.metadata or {}
    client = mlflow.MlflowClient()
    # The run that trained it: a checkpoint logged later (`cameo model log`) names it.
    run = client.get_run(metadata.get("training_run_id") or info.run_id)
    logged = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{TRAINING_CONFIG_FILE}")
    training = training.updated(
        "training", **{key: logged[key] for key in ("seed", "validation_fraction", "buckets")}
    )
    layout = DataLayout.from_env(data_root)
    manifest = load_manifest(layout.triplets_dir)
    _, validation = split_by_identity(
        manifest, training.validation_fraction, training.seed, training.same_person_similarity
    )
    if validation.empty:
        raise ValueError(f"no validation identities in {layout.triplets_dir}: nothing to score")
    buckets = resolve_buckets(training.buckets)
    model = load_pyfunc(model_uri).unwrap_python_model()
    priors = Priors(model.profile, faces=faces, poses=poses, models_dir=models_dir)
    evaluator = Evaluator.build(evaluation, priors)
    samples = [
        ValidationSample.from_row(row, layout.triplets_dir, buckets)
        for row in validation.head(evaluator.params.samples).itertuples(index=False)
    ]
    result = evaluator.evaluate(model.pipeline, samples, seed=training.seed)
    md5 = dvc_md5(layout.triplets_dir)
    step = int(metadata.get("checkpoint_step") or 0)  # the trained step: after its validations
    with mlflow.start_run(run_id=run.info.run_id):
        mlflow.set_tags({"evaluation.dataset_md5": md5, "evaluation.model_uri": model_uri})
        dataset = triplets_dataset(validation, layout.triplets_dir, "triplets-validation", md5)
        log_evaluation(result, step=step, model_id=info.model_id, dataset=dataset, cards=False)
    return result, run.info.run_id
