"""The `cameo` command line."""

from __future__ import annotations

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
    until: str,
    instance,
    resources: dict,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> PartitionOutcome:
    """Materialise, on `instance`, the per-movie stages up to `until` for partition `movie`,
    or (movie None) the dataset asset alone."""
    import dagster as dg

    from orchestration.definitions import MOVIE_STAGES, STAGES

    if movie is None:
        selection = dg.AssetSelection.assets(DATASET_STAGE)
    else:
        selection = dg.AssetSelection.assets(until).upstream() & dg.AssetSelection.assets(
            *MOVIE_STAGES
        )
    result = dg.materialize(
        list(STAGES),
        selection=selection,
        partition_key=movie,
        instance=instance,
        resources=resources,
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
@click.option(
    "--params",
    "params_path",
    type=click.Path(dir_okay=False),
    envvar="CAMEO_PARAMS",
    default="params.yaml",
    show_default=True,
    help="Parameters file; $CAMEO_PARAMS.",
)
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
                f"no movie file for {', '.join(unknown)} under {layout.movies_dir}"
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
        outcomes = []
        with tqdm(keys, unit="movie", desc=f"until {until}") as bar:
            for key in bar:
                bar.set_postfix_str(key)
                outcome = materialize_stages(key, until, instance, resources, log_level, tags)
                outcome.movie = f"{key} ({found[key].name})"
                outcomes.append(outcome)
        if until == DATASET_STAGE:
            click.echo("building the triplet dataset from every movie and single image")
            outcomes.append(materialize_stages(None, until, instance, resources, log_level, tags))
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
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train_command(args: tuple[str, ...]) -> None:
    """Train the model on the DVC-versioned triplets, logged to MLflow (`cameo train --help`).

    Several GPUs: torchrun --nproc-per-node N -m training.train [same options].
    """
    from training.train import main as train_main

    result = train_main(list(args))
    click.echo(
        f"trained {result.step} steps on dataset {result.dataset_md5}: "
        f"MLflow run {result.run_id}, checkpoint {result.final_dir}"
    )


@dataset.command("summary")
@data_option
def summary(data_dir: Path) -> None:
    """Print what each stage produced per movie, the triplet dataset, and where they are."""
    import pandas as pd

    from assets.layout import DataLayout, dvc_md5
    from assets.stage import read_status

    layout = DataLayout.from_env(data_dir)
    movies, skipped_inputs = layout.scan_movies()
    for movie, path in movies.items():
        click.echo(f"movie {movie} ({path})")
        for stage in STAGE_CHOICES[:-1]:
            table = layout.table(stage, movie)
            status = read_status(layout, stage, movie)
            if status is None or status["status"] != "ok":
                state = "not materialised" if not table.is_file() else "did not complete"
                click.echo(f"  {stage:<11} {status['error'] if status else state}")
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
