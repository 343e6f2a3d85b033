"""The `--model` of the commands that load a registered model (serve, inpaint, serve-check,
evaluate): the champion by default, its artifacts checked before anything loads it."""

from __future__ import annotations

import click


def champion_uri() -> str:
    """The default of --model: the champion of the registered model."""
    from training.tracking import CHAMPION, REGISTERED_MODEL

    return f"models:/{REGISTERED_MODEL}@{CHAMPION}"


def checked_model(model_uri: str | None) -> str:
    """--model (default: the champion), its artifacts checked first, so that a version whose
    files are gone or partial fails in one line (version, artifact location, missing file)."""
    from serving.artifacts import ModelArtifactsError, check_model_artifacts

    uri = model_uri or champion_uri()
    try:
        check_model_artifacts(uri)
    except ModelArtifactsError as error:
        raise click.ClickException(str(error)) from None
    return uri
