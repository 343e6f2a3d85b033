"""The options and parameter types several `cameo` commands share."""

from __future__ import annotations

from pathlib import Path

import click

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAMEO_DATA",
    default="data",
    show_default=True,
    help="Data root (the data contract's layout); $CAMEO_DATA.",
)

params_option = click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False),
    envvar="CAMEO_PARAMS",
    default="params.yaml",
    show_default=True,
    help="Parameters file; $CAMEO_PARAMS.",
)

profile_option = click.option(
    "--profile",
    type=click.Choice(["tiny", "full"]),
    default=None,
    help="Model profile; default: $CAMEO_PROFILE, else params.yaml.",
)

models_option = click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAMEO_MODELS",
    default="models",
    show_default=True,
    help="Models directory; $CAMEO_MODELS.",
)

image_path = click.Path(exists=True, dir_okay=False, path_type=Path)

wait_option = click.option(
    "--wait", is_flag=True, help="Wait for another build of DATA instead of refusing."
)

verbose_option = click.option("-v", "--verbose", is_flag=True, help="Print Dagster's step logs.")
