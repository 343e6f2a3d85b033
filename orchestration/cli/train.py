"""`cameo train`: train here (one process, or every rank of a torchrun launch) or as a
Kubernetes Job, then register the trained model.

    cameo train --steps 6                                          # one process
    torchrun --nproc-per-node 8 -m orchestration.cli.train         # one node, 8 GPUs
    cameo train --submit k8s                                       # a Kubernetes Job

The same options everywhere; torchrun runs this module on every rank.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource

from orchestration.cli.options import params_option, profile_option
from orchestration.environment import configure_local_environment
from training.cpu_kernels import pin_cpu_kernels

if TYPE_CHECKING:
    from orchestration.params import Params
    from training.loop import TrainingResult
    from training.params import TrainingParams


@click.command("train")
@params_option
@profile_option
@click.option(
    "--config", type=click.Choice(["sdxl", "tiny"]), help="Model config (training.config)."
)
@click.option("--steps", type=int, help="Total optimiser steps (training.max_steps).")
@click.option(
    "--learning-rate",
    type=float,
    help="Of the face branch and Pose-IdentityNet (training.learning_rate).",
)
@click.option("--stop-after", type=int, help="Leave after this step (resumable).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint.")
@click.option("--run-name", help="MLflow run name.")
@click.option("--data", "data_root", help="Data root (default: $CAMEO_DATA or ./data).")
@click.option("--models", "models_dir", envvar="CAMEO_MODELS", help="Models directory.")
@click.option("--output-dir", help="Checkpoints folder (training.output_dir).")
@click.option(
    "--lock", default="dvc.lock", show_default=True, help="The dvc.lock naming the dataset."
)
@click.option(
    "--unlocked",
    is_flag=True,
    help="Train on data/triplets even when dvc.lock does not version it.",
)
@click.option(
    "--no-build-features",
    is_flag=True,
    help="Stop with an error where the features stage is missing or stale, instead of "
    "building it first (as `cameo features build` does).",
)
@click.option(
    "--record-forward-digests",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the digest of every module's output in the first training step to this file "
    "(to compare machines layer by layer).",
)
@click.option(
    "--compare-forward-digests",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Compare the first training step with a --record-forward-digests file; stop naming "
    "the first module whose output differs.",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option(
    "--check",
    is_flag=True,
    help="Check params, the dataset (and its version) and the weights' folders, then exit.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Build the configured model at full size without weights (meta device), check the "
    "trainable set and the dtypes, print the parameters and the predicted memory per GPU, "
    "then exit; needs no dataset, models directory or MLflow.",
)
@click.option(
    "--no-register", is_flag=True, help="Do not register the trained model as cameo-inpaint."
)
@click.option(
    "--submit",
    type=click.Choice(["local", "k8s"]),
    default="local",
    show_default=True,
    help="k8s: run as a Kubernetes Job rendered from params.yaml's `kubernetes` section.",
)
@click.pass_context
def train_command(
    ctx: click.Context,
    params_path: str,
    profile: str | None,
    config: str | None,
    steps: int | None,
    learning_rate: float | None,
    stop_after: int | None,
    resume: bool,
    run_name: str | None,
    data_root: str | None,
    models_dir: str | None,
    output_dir: str | None,
    lock: str,
    unlocked: bool,
    no_build_features: bool,
    record_forward_digests: Path | None,
    compare_forward_digests: Path | None,
    no_progress: bool,
    check: bool,
    dry_run: bool,
    no_register: bool,
    submit: str,
) -> TrainingResult | None:
    """Train the identity branches and Pose-IdentityNet on the DVC-versioned triplets, logged
    to MLflow (rank 0), and register the result as the MLflow model cameo-inpaint.

    Several GPUs: torchrun --nproc-per-node N -m orchestration.cli.train [same options]. On a
    cluster: `cameo train --submit k8s [same options]`; the params file becomes the cluster's
    cameo-params ConfigMap, the other options go to the Job's training command.

    Features missing or stale (right after `cameo dataset build`) are built first, by rank 0
    while the other ranks wait; --no-build-features refuses instead.
    """
    from core.params import ParamsError
    from orchestration.params import load_params

    try:
        values = load_params(params_path, profile)
        overrides = {
            "config": config,
            "max_steps": steps,
            "learning_rate": learning_rate,
            "output_dir": output_dir,
        }
        training = values.training.updated(
            "training", **{k: v for k, v in overrides.items() if v is not None}
        )
    except ParamsError as error:
        sys.exit(f"error: {error}")
    if dry_run:
        print_dry_run(training)
        return None
    if submit == "k8s":
        submit_training_job(params_path, values, forwarded_options(ctx))
        return None
    if training.portable_cpu_kernels:
        pin_cpu_kernels()

    import torch.distributed as dist

    from training.checks import TrainingError, check_inputs
    from training.forward_digests import ForwardDigestsRequest
    from training.loop import train

    lock_file = None if unlocked else lock
    if record_forward_digests and compare_forward_digests:
        sys.exit("error: --record-forward-digests or --compare-forward-digests, not both")
    forward_digests = None
    if record_forward_digests or compare_forward_digests:
        forward_digests = ForwardDigestsRequest(
            record_forward_digests or compare_forward_digests,
            compare=compare_forward_digests is not None,
        )
    try:
        if check:
            md5 = check_inputs(
                training, data_root, models_dir, lock_file, features_required=no_build_features
            )
            click.echo(f"ready to train on dataset {md5}")
            return None
        result = train(
            training,
            data_root=data_root,
            models_dir=models_dir,
            lock_file=lock_file,
            resume=resume,
            run_name=run_name,
            profile=values.profile,
            stop_after=stop_after,
            show_progress=not no_progress,
            on_finished=None if no_register else register_model(values, models_dir),
            priors=values.priors(models_dir),
            evaluation=values.evaluation,
            build_missing_features=not no_build_features,
            forward_digests=forward_digests,
        )
    except (TrainingError, ParamsError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if result.rank == 0 and result.finished:
        click.echo(
            f"MLflow run {result.run_id} already finished at step {result.step} "
            f"({result.final_dir}): nothing trained, nothing registered"
        )
    elif result.rank == 0:  # one line per launch, not per rank
        click.echo(
            f"trained {result.step} steps on dataset {result.dataset_md5}: "
            f"MLflow run {result.run_id}, checkpoint {result.final_dir}"
        )
    return result


def print_dry_run(training: TrainingParams) -> None:
    """`--dry-run`: the report of `training.dry_run`; a failed check, or a predicted total over
    the budget, exits non-zero with one line naming it."""
    from training.dry_run import GIB, DryRunError, dry_run

    try:
        report = dry_run(training)
    except DryRunError as error:
        sys.exit(f"error: {error}")
    click.echo(report.table())
    if not report.fits:
        sys.exit(
            f"error: predicted {report.memory.total / GIB:.1f} GiB per GPU, over the article's "
            "80 GB budget"
        )


def forwarded_options(ctx: click.Context) -> list[str]:
    """The options given on the command line, as the Job's training command takes them; not
    `--params` (the file travels as the ConfigMap) nor `--submit`."""
    args: list[str] = []
    for param in ctx.command.params:
        name = param.name
        if name in ("params_path", "submit") or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            continue
        flag, value = param.opts[0], ctx.params[name]
        args += [flag] if param.is_flag else [flag, str(value)]
    return args


def register_model(values: Params, models_dir: str | None) -> Callable[[Path], None]:
    """At the end of training, in its MLflow run (rank 0): log the final checkpoint as the
    `cameo-inpaint` pyfunc model and register a new version. Training never imports serving;
    the command that runs it does."""

    def log(final_dir: Path) -> None:
        from serving.registry import log_model, registered_weights, weights_sha256

        digest = weights_sha256(final_dir)
        existing = registered_weights(digest)
        if existing is not None:
            click.echo(
                f"the weights of {final_dir} are cameo-inpaint version {existing.version} "
                "already: nothing registered"
            )
            return
        info = log_model(
            final_dir,
            profile=values.profile,
            models_dir=models_dir,
            settings=values.served(),
            weights_digest=digest,
        )
        click.echo(
            f"registered {info.registered_model_version} of cameo-inpaint ({info.model_uri})"
        )

    return log


def submit_training_job(params_path: str, values: Params, args: list[str]) -> None:
    """`cameo train --submit k8s`: create the Job, stream its pods' logs, report the run."""
    from orchestration.kubernetes import TrainingJobFailed, submit_training

    try:
        job = submit_training(params_path, values.kubernetes, args, log=click.echo)
    except TrainingJobFailed as error:
        sys.exit(f"error: {error}")
    click.echo(
        f"job {job.namespace}/{job.name}: MLflow run {job.run_id} on "
        f"{values.kubernetes.mlflow_tracking_uri}, checkpoints in {job.output_dir}"
    )


@click.command("relog")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def relog_command(path: Path) -> None:
    """Log what a training run could not log while MLflow was away (PATH: the run's
    unlogged.json, in its output folder) into the same run, once the server is back."""
    from training.run_log import relog
    from training.tracking import configure_tracking

    configure_tracking()
    logged = relog(path, output=click.echo)
    click.echo(f"logged {logged} metric values; {path} removed")


if __name__ == "__main__":  # torchrun … -m orchestration.cli.train
    configure_local_environment()
    train_command()
