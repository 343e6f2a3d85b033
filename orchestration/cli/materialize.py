"""`cameo materialize`: the training side of the pipeline (features, model, evaluation) as
Dagster runs on the repo's instance, so the UI shows what `dvc repro` and `make demo` did."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestration.cli.options import params_option, profile_option, verbose_option

TRAINING_ASSETS = ("features", "model", "evaluation")


@click.command("materialize")
@click.argument("assets", nargs=-1, required=True, type=click.Choice(TRAINING_ASSETS))
@params_option
@profile_option
@click.option(
    "--data", "data_root", default=None, help="Data root (default: $CAMEO_DATA or ./data)."
)
@verbose_option
def materialize_command(
    assets: tuple[str, ...],
    params_path: str,
    profile: str | None,
    data_root: str | None,
    verbose: bool,
) -> None:
    """Materialise ASSETS of `training_job` with their blocking checks, in one run on the
    persistent Dagster instance (as the UI's "Materialize" does). The model is trained only
    when it is not current (its dataset, params and code changed)."""
    import dagster as dg

    from core.layout import DataLayout
    from orchestration.dataset_definitions import build_resources
    from orchestration.definitions import build_definitions
    from orchestration.runs import materialize

    layout = DataLayout.from_env(data_root)
    defs = build_definitions(build_resources(str(layout.root), params_path, profile or ""))
    log_level = "INFO" if verbose else "CRITICAL"
    tags = {"cameo/data": str(layout.root)}
    outcome = materialize(
        defs, "training_job", list(assets), dg.DagsterInstance.get(), None, log_level, tags
    )
    for name, metadata in outcome.metadata.items():
        click.echo(f"{name}: {describe(name, metadata)}")
    for warning in outcome.warnings:
        click.echo(f"warning: {warning}")
    if not outcome.success:
        sys.exit(f"FAILED {outcome.movie}: {outcome.message}")
    click.echo(f"ok {outcome.movie}: {outcome.message} (make ui to see it)")


def describe(asset: str, metadata: dict) -> str:
    """What one materialisation made, in the terms a user reads first."""
    if asset == "features":
        return f"{metadata['triplets']} triplets in {Path(str(metadata['store']))}"
    registered = metadata.get("registered_model")
    if asset == "model":
        state = "current, not retrained" if metadata.get("reused") else "trained"
        return (
            f"{state}: MLflow run {metadata['mlflow_run_id']}, {metadata['steps']} steps, "
            f"loss {metadata['loss_first']:.4f} -> {metadata['loss_last']:.4f}"
            + (f", registered as {registered}" if registered else "")
        )
    scored = f"{registered} ({metadata['model_uri']})" if registered else metadata["model_uri"]
    return f"{scored} scored\n{metadata['ablations']}"
