"""`cameo features build`: the precomputed conditioning features of the triplets."""

from __future__ import annotations

import sys

import click

from orchestration.cli.options import params_option, profile_option


@click.group()
def features() -> None:
    """What the frozen encoders make of each triplet, computed once for training."""


@features.command("build")
@params_option
@profile_option
@click.option("--data", "data_root", help="Data root (default: $CAMEO_DATA or ./data).")
@click.option("--models", "models_dir", envvar="CAMEO_MODELS", help="Models directory.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def build(
    params_path: str,
    profile: str | None,
    data_root: str | None,
    models_dir: str | None,
    no_progress: bool,
) -> None:
    """Encode every triplet of data/triplets the feature store lacks (VAE latents, text and
    body tokens, face embedding, pose) into data/features/<encoders>/."""
    from core.params import ParamsError
    from orchestration.params import load_params
    from training.cpu_kernels import pin_cpu_kernels

    try:
        training = load_params(params_path, profile).training
    except ParamsError as error:
        sys.exit(f"error: {error}")
    if training.portable_cpu_kernels:
        pin_cpu_kernels()
    from training.features import precompute

    try:
        store, index = precompute(training, data_root, models_dir, show_progress=not no_progress)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    click.echo(f"features of {len(index['samples'])} triplets in {store}")
