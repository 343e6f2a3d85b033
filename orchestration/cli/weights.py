"""`cameo weights download|status|licences|fetch|pack`: the `full` profile's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestration.cli.options import models_option, params_option

lock_option = click.option(
    "--lock-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The weights lock (default: the repo's models.lock.yaml).",
)
for_option = click.option(
    "--for",
    "needed_for",
    type=click.Choice(["dataset", "synthetic", "train", "serve"]),
    help="Only what this command loads.",
)


def full_models(params_path: str) -> dict[str, str]:
    """What the `full` profile of these params loads (`serving.weights.required_models`)."""
    from orchestration.params import load_params
    from serving.weights import required_models

    params = load_params(params_path, "full")
    return required_models(params.priors(), params.synthetic.model)


@click.group()
def weights() -> None:
    """The `full` profile's weights, as models.lock.yaml pins them: download them from their
    publishers, see what a models folder holds, or go through a mirror."""


def _locked_entries(
    params_path: str, lock_file: Path, names: tuple[str, ...], needed_for: str | None
) -> list:
    from serving.weights import checked_lock, select

    entries = checked_lock(full_models(params_path), lock_file)
    return select(entries, names, needed_for)


@weights.command("download")
@click.argument("names", nargs=-1)
@for_option
@click.option(
    "--lock",
    "record_pins",
    is_flag=True,
    help="Download entries the lock does not pin yet and record their commit and digests "
    "(trusted on first use).",
)
@click.option(
    "--accept-licence",
    "accepted",
    multiple=True,
    metavar="NAME",
    envvar="CAMEO_ACCEPT_LICENCES",
    help="Accept the non-commercial licence of entry NAME (repeatable; or "
    "$CAMEO_ACCEPT_LICENCES, space-separated).",
)
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@models_option
@lock_option
@params_option
def weights_download(
    names: tuple[str, ...],
    needed_for: str | None,
    record_pins: bool,
    accepted: tuple[str, ...],
    no_progress: bool,
    models_dir: Path,
    lock_file: Path | None,
    params_path: str,
) -> None:
    """Download NAMES (default: every entry, or those --for a command) from their publishers
    into MODELS, each file checked against models.lock.yaml's sha256. HF_TOKEN and
    HF_ENDPOINT are honoured; an interrupted download resumes."""
    from serving.weights import LOCK_FILE, WeightsError
    from serving.weights_download import download

    lock_file = lock_file or LOCK_FILE
    try:
        entries = _locked_entries(params_path, lock_file, names, needed_for)
        done = download(
            entries, models_dir, lock_path=lock_file, record_pins=record_pins,
            accepted_licences=accepted, log=click.echo, progress=not no_progress,
        )  # fmt: skip
    except WeightsError as error:
        sys.exit(f"error: {error}")
    click.echo(f"{len(done)} downloaded into {models_dir}, {len(entries) - len(done)} present")


@weights.command("status")
@for_option
@click.option("--verify", is_flag=True, help="Compute every file's sha256 (slow on GBs).")
@models_option
@lock_option
@params_option
def weights_status(
    needed_for: str | None,
    verify: bool,
    models_dir: Path,
    lock_file: Path | None,
    params_path: str,
) -> None:
    """One line per entry: present or missing, size, whether its digests are checked,
    licence, and which commands need it. Exits 1 when something selected is missing."""
    from serving.weights import LOCK_FILE, WeightsError, entry_status, status_table

    try:
        rows = [
            entry_status(e, models_dir, verify)
            for e in _locked_entries(params_path, lock_file or LOCK_FILE, (), needed_for)
        ]
    except WeightsError as error:
        sys.exit(f"error: {error}")
    click.echo(status_table(rows))
    missing = [row.entry for row in rows if not row.complete]
    if missing:
        sys.exit(
            f"missing in {models_dir}: {', '.join(e.name for e in missing)}; "
            f"`{download_command(missing, needed_for)}` downloads them"
        )


def download_command(entries: list, needed_for: str | None) -> str:
    """The `cameo weights download` line for `entries`: with --lock where one is not
    pinned, and the licences to accept."""
    words = ["cameo weights download"]
    words += [f"--for {needed_for}"] if needed_for else [e.name for e in entries]
    words += ["--lock"] if any(not e.pinned() for e in entries) else []
    words += [f"--accept-licence {e.name}" for e in entries if not e.licence.commercial]
    return " ".join(words)


@weights.command("licences")
def weights_licences() -> None:
    """The licence table of models.lock.yaml, in Markdown (docs/models.md's)."""
    from serving.weights import licence_table, read_lock

    click.echo(licence_table(read_lock().values()))


@weights.command("fetch")
@click.option("--mirror", required=True, envvar="CAMEO_WEIGHTS_MIRROR", help="https:// or file://")
@models_option
@params_option
def weights_fetch(mirror: str, models_dir: Path, params_path: str) -> None:
    """Download, check and unpack every entry missing from MODELS from a mirror that
    `cameo weights pack` wrote (clusters without internet)."""
    from serving.weights import WeightsError, fetch

    try:
        fetched = fetch(mirror, models_dir, full_models(params_path), log=click.echo)
    except WeightsError as error:
        sys.exit(f"error: {error}")
    click.echo(f"{len(fetched)} fetched into {models_dir}")


@weights.command("pack")
@models_option
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@params_option
def weights_pack(models_dir: Path, out: Path, params_path: str) -> None:
    """Write a mirror (one <entry>.tar each) from MODELS and record the sha256 of each archive
    in models.lock.yaml (`mirror_sha256`)."""
    from serving.weights import WeightsError, pack

    try:
        digests = pack(models_dir, out, full_models(params_path))
    except WeightsError as error:
        sys.exit(f"error: {error}")
    for name, digest in digests.items():
        click.echo(f"{digest}  {out / name}.tar")
