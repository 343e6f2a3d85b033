"""`cameo identity calibrate`: a recogniser's threshold from labelled faces."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from orchestration.cli.options import models_option, params_option, profile_option


@click.group()
def identity() -> None:
    """Identity thresholds, measured on labelled faces."""


@identity.command("calibrate")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--pairs",
    "pairs_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="LFW's pairs.txt (images under ROOT/<name>/<name>_<i:04d>.jpg); default: ROOT holds "
    "a folder per person.",
)
@click.option(
    "--recogniser",
    default="dlib",
    show_default=True,
    help="dlib, or an insightface folder under the models directory (ArcFace).",
)
@click.option("--fmr", default=0.001, show_default=True, help="Target false-match rate.")
@click.option(
    "--thresholds",
    default="0.30,0.40,0.50,0.60,0.80,0.85,0.88,0.90,0.91,0.92,0.93,0.94,0.95,0.96",
    show_default=True,
    help="Comma-separated thresholds of the table.",
)
@models_option
@params_option
@profile_option
def calibrate_command(
    root: Path,
    pairs_file: Path | None,
    recogniser: str,
    fmr: float,
    thresholds: str,
    models_dir: Path,
    params_path: str,
    profile: str | None,
) -> None:
    """False-match and false-non-match rates over thresholds on labelled faces in ROOT, and
    the threshold proposed at the target FMR (Markdown, for BENCHMARKS.md or a review)."""
    from tqdm import tqdm

    from orchestration.params import load_params
    from perception.calibration import calibrate, calibration_report, folder_pairs, lfw_pairs

    try:
        grid = [float(t) for t in thresholds.split(",")]
        pairs = lfw_pairs(pairs_file, root) if pairs_file else folder_pairs(root)
    except ValueError as error:
        sys.exit(f"error: {error}")
    if not pairs:
        sys.exit(f"error: no labelled pair in {root}: a folder per person, or --pairs")
    priors = load_params(params_path, profile).priors(models_dir)
    try:
        analyzer = priors.recogniser(recogniser)
    except FileNotFoundError as error:
        sys.exit(f"error: {error}")

    def progress(paths):
        return tqdm(paths, unit="image", desc="faces")

    result = calibrate(pairs, analyzer, progress)
    click.echo(calibration_report(result, recogniser, fmr, grid))
