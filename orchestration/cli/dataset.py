"""`cameo sample-movie` and `cameo dataset build|summary`: the dataset's Dagster assets,
one partition per movie."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from pathlib import Path

import click

from orchestration.cli.options import (
    data_option,
    params_option,
    profile_option,
    verbose_option,
    wait_option,
)
from orchestration.runs import (
    DATASET_STAGE,
    STAGE_CHOICES,
    PartitionOutcome,
    fail_interrupted_runs,
    materialize_stages,
    stages_until,
    sync_movie_partitions,
    unknown_movie,
)


@click.command("sample-movie")
@data_option
@click.option("--name", default="sample", show_default=True, help="File stem of the movie.")
def sample_movie(data_dir: Path, name: str) -> None:
    """Write a deterministic sample movie under DATA/movies/ (with its ground truth), sample
    single-image IDs under DATA/singles/ and, where Debian's renpy-thequestion and renpy-demo
    are installed, their anime sprites under DATA/singles/anime/."""
    from assets.sample_movie import (
        INSTALL_SPRITES,
        write_anime_singles,
        write_sample_movie,
        write_sample_singles,
    )
    from core.layout import DataLayout

    layout = DataLayout.from_env(data_dir)
    path = write_sample_movie(layout, name)
    click.echo(f"wrote {path}")
    for single in write_sample_singles(layout):
        click.echo(f"wrote {single}")
    sprites = write_anime_singles(layout)
    for single in sprites:
        click.echo(f"wrote {single}")
    if not sprites:
        click.echo(
            f"no anime sprites on this machine: `{INSTALL_SPRITES}` (Debian) adds them as anime "
            "singles; the dataset (and dvc.lock) then differ from the committed ones"
        )
    click.echo(f"ground truth: {layout.ground_truth(name)}")


@click.group()
def dataset() -> None:
    """Build and inspect the dataset (Dagster assets, one partition per movie)."""


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
@profile_option
@wait_option
@verbose_option
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

    from assets.stage import recorded_warnings, stages_to_build
    from core.layout import BuildLockedError, DataLayout
    from core.params import ParamsError
    from orchestration.dataset_definitions import build_resources
    from orchestration.params import load_params
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
        # Single images alone make a dataset (the article's anime identities are singles).
        if not keys and (until != DATASET_STAGE or not layout.scan_singles()[0]):
            where = f" and no single images under {layout.singles_dir}"
            raise click.UsageError(
                f"no movie files under {layout.movies_dir}"
                + (where if until == DATASET_STAGE else "")
            )
        sync_movie_partitions(instance, found)
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
                    warnings = recorded_warnings(layout, key, stages_until(until))
                    outcome = PartitionOutcome(key, True, "up to date", warnings)
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


@dataset.command("summary")
@data_option
@params_option
def summary(data_dir: Path, params_path: str) -> None:
    """Print what each stage produced per movie (or why it is not current), the triplet
    dataset, and where they are."""
    import pandas as pd

    from assets.stage import movie_md5, recorded_warnings, stage_problem
    from core.layout import DataLayout
    from core.versioning import dvc_md5
    from orchestration.params import load_params

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
            for warning in recorded_warnings(layout, movie, [stage]):
                click.echo(f"  {'':<11} warning: {warning}")
    for s in skipped_inputs:
        click.echo(f"skipped movies/{s.path.name}: {s.reason}")
    manifest = layout.triplets_dir / "manifest.parquet"
    if manifest.is_file():
        triplets = pd.read_parquet(manifest)
        skipped = pd.read_parquet(layout.triplets_dir / "skipped.parquet")
        sources = triplets["source"].value_counts().to_dict()
        styles = triplets["style"].value_counts().to_dict()
        click.echo(
            f"triplets: {len(triplets)} ({sources}; by style {styles}), {len(skipped)} skipped "
            f"(by stage: {skipped['stage'].value_counts().to_dict()})"
        )
        if dropped := int(triplets["face_dropped"].sum()):
            click.echo(f"  {dropped} anime triplet(s) condition on no face (faces.anime.identity)")
        click.echo(f"  dataset version (DVC md5): {dvc_md5(layout.triplets_dir)}")
        click.echo(
            f"  {layout.triplets_dir}  (sheet: {layout.root / 'triplets.contact_sheet.jpg'})"
        )
    else:
        click.echo("triplets: not materialised")
    click.echo("Dagster UI on the same instance: make ui  (then http://127.0.0.1:3000)")
