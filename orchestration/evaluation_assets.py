"""The `evaluation` asset: the trained model scored on the validation triplets, with its
ablations, logged into the training run (`training.evaluation_log.evaluate_logged_model`, the
same code as `cameo evaluate`), and a blocking identity gate that punishes copying.

The gate reads what the asset recorded, so it can be re-run alone from the UI. It passes only
when the full model's outputs have a face (`evaluation.min_face_found`), enough of them keep
the target's identity (sim_gt at least `evaluation.min_face_similarity` in a share
`evaluation.min_identity_share` of all outputs: one good face in sixteen is not enough), and
its copy-paste stays below the `paste` calibration's (copying the reference is not identity).
With `min_face_similarity` null (the `tiny` profile) it warns that it judged nothing.
"""

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from core.io import write_json
from core.versioning import source_version
from orchestration.environment import cameo_environment
from orchestration.training_assets import REGISTERED_MODEL_KEYS
from training.outputs import EVALUATION_FILE
from training.params import EvaluationParams
from training.tracking import configure_tracking, run_url

if TYPE_CHECKING:
    import pandas as pd

IDENTITY_CHECK = "identity_kept_without_copying"
# Decimals of the figures the DVC metrics file keeps: the figures' own noise is far larger.
METRICS_DECIMALS = 4
# The entry modules of the asset's code version: this module, and the served model's code file
# (`serving.artifacts.MODEL_CODE`), which MLflow runs when the asset loads the trained model.
EVALUATION_CODE_MODULES = (__name__, "serving.logged_model")


def logged_model_uri(run_id: str, experiment_id: str, checkpoint: Path | None = None) -> str:
    """The newest model logged by training run `run_id`, as a `models:/<model id>` URI; where
    the run logged none because its weights were registered already (training again gave the
    same weights, which `cameo train` does not register twice), the registered version that
    holds the weights in `checkpoint`."""
    import mlflow

    from serving.registry import registered_weights, weights_sha256

    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if models:
        return f"models:/{models[0].model_id}"
    version = None
    if checkpoint is not None and checkpoint.is_dir():
        version = registered_weights(weights_sha256(checkpoint))
    if version is None:
        raise dg.Failure(
            description=f"training run {run_id} logged no model: train without --no-register"
        )
    return f"models:/{version.name}/{version.version}"


@dataclass(frozen=True)
class IdentityFigures:
    """What the gate judges, as the asset records them (NaN: not scored)."""

    face_found: float  # share of the full model's outputs with a face
    identity_share: float  # share of them whose sim_gt reaches min_face_similarity
    copy_paste: float  # the full model's copy-paste
    paste_copy_paste: float  # the `paste` calibration's: what copying the reference scores


def identity_share(samples: "pd.DataFrame", threshold: float | None) -> float:
    """The share of the full model's outputs whose sim_gt reaches `threshold` (an output
    without a face counts as missing it); NaN without a threshold or outputs."""
    from training.evaluate import FULL

    full = samples[samples["ablation"] == FULL]
    if threshold is None or full.empty:
        return math.nan
    return float((full["face_similarity_gt"].fillna(-1.0) >= threshold).mean())


def identity_gate(figures: IdentityFigures, params: EvaluationParams) -> dg.AssetCheckResult:
    """Passes when the outputs have faces, keep the target's identity often enough, and copy
    less than pasting the reference does; each failure names its number. Without a
    similarity threshold: a warning that nothing was judged (yellow, blocking nothing)."""
    # A figure not scored is left out: the UI would show an empty row.
    metadata = {k: float(v) for k, v in asdict(figures).items() if not math.isnan(v)}
    if params.min_face_similarity is None:
        return dg.AssetCheckResult(
            check_name=IDENTITY_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description="not checked: evaluation.min_face_similarity is null in this profile "
            f"(faces found in {figures.face_found:.2f} of the outputs)",
            metadata=metadata,
        )
    failures = []
    if not figures.face_found >= params.min_face_found:
        failures.append(
            f"a face in {figures.face_found:.2f} of the outputs, below {params.min_face_found}"
        )
    if not figures.identity_share >= params.min_identity_share:
        failures.append(
            f"sim_gt >= {params.min_face_similarity} in {figures.identity_share:.2f} of the "
            f"outputs, below {params.min_identity_share}"
        )
    if figures.copy_paste >= figures.paste_copy_paste:
        failures.append(
            f"copy-paste {figures.copy_paste:.3f}, not below the pasted reference's "
            f"{figures.paste_copy_paste:.3f}: the model copies the reference"
        )
    unjudged = math.isnan(figures.copy_paste) or math.isnan(figures.paste_copy_paste)
    said = "; ".join(failures) or (
        f"a face in {figures.face_found:.2f} of the outputs, sim_gt >= "
        f"{params.min_face_similarity} in {figures.identity_share:.2f}, copy-paste "
        + ("not scored" if unjudged else f"{figures.copy_paste:.3f} below the paste row's")
    )
    return dg.AssetCheckResult(
        check_name=IDENTITY_CHECK,
        passed=not failures,
        severity=dg.AssetCheckSeverity.ERROR,
        description=said,
        metadata=metadata,
    )


@dg.asset(
    deps=["model"],
    required_resource_keys={"data", "params"},
    group_name="training",
    kinds={"mlflow"},
    code_version=source_version(*EVALUATION_CODE_MODULES),
)
def evaluation(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """The trained model's identity, pose, prompt and colour metrics on the validation
    triplets, for the model and each ablation, logged into its MLflow run."""
    # Imported here: the code location loads in every step process and step pod, torch not.
    import mlflow

    from training.evaluate import CALIBRATIONS, FULL, IDENTITY_METRICS, METRICS
    from training.evaluation_log import evaluate_logged_model

    params = context.resources.params
    # The training run the `model` asset recorded (locally or as a Kubernetes Job).
    trained = context.instance.get_latest_materialization_event(dg.AssetKey("model"))
    if trained is None or trained.asset_materialization is None:
        raise dg.Failure(description="model was never materialised: train first")
    recorded = trained.asset_materialization.metadata
    training_run = str(recorded["mlflow_run_id"].value)
    # The registered version the model asset recorded: what a user looks for first.
    registered = {key: recorded[key] for key in REGISTERED_MODEL_KEYS if key in recorded}
    configure_tracking()
    experiment_id = mlflow.get_run(training_run).info.experiment_id
    checkpoint = Path(str(recorded["checkpoint"].value)) if "checkpoint" in recorded else None
    model_uri = logged_model_uri(training_run, experiment_id, checkpoint)
    context.log.info(f"evaluating {model_uri} of run {training_run}")
    values = params.values
    result, run_id = evaluate_logged_model(
        model_uri,
        values.training,
        values.evaluation,
        values.faces,
        values.poses,
        data_root=context.resources.data.layout.root,
    )
    table, metrics = result.summary(), result.metrics()
    figures = {
        key.removeprefix("eval/"): value
        for key, value in metrics.items()
        if key.count("/") == 1 and key.removeprefix("eval/").startswith(METRICS)
    }
    if cameo_environment() == "local":  # on a cluster, DVC's chain is not this one
        # DVC's metrics of the `evaluate` stage, beside training's (`dvc metrics show`).
        rounded = {key: round(value, METRICS_DECIMALS) for key, value in figures.items()}
        write_json(rounded, Path(values.training.output_dir).resolve() / EVALUATION_FILE)
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_url(experiment_id, run_id)),
            **registered,
            "model_uri": model_uri,
            # Each identity figure as `mean [95 % interval] n=N`.
            "ablations": dg.MetadataValue.md(
                result.readable_summary().to_markdown(index=False, floatfmt=".3f")
            ),
            "samples": len(result.samples) // max(len(table), 1),
            # The model's means per triplet source (movie, single, synthetic).
            "by_source": dg.MetadataValue.md(
                result.readable_summary(by=("source", "ablation"))
                .query(f"ablation == '{FULL}'")
                .drop(columns="ablation")
                .to_markdown(index=False, floatfmt=".3f")
            ),
            "identity_share": identity_share(result.samples, values.evaluation.min_face_similarity),
            # The model's own (the `full` ablation's) metrics, for the gate and the UI, each
            # identity figure with its n and 95 % interval.
            **figures,
            # The calibrations' identity: the scale the model's similarity is read against.
            **{
                key.removeprefix("eval/"): value
                for key, value in metrics.items()
                if key.split("/")[1] in CALIBRATIONS
                and key.split("/")[-1].startswith(IDENTITY_METRICS)
            },
            **{f"note_{name}": note for name, note in result.notes.items()},
            # What could not be scored (no face found, no keypoint visible), and why.
            **{f"not_scored_{key}": why for key, why in result.unscored().items()},
        },
        data_version=dg.DataVersion(f"{run_id}:{model_uri}"),
    )


@dg.asset_check(
    asset=evaluation, name=IDENTITY_CHECK, blocking=True, required_resource_keys={"params"}
)
def identity_kept_without_copying(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The full model's outputs have faces, keep the target's identity often enough and copy
    less than pasting the reference (a warning, not a pass, where no threshold is set)."""
    event = context.instance.get_latest_materialization_event(evaluation.key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(passed=False, description="evaluation was never materialised")
    recorded = event.asset_materialization.metadata

    def figure(key: str) -> float:
        return float(recorded[key].value) if key in recorded else math.nan

    figures = IdentityFigures(
        face_found=figure("face_found"),
        identity_share=figure("identity_share"),
        copy_paste=figure("face_copy_paste"),
        paste_copy_paste=figure("paste/face_copy_paste"),
    )
    return identity_gate(figures, context.resources.params.values.evaluation)
