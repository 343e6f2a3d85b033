"""`cameo weights fetch|pack`: the `full` profile's weights and their mirror."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestration.cli.options import models_option, params_option


@click.group()
def weights() -> None:
    """The `full` profile's weights listed in models.lock.yaml: pack a mirror, fetch from one."""


@weights.command("fetch")
@click.option("--mirror", required=True, envvar="CAMEO_WEIGHTS_MIRROR", help="https:// or file://")
@models_option
@params_option
def weights_fetch(mirror: str, models_dir: Path, params_path: str) -> None:
    """Download, check and unpack every entry of models.lock.yaml missing from MODELS."""
    from orchestration.params import load_params
    from serving.weights import WeightsError, fetch

    try:
        fetched = fetch(
            mirror, models_dir, load_params(params_path, "full").priors(), log=click.echo
        )
    except WeightsError as error:
        sys.exit(f"error: {error}")
    click.echo(f"{len(fetched)} fetched into {models_dir}")


@weights.command("pack")
@models_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@params_option
def weights_pack(models_dir: Path, out: Path, params_path: str) -> None:
    """Write a mirror (one <entry>.tar each) from MODELS and record the sha256 of each archive
    in models.lock.yaml."""
    from orchestration.params import load_params
    from serving.weights import WeightsError, pack

    try:
        digests = pack(models_dir, out, load_params(params_path, "full").priors())
    except WeightsError as error:
        sys.exit(f"error: {error}")
    for name, digest in digests.items():
        click.echo(f"{digest}  {out / name}.tar")
