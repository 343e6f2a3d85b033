"""`cameo synthetic build`: synthetic characters (article section 4.1) as Dagster runs, the
triplets that `cameo dataset build` then takes in."""

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

DESCRIPTIONS = ["synthetic_descriptions"]
BATCH = ["synthetic_images", "synthetic_triplets"]  # one character's assets


@click.group()
def synthetic() -> None:
    """Synthetic characters: describe them, draw each in a consistent batch, make triplets."""


@synthetic.command("build")
@data_option
@click.option(
    "--character", "characters", multiple=True, help="Only these character ids (repeatable)."
)
@params_option
@profile_option
@wait_option
@verbose_option
def build(
    data_dir: Path,
    characters: tuple[str, ...],
    params_path: str,
    profile: str | None,
    wait: bool,
    verbose: bool,
) -> None:
    """Describe `synthetic.count` characters (a `synthetic_descriptions_job` run), then draw
    each one's batch and make its triplets (a `synthetic_job` run per character, a partition);
    a batch whose description, params and code are unchanged is not drawn again. With
    `synthetic.count: 0` (the default) it writes an empty descriptions.json and draws
    nothing. `cameo dataset build` then takes the triplets in. Exit status 1 if any
    character's run failed."""
    import dagster as dg
    from tqdm import tqdm

    from core.layout import BuildLockedError, DataLayout
    from core.params import ParamsError
    from orchestration.dataset_definitions import build_resources
    from orchestration.definitions import build_definitions
    from orchestration.params import load_params
    from orchestration.runs import materialize

    layout = DataLayout.from_env(data_dir)
    try:
        count = load_params(params_path, profile).synthetic.count
    except (ParamsError, OSError) as e:
        raise click.ClickException(str(e)) from e
    defs = build_definitions(build_resources(str(layout.root), params_path, profile))
    log_level = "INFO" if verbose else "CRITICAL"
    tags = {"cameo/data": str(layout.root)}
    instance = dg.DagsterInstance.get()
    with ExitStack() as stack:
        try:
            stack.enter_context(layout.build_lock(wait))
        except BuildLockedError as e:
            raise click.ClickException(str(e)) from e
        described = materialize(
            defs, "synthetic_descriptions_job", DESCRIPTIONS, instance, None, log_level, tags
        )
        if not described.success:
            sys.exit(f"FAILED describing the characters: {described.message}")
        found = layout.synthetic_characters()
        unknown = sorted(set(characters) - set(found))
        if unknown:
            raise click.UsageError(f"no synthetic character {', '.join(unknown)} (of {len(found)})")
        if count == 0:
            click.echo("synthetic.count is 0: no synthetic characters (params.yaml turns it on)")
        outcomes = []
        # No bar when there is nothing to draw.
        with tqdm(list(characters) or found, unit="character", desc="synthetic", delay=0.1) as bar:
            for character in bar:
                bar.set_postfix_str(character)
                outcomes.append(
                    materialize(defs, "synthetic_job", BATCH, instance, character, log_level, tags)
                )
    for outcome in outcomes:
        if not outcome.success:
            click.echo(f"FAILED {outcome.movie}: {outcome.message}")
            continue
        made = outcome.metadata.get("synthetic_triplets", {})
        click.echo(f"ok     {outcome.movie}: {made.get('triplets', 0)} triplets")
        for warning in outcome.warnings:  # the in-batch check's, with what was left out
            click.echo(f"       warning: {warning}")
    kept = sum(o.metadata.get("synthetic_triplets", {}).get("triplets", 0) for o in outcomes)
    click.echo(f"{kept} synthetic triplets under {layout.synthetic_dir} (`cameo dataset build`)")
    if not all(o.success for o in outcomes):
        sys.exit(1)
