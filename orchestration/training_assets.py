"""The `model` asset: training on the triplets, as a subprocess locally (CAMEO_ENV=local), as
a Kubernetes Job on a cluster (CAMEO_ENV=k8s).

The training loop is `python -m orchestration.cli.train` (`cameo train`: the same line torchrun
and the Kubernetes Job run); the asset starts it, streams its output into the run's logs and
records what it made: the MLflow run, the dataset version, the final losses.
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

import dagster as dg
import pandas as pd

from core.io import write_json
from core.versioning import LOCK_FILE, dvc_md5, locked_md5, source_version
from orchestration.environment import cameo_environment
from orchestration.kubernetes import TrainingJob, TrainingJobFailed, submit_training
from orchestration.params import Params
from training.outputs import FINAL_DIR, METRICS_FILE, RUN_FILE
from training.tracking import configure_tracking, model_version_url, run_url

LOSS_CHECK = "loss_decreases"
BUILD_FILE = "build.json"  # beside final/: the dataset, params and code it was trained from
TRAIN_MODULE = "orchestration.cli.train"  # `cameo train`, which the model asset runs
# The entry modules of each asset's code version: this module, and the command the asset runs
# as its own process (the same code a Kubernetes Job runs), which it does not import.
FEATURES_CODE_MODULES = (__name__, "orchestration.cli.features")
MODEL_CODE_MODULES = (__name__, TRAIN_MODULE)
MODEL_CODE_VERSION = source_version(*MODEL_CODE_MODULES)
FEATURES_CHECK = "features_cover_the_dataset"
# The metadata naming the registered version (`registered_model_metadata`), also the evaluation's.
REGISTERED_MODEL_KEYS = ("registered_model", "registered_model_page")


def features_check(manifest: pd.DataFrame, store: Path, index: dict) -> dg.AssetCheckResult:
    """Every triplet of `manifest` has an index entry whose shard exists in `store`."""
    samples = index["samples"]
    missing = [t for t in manifest["triplet_id"] if t not in samples]
    absent = sorted({e["shard"] for e in samples.values()} - {p.name for p in store.iterdir()})
    problems = [f"{len(missing)} triplet(s) without features"] * bool(missing)
    problems += [f"shards missing: {', '.join(absent)}"] * bool(absent)
    return dg.AssetCheckResult(
        check_name=FEATURES_CHECK,
        passed=not problems,
        severity=dg.AssetCheckSeverity.ERROR,
        description="; ".join(problems) or f"{len(manifest)} triplets, every one stored",
    )


def run_training(
    what: str, command: list[str], env: dict[str, str], log: dg.DagsterLogManager
) -> None:
    """Run a training command (`what`: training, the features), its output line by line into
    the Dagster log; a failure raises with the command's last lines (the error names its
    cause)."""
    tail: deque[str] = deque(maxlen=20)
    # MLflow's artifact progress bars would fill the run's log (the command's own are off).
    env = {**env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            # What a terminal would show of a redrawn line; no empty entries in the log.
            shown = line.rstrip().rpartition("\r")[2].strip()
            if shown:
                tail.append(shown)
                log.info(shown)
    if process.returncode != 0:
        cause = tail[-1] if tail else "no output"
        raise dg.Failure(
            description=f"{what} exited with status {process.returncode}: {cause}",
            metadata={"output": dg.MetadataValue.md("```\n" + "\n".join(tail) + "\n```")},
        )


def run_training_job(
    params_path: str, values: Params, args: list[str], log: dg.DagsterLogManager
) -> TrainingJob:
    """Train as a Kubernetes Job (CAMEO_ENV=k8s), its pods' logs into the Dagster log; a failed
    Job fails the step with each failed pod's reason."""
    try:
        return submit_training(params_path, values.kubernetes, args, log=log.info)
    except TrainingJobFailed as error:
        raise dg.Failure(description=str(error)) from error


def loss_check(metrics: dict[str, float]) -> dg.AssetCheckResult:
    first, last = metrics.get("loss_first", math.nan), metrics.get("loss_last", math.nan)
    finite = math.isfinite(first) and math.isfinite(last)
    passed = finite and last < first
    return dg.AssetCheckResult(
        check_name=LOSS_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"mean loss of the first quarter {first:.4f}, of the last quarter {last:.4f}"
            + ("" if finite else ": non-finite")
            + ("" if passed else ": the loss did not decrease")
        ),
        metadata={"loss_first": first, "loss_last": last},
    )


@dg.asset(
    deps=["triplets"],
    required_resource_keys={"data", "params"},
    group_name="training",
    kinds={"pytorch", "safetensors"},
    code_version=source_version(*FEATURES_CODE_MODULES),
    check_specs=[
        dg.AssetCheckSpec(
            FEATURES_CHECK,
            asset="features",
            blocking=True,
            description="every triplet of the dataset has features, in a shard that exists",
        )
    ],
)
def features(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """What the frozen encoders make of each triplet (VAE latents, text and body tokens, face
    embedding, pose), computed once and memory-mapped by training (`cameo features build`)."""
    # Imported here: the code location loads in every step process and step pod, torch not.
    from training.data import load_manifest
    from training.features import INDEX, features_id

    params = context.resources.params
    layout = context.resources.data.layout
    # Its own process, as training: the CPU kernels can be pinned only before torch loads.
    command = [sys.executable, "-m", "orchestration.cli.main", "features", "build"]
    command += ["--params", params.path, "--profile", params.values.profile]
    command += ["--data", str(layout.root), "--no-progress"]
    run_training("the features stage", command, dict(os.environ), context.log)
    store = layout.features_dir / features_id(
        params.values.training, os.environ.get("CAMEO_MODELS")
    )
    index = json.loads((store / INDEX).read_text())
    shards = sorted(store.glob("shard-*.safetensors"))
    index_digest = hashlib.sha256(json.dumps(index, sort_keys=True).encode()).hexdigest()[:16]
    manifest = load_manifest(layout.triplets_dir)
    return dg.MaterializeResult(
        metadata={
            "store": dg.MetadataValue.path(str(store)),
            "triplets": len(index["samples"]),
            "dtype": index["dtype"],
            "shards": len(shards),
            "bytes": sum(p.stat().st_size for p in shards),
        },
        # The store and the index's digest: unchanged features leave the model current.
        data_version=dg.DataVersion(f"{store.name}:{index_digest}"),
        check_results=[features_check(manifest, store, index)],
    )


@dg.asset(
    deps=[features],
    required_resource_keys={"data", "params"},
    group_name="training",
    kinds={"pytorch", "mlflow"},
    code_version=MODEL_CODE_VERSION,
    check_specs=[
        dg.AssetCheckSpec(
            LOSS_CHECK,
            asset="model",
            blocking=True,
            description="the training loss is finite and its last quarter below its first",
        )
    ],
)
def model(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Train the identity branches and Pose-IdentityNet on the current triplets
    (`cameo train`), logged to MLflow; the trained checkpoint is the asset."""
    from training.data import load_manifest
    from training.model import CHECKPOINT_INFO

    params = context.resources.params
    layout = context.resources.data.layout
    k8s = cameo_environment() == "k8s"
    local_output = Path(params.values.training.output_dir).resolve()
    if not k8s:  # on a cluster the data and checkpoints are the pods' volumes, not here
        try:
            load_manifest(layout.triplets_dir)  # a missing dataset says what to run
        except (FileNotFoundError, ValueError) as error:
            raise dg.Failure(description=str(error)) from error
        md5 = dvc_md5(layout.triplets_dir)
        # What the model is a function of; the same again ("Materialize all") trains nothing.
        build = {
            "dataset_md5": md5,
            "params": params.values.training.model_dump(mode="json"),
            "profile": params.values.profile,
            "code_version": MODEL_CODE_VERSION,
        }
        current = local_output / BUILD_FILE
        trained = (local_output / FINAL_DIR / CHECKPOINT_INFO).is_file()
        if trained and current.is_file() and json.loads(current.read_text()) == build:
            context.log.info(f"the model in {local_output} is current: not retrained")
            return model_result(local_output, reused=True)
    # Locked where dvc.lock already versions these triplets (`dvc repro`); otherwise Dagster's
    # `triplets` is the version: its data version is the DVC md5 the run logs.
    locked = not k8s and locked_md5(layout.triplets_dir, Path(LOCK_FILE).resolve()) == md5
    training_args = [
        "--profile", params.values.profile,
        "--data", str(layout.root),
        *(["--lock", str(Path(LOCK_FILE).resolve())] if locked else ["--unlocked"]),
        "--no-progress",
    ]  # fmt: skip
    if k8s:
        # The same training as a Kubernetes Job; this step pod mounts its checkpoints claim.
        job = run_training_job(params.path, params.values, training_args, context.log)
        output_dir = Path(job.output_dir)
    else:
        command = [sys.executable, "-m", TRAIN_MODULE, "--params", params.path]
        run_training("training", [*command, *training_args], dict(os.environ), context.log)
        output_dir = local_output
        write_json(build, current)
    return model_result(output_dir, reused=False)


def registered_model_metadata(checkpoint: Path) -> dict[str, str | dg.MetadataValue]:
    """The registered version of `cameo-inpaint` holding these weights (`cameo train`
    registers each new set), with its aliases now and its page in the MLflow UI; nothing where
    none does (trained with --no-register). The model stays materialised when MLflow cannot
    say: the metadata then says why."""
    from mlflow.exceptions import MlflowException

    from serving.registry import registered_weights, weights_sha256

    name_key, page_key = REGISTERED_MODEL_KEYS
    try:
        configure_tracking()
        version = registered_weights(weights_sha256(checkpoint))
    except MlflowException as error:
        return {name_key: f"unknown: MLflow did not answer ({error.message})"}
    if version is None:
        return {}
    aliases = "".join(f" @{alias}" for alias in version.aliases)
    page = model_version_url(version.name, version.version)
    return {
        name_key: f"{version.name}/{version.version}{aliases}",
        page_key: dg.MetadataValue.url(page),
    }


def model_result(output_dir: Path, reused: bool) -> dg.MaterializeResult:
    """The `model` materialisation of the training recorded in `output_dir`."""
    result = {
        **json.loads((output_dir / METRICS_FILE).read_text()),
        **json.loads((output_dir / RUN_FILE).read_text()),
    }
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": result["run_id"],
            "mlflow_run": dg.MetadataValue.url(run_url(result["experiment_id"], result["run_id"])),
            **registered_model_metadata(output_dir / FINAL_DIR),
            "dataset_md5": result["dataset_md5"],
            "steps": result["step"],
            "loss_first": result["loss_first"],
            "loss_last": result["loss_last"],
            "checkpoint": dg.MetadataValue.path(str(output_dir / FINAL_DIR)),
            "reused": reused,
        },
        data_version=dg.DataVersion(result["run_id"]),
        check_results=[loss_check(result)],
    )
