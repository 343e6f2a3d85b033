"""`cameo studio`: the web page where comic creators paint characters (serving.studio)."""

from __future__ import annotations

from pathlib import Path

import click

from orchestration.cli.options import models_option, params_option
from orchestration.cli.registered_model import checked_model
from orchestration.cli.serve import DEFAULT_URL


@click.command("studio")
@click.option(
    "--endpoint",
    default=None,
    help=f"The scoring server to paint with [default: {DEFAULT_URL}, `make serve`'s].",
)
@click.option(
    "--model",
    "model_uri",
    default=None,
    help="Paint in this process with this model URI instead (e.g. models:/cameo-inpaint@champion).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7860, show_default=True, type=int)
@params_option
@models_option
def studio(
    endpoint: str | None,
    model_uri: str | None,
    host: str,
    port: int,
    params_path: str,
    models_dir: Path,
) -> None:
    """Serve the studio page in the foreground (Ctrl-C stops it): upload a panel, brush where a
    character goes, pick its reference, say what it does, paint; then the next character.
    The model's defaults and ranges come from the endpoint's /version (or the loaded model);
    the reference's face is found, and each character scored, with the face recogniser of
    the model's profile (params file's `faces` section)."""
    import requests

    from orchestration.params import load_params
    from serving.characters import endpoint as endpoint_painter
    from serving.characters import in_process
    from serving.client import InpaintClient, ServingError
    from serving.studio import Studio
    from serving.studio_page import build_page

    if endpoint and model_uri:
        raise click.UsageError("pass --endpoint or --model, not both")
    if model_uri:
        from training.tracking import configure_tracking

        configure_tracking()
        uri = checked_model(model_uri)
        click.echo(f"loading {uri} ...")
        paint, about = in_process(uri)
        where = f"in this process, {uri}"
    else:
        url = endpoint or DEFAULT_URL
        try:
            about = InpaintClient(url).version()
        except (requests.ConnectionError, requests.Timeout):
            raise click.ClickException(
                f"no server answers at {url}: start one (`cameo serve`, `make serve`), or "
                "paint in this process with --model"
            ) from None
        except ServingError as e:
            raise click.ClickException(f"{url}/version: {e}") from None
        paint, where = endpoint_painter(url), url
    version = about["model_version"]
    priors = load_params(params_path, about["profile"]).priors(models_dir)
    page = build_page(Studio(paint, where, version, about["params"], priors))
    click.echo(f"cameo studio at http://{host}:{port} (painting with {version}, {where})")
    page.queue(default_concurrency_limit=1).launch(
        server_name=host, server_port=port, show_error=False, quiet=True
    )
