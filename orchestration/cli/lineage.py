"""`cameo lineage`: from a model version or run back to its dataset (orchestration.lineage)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("lineage")
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

    URI: models:/NAME@ALIAS, models:/NAME/VERSION, a version of cameo-inpaint, an MLflow
    run id, or a panel painted by cameo (`cameo inpaint`'s output, the studio's download): its
    PNG names the model version that painted it.
    """
    from orchestration.lineage import LineageError, checkout, trace
    from training.tracking import configure_tracking

    configure_tracking()
    if Path(uri).is_file():
        from serving.characters import NotAPanel, panel_model_uris

        try:
            uris = panel_model_uris(Path(uri))
        except NotAPanel as e:
            raise click.ClickException(str(e)) from None
        if len(uris) != 1:
            raise click.ClickException(
                f"{uri} was painted by {len(uris)} model versions ({', '.join(uris) or 'none'}): "
                "trace each with `cameo lineage models:/NAME/VERSION`"
            )
        click.echo(f"{uri}: painted by {uris[0]}", err=as_json)
        uri = uris[0]
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
