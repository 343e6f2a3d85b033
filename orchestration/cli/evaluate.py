"""`cameo evaluate`: score a registered model and log the scores into its training run."""

from __future__ import annotations

from pathlib import Path

import click

from orchestration.cli.options import data_option, params_option
from orchestration.cli.registered_model import checked_model
from orchestration.runs import one_line


@click.command("evaluate")
@click.option(
    "--model",
    "model_uri",
    default=None,
    help="Model URI: models:/cameo-inpaint@champion (default), models:/cameo-inpaint/3, "
    "models:/<model id>, runs:/<run id>/model.",
)
@data_option
@params_option
@click.option("--profile", type=click.Choice(["tiny", "full"]), help="Default: $CAMEO_PROFILE.")
def evaluate(model_uri: str | None, data_dir: Path, params_path: str, profile: str | None) -> None:
    """Score a registered model on the validation triplets of DATA, for the model and each
    ablation (identity scales off one by one), and log the metrics, the per-sample and
    ablation tables and the 5-panel grids into the MLflow run that trained it.

    Metrics (params.yaml `evaluation`): identity by dlib's recogniser (and antelopev2 where its
    weights are under $CAMEO_MODELS): face similarity to the reference (sim_ref) and to the
    target frame (sim_gt), the copy-paste score and the face found rate in the mask; PCK of body
    and face keypoints, CLIP-T where a CLIP model is under $CAMEO_MODELS, and the saturation
    ratio of the painted region against the ground truth. The calibration rows, ground_truth
    (the target frame itself) and paste (the reference crop pasted into the mask), give the
    scale the model's rows are read against.
    """
    import mlflow

    from orchestration.params import load_params
    from training.evaluation_log import evaluate_logged_model
    from training.tracking import configure_tracking

    values = load_params(params_path, profile)
    configure_tracking()
    uri = checked_model(model_uri)
    try:
        evaluation, run_id = evaluate_logged_model(
            uri,
            values.training,
            values.evaluation,
            values.faces,
            values.poses,
            data_root=data_dir,
        )
    except (mlflow.MlflowException, FileNotFoundError, ValueError) as e:
        raise click.ClickException(f"cannot evaluate {uri}: {one_line(str(e))}") from None
    table = evaluation.readable_summary().set_index("ablation")
    click.echo(f"{uri}: {len(evaluation.samples) // len(table)} validation triplets")
    # Two tables, so each fits a terminal: identity (per recogniser; each figure with its 95 %
    # bootstrap interval and n), then pose, prompt, colour.
    identity = [c for c in table.columns if c.startswith("face_")]
    for columns in (["samples", *identity], [c for c in table.columns if c not in identity]):
        click.echo(table[columns].to_string(float_format=lambda v: f"{v:.3f}"))
    for name, note in evaluation.notes.items():
        click.echo(f"  {name}: {note}")
    for metric, why in evaluation.unscored().items():
        click.echo(f"  {metric}: not scored, {why}")
    click.echo(
        f"logged into MLflow run {run_id}: evaluation/ablations.json, samples.json; "
        "the sheets under grids/"
    )
