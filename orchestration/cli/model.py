"""`cameo model log|list|promote|summary|accounts`: the registered model `cameo-inpaint`, the
architecture's size, and the tracking server's accounts."""

from __future__ import annotations

import json
from pathlib import Path

import click

from orchestration.cli.options import params_option, profile_option


@click.group()
def model() -> None:
    """The registered model `cameo-inpaint` in MLflow: log checkpoints, list, promote; and the
    model's parameter counts."""


@model.command("log")
@click.option(
    "--checkpoint",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A checkpoint folder written by training (save_checkpoint).",
)
@params_option
@profile_option
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

    from orchestration.params import load_params
    from serving.registry import log_model, registered_weights, weights_sha256
    from training.tracking import REGISTERED_MODEL, configure_tracking

    configure_tracking()
    params = load_params(params_path, profile)
    digest = weights_sha256(checkpoint)
    existing = None if no_register else registered_weights(digest)
    if existing is not None:
        click.echo(
            f"the weights of {checkpoint} are {REGISTERED_MODEL} version {existing.version} "
            f"already (logged by run {existing.run_id}): nothing logged"
        )
        click.echo(f"serve it with: cameo model promote {existing.version} && make serve")
        return
    with mlflow.start_run(run_name=f"log {checkpoint.resolve().name}"):
        info = log_model(
            checkpoint,
            profile=params.profile,
            models_dir=models_dir,
            registered_model_name=None if no_register else REGISTERED_MODEL,
            settings=params.served(),
            weights_digest=digest,
        )
    click.echo(f"logged {info.model_uri} (run {info.run_id})")
    if info.registered_model_version is not None:
        version = info.registered_model_version
        click.echo(f"registered {REGISTERED_MODEL} version {version}")
        click.echo(f"serve it with: cameo model promote {version} && make serve")


@model.command("list")
def model_list() -> None:
    """Every version of `cameo-inpaint`, newest first, with aliases, lineage and how it was
    logged (from code, or pickled: those must be re-logged)."""
    from serving.registry import model_versions
    from training.tracking import REGISTERED_MODEL, configure_tracking

    configure_tracking()
    versions = model_versions()
    if not versions:
        click.echo("no registered versions: cameo model log --checkpoint DIR")
    for v in versions:
        aliases = f" @{', @'.join(v.aliases)}" if v.aliases else ""
        click.echo(
            f"version {v.version}{aliases}  {v.created:%Y-%m-%d %H:%M}  profile {v.profile}  "
            f"run {v.training_run_id}  dataset {v.dataset_md5}  logged as {v.logged_as}"
        )
    pickled = [v.version for v in versions if v.logged_as == "pickle"]
    if pickled:
        first = pickled[0]
        click.echo(
            f"re-log version(s) {', '.join(pickled)}: pickled, they load only while "
            "MLFLOW_ALLOW_PICKLE_DESERIALIZATION is true (MLflow's default); e.g. "
            f"mlflow artifacts download -u models:/{REGISTERED_MODEL}/{first} -d v{first} && "
            f"cameo model log --checkpoint v{first}/artifacts/checkpoint"
        )


@model.command("promote")
@click.argument("version")
@click.option("--alias", default="champion", show_default=True, help="The alias to move.")
def model_promote(version: str, alias: str) -> None:
    """Point the alias (what `make serve` serves) at VERSION (a number, or `latest`);
    promoting the previous version again rolls back."""
    from serving.artifacts import ModelArtifactsError
    from serving.registry import promote
    from training.tracking import REGISTERED_MODEL, configure_tracking

    configure_tracking()
    try:
        previous = promote(version, alias)
    except ModelArtifactsError as error:
        raise click.ClickException(str(error)) from None
    if version == "latest":
        import mlflow

        version = mlflow.MlflowClient().get_model_version_by_alias(REGISTERED_MODEL, alias).version
    click.echo(f"{REGISTERED_MODEL}@{alias}: version {previous or '-'} -> {version}")
    if previous is not None and previous != version:
        click.echo(f"roll back with: cameo model promote {previous} --alias {alias}")
    click.echo("a running server keeps the version it loaded: restart it (make serve)")


@model.command("accounts")
@click.option(
    "--passwords-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="One file per account, named after it, holding its password (a mounted Secret).",
)
def model_accounts(passwords_dir: Path) -> None:
    """As the tracking server's admin (MLFLOW_TRACKING_USERNAME/PASSWORD), create or update the
    services' accounts of `mlflow server --app-name cameo-auth` and their permissions; run it
    again after changing a password (training/tracking_auth.py)."""
    from training.tracking_auth import TRACKING_ACCOUNTS, create_accounts

    missing = [name for name in TRACKING_ACCOUNTS if not (passwords_dir / name).is_file()]
    if missing:
        raise click.ClickException(f"no password file in {passwords_dir} for {missing}")
    passwords = {name: (passwords_dir / name).read_text().strip() for name in TRACKING_ACCOUNTS}
    create_accounts(passwords)
    for name, permissions in TRACKING_ACCOUNTS.items():
        granted = ", ".join(f"{kind} {level}" for kind, level in permissions.items())
        click.echo(f"{name}: {granted or 'reads only'}")


@model.command("summary")
@click.option(
    "--config",
    "config_name",
    default="sdxl",
    show_default=True,
    help="A config of training.model.CONFIGS (sdxl, tiny).",
)
def model_summary(config_name: str) -> None:
    """Parameter counts of every component as JSON, built on the meta device (no weights)."""
    from training.model import CONFIGS, summary

    if config_name not in CONFIGS:
        choices = ", ".join(sorted(CONFIGS))
        raise click.BadParameter(f"{config_name!r} is not one of {choices}", param_hint="--config")
    click.echo(json.dumps(summary(CONFIGS[config_name]), indent=2))
