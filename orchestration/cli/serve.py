"""`cameo serve|inpaint|serve-check`: the registered model's HTTP endpoint and its client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from orchestration.cli.options import (
    data_option,
    image_path,
    models_option,
    params_option,
    profile_option,
)
from orchestration.cli.registered_model import champion_uri, checked_model

if TYPE_CHECKING:
    from serving.params import ServingParams

DEFAULT_URL = "http://127.0.0.1:5000"


def serving_params(params_path: str, profile: str | None = None) -> ServingParams:
    """The `serving` section of the params file."""
    from orchestration.params import load_params

    return load_params(params_path, profile).serving


@click.command("serve")
@click.option("--model", "model_uri", default=None, help="Model URI; default the champion.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Default: serving.workers.")
@click.option("--timeout", default=None, type=int, help="Seconds; default: serving.timeout_s.")
@click.option(
    "--max-waiting",
    default=None,
    type=int,
    help="Requests each worker holds waiting (more get 503); default: serving.max_waiting.",
)
@click.option(
    "--max-request-mb",
    default=None,
    type=int,
    help="Larger bodies get 413 before they are read; default: serving.max_request_mb.",
)
@params_option
def serve(
    model_uri: str | None,
    host: str,
    port: int,
    workers: int | None,
    timeout: int | None,
    max_waiting: int | None,
    max_request_mb: int | None,
    params_path: str,
) -> None:
    """Serve the model over HTTP (MLflow's scoring protocol; /version names the model version),
    in the foreground; Ctrl-C stops it. With $CAMEO_SERVING_TOKEN set, clients must send it
    as `Authorization: Bearer <token>` (`cameo inpaint` and `serve-check` do)."""
    from serving.server import serve_command, serve_env
    from training.tracking import configure_tracking

    configure_tracking()
    given = {
        "timeout_s": timeout,
        "workers": workers,
        "max_waiting": max_waiting,
        "max_request_mb": max_request_mb,
    }
    config = serving_params(params_path).updated(
        "serving", **{name: value for name, value in given.items() if value is not None}
    )
    command = serve_command(model_uri or champion_uri(), host, port, config)
    os.execve(command[0], command, serve_env())


@click.command("inpaint")
@click.option("--base", required=True, type=image_path, help="Base image (the panel; PNG/JPEG).")
@click.option("--mask", type=image_path, default=None, help="Mask: white = paint here.")
@click.option("--reference", type=image_path, default=None, help="The character to paint.")
@click.option("--prompt", default=None, help="What the character does.")
@click.option(
    "--character",
    "characters",
    type=(image_path, image_path, str),
    multiple=True,
    metavar="MASK REFERENCE PROMPT",
    help="One more character; repeat for several. Each is painted on the previous result, "
    "after --mask/--reference/--prompt if given.",
)
@click.option("--negative-prompt", default=None, help="For every character.")
@click.option("--pose", default=None, type=image_path, help="Pose drawing; default: extracted.")
@click.option("--url", default=None, help=f"The endpoint [default: {DEFAULT_URL}].")
@click.option("--model", "model_uri", default=None, help="Predict in-process with this model URI.")
@click.option("--steps", "num_inference_steps", type=int, default=None)
@click.option("--guidance", "guidance_scale", type=float, default=None)
@click.option("--face-scale", type=float, default=None)
@click.option("--body-scale", type=float, default=None)
@click.option("--controlnet-scale", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="inpainted.png",
    show_default=True,
    help="The painted panel (PNG, with how it was made: `cameo lineage OUT` reads it).",
)
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the 5-panel figure (base, mask, pose, reference, output) here, a row per "
    "character.",
)
@params_option
@profile_option
@models_option
def inpaint(
    base: Path,
    mask: Path | None,
    reference: Path | None,
    prompt: str | None,
    characters: tuple[tuple[Path, Path, str], ...],
    negative_prompt: str | None,
    pose: Path | None,
    url: str | None,
    model_uri: str | None,
    out: Path,
    grid: Path | None,
    params_path: str,
    profile: str | None,
    models_dir: Path,
    **inference: float | int | None,
) -> None:
    """Paint the reference character into the masked region of the base image, through the
    HTTP endpoint (--url) or in-process (--model); unset params take the model's defaults.
    With --character, several characters, one after another; every character's identity is
    then scored again on the final panel (the profile's face recogniser)."""
    import PIL.Image
    import requests

    from core.io import atomic_path
    from orchestration.params import load_params
    from serving.characters import Character, endpoint, in_process, paint_characters, save_panel
    from serving.client import ServingError

    if url and model_uri:
        raise click.UsageError("pass --url or --model, not both")
    given = [mask, reference, prompt]
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise click.UsageError("--mask, --reference and --prompt go together")
    rows = ([(mask, reference, prompt)] if mask is not None else []) + list(characters)
    if not rows:
        raise click.UsageError("give --mask, --reference and --prompt, or --character")
    if pose is not None and len(rows) > 1:
        raise click.UsageError("--pose is for one character only")
    params = {name: value for name, value in inference.items() if value is not None}
    cast = [
        Character(
            PIL.Image.open(m),
            PIL.Image.open(r).convert("RGB"),
            text,
            negative_prompt,
            params=params,
        )
        for m, r, text in rows
    ]
    if pose is not None:
        cast[0].pose = PIL.Image.open(pose)
    analyzer = load_params(params_path, profile).priors(models_dir).face_analyzer()
    try:
        if model_uri:
            from training.tracking import configure_tracking

            configure_tracking()
            paint, _ = in_process(checked_model(model_uri))
        else:
            paint = endpoint(url or DEFAULT_URL)
        panel = paint_characters(PIL.Image.open(base), cast, paint, analyzer)
    except ServingError as e:
        raise click.ClickException(str(e)) from None
    except requests.ConnectionError:
        raise click.ClickException(
            f"no server answers at {url or DEFAULT_URL}: start one with `cameo serve` (make "
            "serve), or paint in-process with --model"
        ) from None
    save_panel(panel, out)
    seconds = sum(c.result.seconds for c in panel.characters)
    versions = ", ".join(dict.fromkeys(str(c.result.model_version) for c in panel.characters))
    click.echo(f"wrote {out} ({len(cast)} character(s), {seconds:.2f} s, model {versions})")
    for line in panel.identity_lines():
        click.echo(line)
    if grid is not None:
        with atomic_path(grid) as tmp:
            panel.grid().save(tmp, format="PNG")
        click.echo(f"wrote {grid} (base, mask, pose, reference, output; a row per character)")


def write_result(result, out: Path, grid: Path | None, base, mask, reference, prompt: str) -> None:
    import PIL.Image

    from training.grid import inpaint_grid

    out.parent.mkdir(parents=True, exist_ok=True)
    result.image.save(out)
    score = "none (no face in the painted region)"
    if result.identity_score is not None:
        score = f"{result.identity_score:.3f}"
    made_by = f", model {result.model_version}" if result.model_version else ""
    click.echo(f"wrote {out} ({result.seconds:.2f} s, identity score {score}{made_by})")
    if grid is not None:
        panels = [PIL.Image.open(p) if isinstance(p, Path) else p for p in (base, mask, reference)]
        figure = inpaint_grid(panels[0], panels[1], result.pose, panels[2], result.image, prompt)
        grid.parent.mkdir(parents=True, exist_ok=True)
        figure.save(grid)
        click.echo(f"wrote {grid} (base, mask, pose, reference, output)")


@click.command("serve-check")
@data_option
@click.option("--model", "model_uri", default=None, help="Model URI; default the champion.")
@click.option("--max-side", default=128, show_default=True, help="Base image size cap (px).")
@click.option("--steps", "num_inference_steps", type=int, default=None)
@params_option
def serve_check(
    data_dir: Path,
    model_uri: str | None,
    max_side: int,
    num_inference_steps: int | None,
    params_path: str,
) -> None:
    """Serve the model on a free local port, make one real HTTP request and stop the server.

    The request is the first triplet of DATA/triplets (target as base, its mask, the
    reference frame, the prompt), its base and mask scaled down to --max-side; without a
    dataset, built-in demo inputs. Writes DATA/serving/output.png and grid.png.
    """
    from core.layout import DataLayout
    from serving.client import InpaintClient, ServingError, demo_inputs, make_row, triplet_inputs
    from serving.server import ModelServer, ServerStartError
    from training.tracking import configure_tracking

    configure_tracking()
    layout = DataLayout.from_env(data_dir)
    try:
        base, mask, reference, prompt = triplet_inputs(data_dir, max_side)
        click.echo(f"request: the first triplet, base {base.width}x{base.height}")
    except FileNotFoundError:
        base, mask, reference, prompt = demo_inputs()
        click.echo(f"request: demo inputs (no dataset under {layout.triplets_dir})")
    params = {"num_inference_steps": num_inference_steps} if num_inference_steps else {}
    config = serving_params(params_path)
    out_dir = layout.root / "serving"
    server = ModelServer(checked_model(model_uri), settings=config, log_path=out_dir / "server.log")
    click.echo(f"serving {server.model_uri} at {server.url} (log: {server.log_path})")
    try:
        with server:
            click.echo(f"server pid {server.process.pid} answers /ping")
            [result] = InpaintClient(server.url).predict(
                [make_row(base, mask, reference, prompt)], params
            )
    except (ServerStartError, ServingError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"server stopped (pid {server.process.pid})")
    write_result(
        result, out_dir / "output.png", out_dir / "grid.png", base, mask, reference, prompt
    )
