"""The `cameo` command line."""

from __future__ import annotations

import difflib
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import click

from orchestration.environment import configure_local_environment

# The stage names, in order (orchestration.definitions.STAGE_NAMES; a test keeps them equal).
STAGE_CHOICES = (
    "frames",
    "faces",
    "characters",
    "masks",
    "poses",
    "captions",
    "references",
    "triplets",
)
DATASET_STAGE = "triplets"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cameo: identity-consistent character inpainting, from movies to a served model."""
    configure_local_environment()


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


@main.command("sample-movie")
@data_option
@click.option("--name", default="sample", show_default=True, help="File stem of the movie.")
def sample_movie(data_dir: Path, name: str) -> None:
    """Write a deterministic sample movie under DATA/movies/ (with its ground truth) and
    sample single-image IDs under DATA/singles/."""
    from assets.layout import DataLayout
    from assets.sample_movie import write_sample_movie, write_sample_singles

    layout = DataLayout.from_env(data_dir)
    path = write_sample_movie(layout, name)
    click.echo(f"wrote {path}")
    for single in write_sample_singles(layout):
        click.echo(f"wrote {single}")
    click.echo(f"ground truth: {layout.ground_truth(name)}")


@main.group()
def dataset() -> None:
    """Build and inspect the dataset (Dagster assets, one partition per movie)."""


@dataclass
class PartitionOutcome:
    movie: str
    success: bool
    message: str
    warnings: list[str] = field(default_factory=list)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def failure_message(event) -> str:
    """The real cause of a failed step or run, on one line: a stage's own failure
    description (which names the movie file), else the innermost exception Dagster wrapped
    (e.g. the params or models problem that stopped a resource)."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return _one_line(user.description)
    error = data.error
    while error.cause is not None:
        error = error.cause
    return _one_line(error.message)


def materialize_stages(
    movie: str | None,
    stages: list[str],
    instance,
    resources: dict,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> PartitionOutcome:
    """Materialise, on `instance`, the per-movie `stages` (with their checks) of partition
    `movie` in a `movie_job` run, or (movie None) the dataset in a `triplets_job` run."""
    import dagster as dg

    from orchestration.definitions import build_definitions

    defs = build_definitions(resources)
    job = defs.resolve_job_def("triplets_job" if movie is None else "movie_job")
    result = job.execute_in_process(
        instance=instance,
        partition_key=movie,
        asset_selection=[dg.AssetKey(stage) for stage in stages],
        raise_on_error=False,
        tags={"cameo/source": "cli", **(tags or {})},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    failed_checks = [
        f"check {e.asset_key.to_user_string()}.{e.check_name} failed: {e.description}"
        for e in result.get_asset_check_evaluations()
        if not e.passed
    ]
    step_errors = [
        failure_message(e)
        for e in result.all_events
        if (e.is_step_failure or e.is_run_failure)
        and getattr(e.event_specific_data, "error", None) is not None
        # A failed blocking check is reported below, with its description.
        and e.event_specific_data.error.cls_name != "DagsterAssetCheckFailedError"
    ]
    warnings = [
        str(m.materialization.metadata["warning"].value)
        for m in result.get_asset_materialization_events()
        if m.materialization.metadata.get("warning") and m.materialization.metadata["warning"].value
    ]
    problems = step_errors + failed_checks
    name = movie or DATASET_STAGE
    if result.success and not problems:
        return PartitionOutcome(name, True, f"run {result.run_id}", warnings)
    return PartitionOutcome(
        name, False, "; ".join(problems) or f"run {result.run_id} failed", warnings
    )


def fail_interrupted_runs(instance, data_root: str) -> list[str]:
    """Mark failed the runs of earlier builds on this data dir still recorded as running:
    the caller holds the build lock, so their process is gone (killed)."""
    import dagster as dg

    active = [
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.NOT_STARTED,
    ]
    runs = instance.get_runs(
        dg.RunsFilter(statuses=active, tags={"cameo/source": "cli", "cameo/data": data_root})
    )
    for run in runs:
        instance.report_run_failed(run, message="interrupted: its build process is gone")
    return [run.run_id for run in runs]


def unknown_movie(key: str, known: list[str]) -> str:
    """No movie for `key`: say so, with the partition key it most likely meant."""
    from assets.layout import slugify

    close = [slugify(key)] if slugify(key) in known else difflib.get_close_matches(key, known, 1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no movie file for partition key {key!r}{hint}"


def stages_until(until: str) -> list[str]:
    return list(STAGE_CHOICES[: STAGE_CHOICES.index(until) + 1])


@dataset.command("build")
@data_option
@click.option(
    "--until",
    type=click.Choice(STAGE_CHOICES),
    default=STAGE_CHOICES[-1],
    show_default=True,
    help="Last stage to materialise (with everything upstream).",
)
@click.option("--movie", "movies", multiple=True, help="Only these partition keys (repeatable).")
@params_option
@click.option(
    "--profile",
    type=click.Choice(["tiny", "full"]),
    default=None,
    help="Model profile; default: $CAMEO_PROFILE, else params.yaml.",
)
@click.option("--wait", is_flag=True, help="Wait for another build of DATA instead of refusing.")
@click.option("-v", "--verbose", is_flag=True, help="Print Dagster's step logs.")
def build(
    data_dir: Path,
    until: str,
    movies: tuple[str, ...],
    params_path: str,
    profile: str | None,
    wait: bool,
    verbose: bool,
) -> None:
    """Register every movie under DATA/movies as a partition and materialise it.

    With --until triplets (the default), the dataset is then built from every movie and
    every image under DATA/singles. Runs go to the persistent Dagster instance in
    $DAGSTER_HOME, so they show in the UI (`make ui`). A movie that fails (unreadable file,
    failed check) is reported and the others go on; the exit status is 1 if any failed.
    params.yaml (and, for `full`, every model the stages need) is checked before anything
    runs. One build at a time per data dir: a second one refuses (or, with --wait, waits).
    """
    import dagster as dg
    import pandas as pd
    from tqdm import tqdm

    from assets.layout import BuildLockedError, DataLayout
    from assets.params import ParamsError, load_params
    from assets.partitions import movie_partitions
    from assets.stage import stages_to_build
    from orchestration.definitions import build_resources
    from orchestration.resources import MissingModelsError

    layout = DataLayout.from_env(data_dir)
    resources = build_resources(str(layout.root), params_path, profile)
    try:
        load_params(params_path, profile)  # the whole file, before anything runs
    except (ParamsError, OSError) as e:
        raise click.ClickException(str(e)) from e
    try:
        resources["perception"].check_models(stages_until(until))
    except MissingModelsError as e:
        raise click.ClickException(str(e)) from e
    with ExitStack() as stack:
        try:
            stack.enter_context(layout.build_lock(wait))
        except BuildLockedError as e:
            raise click.ClickException(str(e)) from e
        for path in layout.clean_stale_temps():
            click.echo(f"removed {path}, left by an interrupted run")
        instance = dg.DagsterInstance.get()
        for run_id in fail_interrupted_runs(instance, str(layout.root)):
            click.echo(f"marked run {run_id} failed: interrupted")
        found, skipped = layout.scan_movies()
        for s in skipped:
            click.echo(f"skipped movies/{s.path.name}: {s.reason}")
        unknown = sorted(set(movies) - set(found))
        if unknown:
            raise click.UsageError(
                "; ".join(unknown_movie(key, sorted(found)) for key in unknown)
                + f" (movies under {layout.movies_dir})"
            )
        keys = list(movies) or sorted(found)
        if not keys:
            raise click.UsageError(f"no movie files under {layout.movies_dir}")
        # The partitions are the files present: new ones added, those of removed files gone.
        registered = set(instance.get_dynamic_partitions(movie_partitions.name))
        instance.add_dynamic_partitions(
            movie_partitions.name, [k for k in sorted(found) if k not in registered]
        )
        for gone in sorted(registered - set(found)):
            instance.delete_dynamic_partition(movie_partitions.name, gone)
        # Failures are summarised below, one line each; -v shows Dagster's logs and traces.
        log_level = "INFO" if verbose else "CRITICAL"
        tags = {"cameo/data": str(layout.root)}
        values = resources["params"].values
        outcomes = []
        with tqdm(keys, unit="movie", desc=f"until {until}") as bar:
            for key in bar:
                bar.set_postfix_str(key)
                # Only what is missing or stale: a stage current for this file, its params and
                # its code is kept.
                stages = stages_to_build(layout, key, found[key], values, until)
                if stages:
                    outcome = materialize_stages(key, stages, instance, resources, log_level, tags)
                else:
                    outcome = PartitionOutcome(key, True, "up to date")
                outcome.movie = f"{key} ({found[key].name})"
                outcomes.append(outcome)
        if until == DATASET_STAGE:
            click.echo("building the triplet dataset from every movie and single image")
            outcomes.append(
                materialize_stages(None, [DATASET_STAGE], instance, resources, log_level, tags)
            )
    for outcome in outcomes:
        status = "ok    " if outcome.success else "FAILED"
        click.echo(f"{status} {outcome.movie}: {outcome.message}")
        for warning in outcome.warnings:
            click.echo(f"       warning: {warning}")
    skipped_table = layout.triplets_dir / "skipped.parquet"
    if until == DATASET_STAGE and skipped_table.is_file():
        for s in pd.read_parquet(skipped_table).itertuples(index=False):
            if pd.isna(s.character_id) and pd.isna(s.frame_idx):  # whole files, not frames
                click.echo(f"left out of the dataset: {s.file or s.movie} ({s.stage}): {s.reason}")
    if not all(o.success for o in outcomes):
        sys.exit(1)


@main.command(
    "train",
    context_settings={"ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
@click.option(
    "--submit",
    type=click.Choice(["local", "k8s"]),
    default="local",
    help="k8s: run as a Kubernetes Job rendered from params.yaml's `kubernetes` section.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_command(submit: str, args: tuple[str, ...]) -> None:
    """Train the model on the DVC-versioned triplets, logged to MLflow (`cameo train --help`).

    Several GPUs: torchrun --nproc-per-node N -m training.train [same options]. On a cluster:
    `cameo train --submit k8s [same options]`; the params file becomes the cluster's
    cameo-params ConfigMap, the other options go to the Job's training command.
    """
    if submit == "k8s":
        submit_training_job(list(args))
        return
    from training.train import main as train_main

    result = train_main(list(args))
    click.echo(
        f"trained {result.step} steps on dataset {result.dataset_md5}: "
        f"MLflow run {result.run_id}, checkpoint {result.final_dir}"
    )


def submit_training_job(args: list[str]) -> None:
    """`cameo train --submit k8s`: create the Job, stream its pods' logs, report the run."""
    from assets.params import load_params
    from training.submit import TrainingJobFailed, submit_training
    from training.train import build_parser

    options = build_parser().parse_args(args)  # refuse bad options here, not in the cluster
    # The params file travels as the ConfigMap the pods read; every other option goes along.
    passed, skip_next = [], False
    for arg in args:
        if not skip_next and arg != "--params" and not arg.startswith("--params="):
            passed.append(arg)
        skip_next = arg == "--params"
    values = load_params(options.params, options.profile)
    try:
        job = submit_training(options.params, values, passed, log=click.echo)
    except TrainingJobFailed as error:
        sys.exit(f"error: {error}")
    click.echo(
        f"job {job.namespace}/{job.name}: MLflow run {job.run_id} on "
        f"{values['kubernetes']['mlflow_tracking_uri']}, checkpoints in {job.output_dir}"
    )


@dataset.command("summary")
@data_option
@params_option
def summary(data_dir: Path, params_path: str) -> None:
    """Print what each stage produced per movie (or why it is not current), the triplet
    dataset, and where they are."""
    import pandas as pd

    from assets.layout import DataLayout, dvc_md5
    from assets.params import load_params
    from assets.stage import movie_md5, stage_problem

    layout = DataLayout.from_env(data_dir)
    values = load_params(params_path)
    movies, skipped_inputs = layout.scan_movies()
    for movie, path in movies.items():
        click.echo(f"movie {movie} ({path})")
        md5 = movie_md5(layout, movie, path)
        for stage in STAGE_CHOICES[:-1]:
            table = layout.table(stage, movie)
            if problem := stage_problem(layout, stage, movie, path, md5, values):
                click.echo(f"  {stage:<11} {problem}")
                continue
            df = pd.read_parquet(table)
            extra = ""
            if "status" in df:
                extra = f", {int((df['status'] == 'ok').sum())} usable"
            if stage == "characters" and not df.empty:
                sizes = df.groupby("character_id").size()
                extra = f", {len(sizes)} characters (frames each: {', '.join(map(str, sizes))})"
            click.echo(f"  {stage:<11} {len(df):>5} rows{extra}  {table}")
    for s in skipped_inputs:
        click.echo(f"skipped movies/{s.path.name}: {s.reason}")
    manifest = layout.triplets_dir / "manifest.parquet"
    if manifest.is_file():
        triplets = pd.read_parquet(manifest)
        skipped = pd.read_parquet(layout.triplets_dir / "skipped.parquet")
        sources = triplets["source"].value_counts().to_dict()
        click.echo(
            f"triplets: {len(triplets)} ({sources}), {len(skipped)} skipped "
            f"(by stage: {skipped['stage'].value_counts().to_dict()})"
        )
        click.echo(f"  dataset version (DVC md5): {dvc_md5(layout.triplets_dir)}")
        click.echo(
            f"  {layout.triplets_dir}  (sheet: {layout.root / 'triplets.contact_sheet.jpg'})"
        )
    else:
        click.echo("triplets: not materialised")
    click.echo("Dagster UI on the same instance: make ui  (then http://127.0.0.1:3000)")


# ---------------------------------------------------------------------------------------------
# Serving: the registered model `cameo-inpaint`, its HTTP endpoint and the client

DEFAULT_URL = "http://127.0.0.1:5000"


def champion_uri() -> str:
    from training.tracking import CHAMPION, REGISTERED_MODEL

    return f"models:/{REGISTERED_MODEL}@{CHAMPION}"


def serving_config(params_path: str, profile: str | None = None):
    from assets.params import load_params
    from serving.schema import ServingConfig

    return ServingConfig.from_params(load_params(params_path, profile)["serving"])


@main.group()
def model() -> None:
    """The registered model `cameo-inpaint` in MLflow: log checkpoints, list, promote."""


@model.command("log")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder written by training (save_checkpoint).",
)
@params_option
@click.option(
    "--profile",
    type=click.Choice(["tiny", "full"]),
    default=None,
    help="Model profile; default: $CAMEO_PROFILE, else params.yaml.",
)
@click.option(
    "--models-dir",
    envvar="CAMEO_MODELS",
    default=None,
    help="full: the base weights to record ($CAMEO_MODELS, default ./models).",
)
@click.option("--no-register", is_flag=True, help="Log the model without registering it.")
def model_log(
    checkpoint: Path,
    params_path: str,
    profile: str | None,
    models_dir: str | None,
    no_register: bool,
) -> None:
    """Log a checkpoint as a pyfunc model (in a new run of experiment `cameo`) and register
    it as a new version of `cameo-inpaint`."""
    import mlflow

    from assets.params import load_params
    from serving.registry import log_model
    from training.tracking import REGISTERED_MODEL, configure_tracking

    configure_tracking()
    params = load_params(params_path, profile)
    with mlflow.start_run(run_name=f"log {checkpoint.resolve().name}"):
        info = log_model(
            checkpoint,
            profile=params["profile"],
            models_dir=models_dir,
            registered_model_name=None if no_register else REGISTERED_MODEL,
            params=params,
        )
    click.echo(f"logged {info.model_uri} (run {info.run_id})")
    if info.registered_model_version is not None:
        version = info.registered_model_version
        click.echo(f"registered {REGISTERED_MODEL} version {version}")
        click.echo(f"serve it with: cameo model promote {version} && make serve")


@model.command("list")
def model_list() -> None:
    """Every version of `cameo-inpaint`, newest first, with aliases and lineage."""
    from serving.registry import model_versions
    from training.tracking import configure_tracking

    configure_tracking()
    versions = model_versions()
    if not versions:
        click.echo("no registered versions: cameo model log --checkpoint DIR")
    for v in versions:
        aliases = f" @{', @'.join(v.aliases)}" if v.aliases else ""
        click.echo(
            f"version {v.version}{aliases}  {v.created:%Y-%m-%d %H:%M}  profile {v.profile}  "
            f"run {v.training_run_id}  dataset {v.dataset_md5}"
        )


@model.command("promote")
@click.argument("version")
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
def model_promote(version: str, alias: str) -> None:
    """Point the alias (what `make serve` serves) at VERSION (a number, or `latest`);
    promoting the previous version again rolls back."""
    from serving.registry import promote
    from training.tracking import REGISTERED_MODEL, configure_tracking

    configure_tracking()
    previous = promote(version, alias)
    if version == "latest":
        import mlflow

        version = mlflow.MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version
    click.echo(f"{REGISTERED_MODEL}@{alias}: version {previous or '-'} -> {version}")
    if previous is not None and previous != version:
        click.echo(f"roll back with: cameo model promote {previous} --alias {alias}")
    click.echo("a running server keeps the version it loaded: restart it (make serve)")


@main.group()
def weights() -> None:
    """The `full` profile's weights listed in models.lock.yaml: pack a mirror, fetch from one."""


models_option = click.option(
    "--models",
    "models_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAMEO_MODELS",
    default="models",
    show_default=True,
    help="Models directory; $CAMEO_MODELS.",
)


@weights.command("fetch")
@click.option("--mirror", required=True, envvar="CAMEO_WEIGHTS_MIRROR", help="https:// or file://")
@models_option
@params_option
def weights_fetch(mirror: str, models_dir: Path, params_path: str) -> None:
    """Download, check and unpack every entry of models.lock.yaml missing from MODELS."""
    from assets.params import load_params
    from serving.weights import WeightsError, fetch

    try:
        fetched = fetch(mirror, models_dir, load_params(params_path, "full"), log=click.echo)
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
    from assets.params import load_params
    from serving.weights import WeightsError, pack

    try:
        digests = pack(models_dir, out, load_params(params_path, "full"))
    except WeightsError as error:
        sys.exit(f"error: {error}")
    for name, digest in digests.items():
        click.echo(f"{digest}  {out / name}.tar")


@main.command("serve")
@click.option("--model", "model_uri", default=None, help="Model URI; default the champion.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--workers", default=None, type=int, help="Default: serving.workers.")
@click.option("--timeout", default=None, type=int, help="Seconds; default: serving.timeout_s.")
@params_option
def serve(
    model_uri: str | None,
    host: str,
    port: int,
    workers: int | None,
    timeout: int | None,
    params_path: str,
) -> None:
    """Serve the model over HTTP (MLflow's scoring protocol; /version names the model version),
    in the foreground; Ctrl-C stops it."""
    import os

    from serving.server import serve_command, serve_env
    from training.tracking import configure_tracking

    configure_tracking()
    config = serving_config(params_path)
    command = serve_command(
        model_uri or champion_uri(),
        host,
        port,
        timeout or config.timeout_s,
        workers or config.workers,
    )
    click.echo(" ".join(command), err=True)
    os.execve(command[0], command, serve_env())


image_path = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command("inpaint")
@click.option("--base", required=True, type=image_path, help="Base image (PNG/JPEG).")
@click.option("--mask", required=True, type=image_path, help="Mask: white = paint here.")
@click.option("--reference", required=True, type=image_path, help="The character to paint.")
@click.option("--prompt", required=True)
@click.option("--negative-prompt", default=None)
@click.option("--pose", default=None, type=image_path, help="Pose drawing; default: extracted.")
@click.option("--url", default=None, help=f"The endpoint [default: {DEFAULT_URL}].")
@click.option("--model", "model_uri", default=None, help="Predict in-process with this model URI.")
@click.option("--steps", "num_inference_steps", type=int, default=None)
@click.option("--guidance", "guidance_scale", type=float, default=None)
@click.option("--face-scale", type=float, default=None)
@click.option("--body-scale", type=float, default=None)
@click.option("--controlnet-scale", type=float, default=None)
@click.option("--seed", type=int, default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="inpainted.png")
@click.option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the 5-panel figure (base, mask, pose, reference, output) here.",
)
def inpaint(
    base: Path,
    mask: Path,
    reference: Path,
    prompt: str,
    negative_prompt: str | None,
    pose: Path | None,
    url: str | None,
    model_uri: str | None,
    out: Path,
    grid: Path | None,
    **inference: float | int | None,
) -> None:
    """Paint the reference character into the masked region of the base image, through the
    HTTP endpoint (--url) or in-process (--model); unset params take the model's defaults."""
    from serving.client import InpaintClient, ServingError, make_row, predict_in_process

    if url and model_uri:
        raise click.UsageError("pass --url or --model, not both")
    row = make_row(base, mask, reference, prompt, negative_prompt, pose)
    params = {name: value for name, value in inference.items() if value is not None}
    try:
        if model_uri:
            from training.tracking import configure_tracking

            configure_tracking()
            [result] = predict_in_process(model_uri, [row], params)
        else:
            [result] = InpaintClient(url or DEFAULT_URL).predict([row], params)
    except ServingError as e:
        raise click.ClickException(str(e)) from None
    write_result(result, out, grid, base, mask, reference, prompt)


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


@main.command("serve-check")
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
    import pandas as pd
    import PIL.Image

    from assets.layout import DataLayout
    from serving.client import InpaintClient, ServingError, demo_inputs, make_row
    from serving.server import ModelServer
    from training.tracking import configure_tracking

    configure_tracking()
    layout = DataLayout.from_env(data_dir)
    manifest = layout.triplets_dir / "manifest.parquet"
    if manifest.is_file():
        triplet = pd.read_parquet(manifest).iloc[0]
        base = PIL.Image.open(layout.triplets_dir / triplet["target"]).convert("RGB")
        mask = PIL.Image.open(layout.triplets_dir / triplet["target_mask"]).convert("L")
        reference = PIL.Image.open(layout.triplets_dir / triplet["reference"]).convert("RGB")
        prompt = str(triplet["prompt"])
        scale = min(1.0, max_side / max(base.size))
        size = (round(base.width * scale), round(base.height * scale))
        base = base.resize(size, PIL.Image.Resampling.LANCZOS)
        mask = mask.resize(size, PIL.Image.Resampling.NEAREST)
        click.echo(f"request: triplet {triplet['triplet_id']}, base {size[0]}x{size[1]}")
    else:
        base, mask, reference, prompt = demo_inputs()
        click.echo(f"request: demo inputs (no dataset under {layout.triplets_dir})")
    params = {"num_inference_steps": num_inference_steps} if num_inference_steps else {}
    config = serving_config(params_path)
    server = ModelServer(model_uri or champion_uri(), timeout_s=config.timeout_s)
    click.echo(f"serving {server.model_uri} at {server.url} (log: {server.log_path})")
    with server:
        click.echo(f"server pid {server.process.pid} answers /ping")
        try:
            [result] = InpaintClient(server.url).predict(
                [make_row(base, mask, reference, prompt)], params
            )
        except ServingError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"server stopped (pid {server.process.pid})")
    out_dir = layout.root / "serving"
    write_result(
        result, out_dir / "output.png", out_dir / "grid.png", base, mask, reference, prompt
    )


@main.command("evaluate")
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

    Metrics (params.yaml `evaluation`): face similarity and face found rate in the mask, PCK
    of body and face keypoints, CLIP-T where a CLIP model is under $CAMEO_MODELS, and the
    saturation ratio of the painted region against the ground truth.
    """
    import mlflow

    from assets.params import load_params
    from training.evaluate import evaluate_logged_model

    uri = model_uri or champion_uri()
    values = load_params(params_path, profile)
    try:
        evaluation, run_id = evaluate_logged_model(uri, values, data_root=data_dir)
    except (mlflow.MlflowException, FileNotFoundError, ValueError) as e:
        raise click.ClickException(f"cannot evaluate {uri}: {_one_line(str(e))}") from None
    table = evaluation.summary().set_index("ablation")
    click.echo(f"{uri}: {len(evaluation.samples) // len(table)} validation triplets")
    click.echo(table.to_string(float_format=lambda v: f"{v:.3f}"))
    for name, note in evaluation.notes.items():
        click.echo(f"  {name}: {note}")
    click.echo(f"logged into MLflow run {run_id}: evaluation/ablations.json, samples.json, grids")


# ---------------------------------------------------------------------------------------------
# Lineage: from a model version or run back to its dataset


@main.command("lineage")
@click.argument("uri")
@click.option("--json", "as_json", is_flag=True, help="Print the lineage as JSON.")
@click.option(
    "--checkout",
    "restore",
    is_flag=True,
    help="Restore the run's dataset in a git worktree (git + dvc checkout, else dvc pull).",
)
@click.option(
    "--into",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="With --checkout: the worktree's folder [default: .lineage/<md5 prefix> in the repo].",
)
def lineage(uri: str, as_json: bool, restore: bool, into: Path | None) -> None:
    """Trace URI to its data: model version, MLflow run, dataset md5, the git commit whose
    dvc.lock has it, the run's params, the Dagster runs that built it.

    URI: models:/NAME@ALIAS, models:/NAME/VERSION, a version of cameo-inpaint or an MLflow
    run id.
    """
    from orchestration.lineage import LineageError, checkout, trace
    from training.tracking import configure_tracking

    configure_tracking()
    try:
        found = trace(uri)
        click.echo(found.to_json() if as_json else "\n".join(found.lines()))
        if restore:
            restored = checkout(found, into)
            # With --json, stdout stays one JSON document.
            click.echo(
                f"restored {found.dataset_md5} at {restored.dataset} "
                f"(commit {restored.commit.sha[:12]}); when done: "
                f"git worktree remove {restored.worktree}",
                err=as_json,
            )
    except LineageError as error:
        raise click.ClickException(str(error)) from None
