"""The `evaluation` asset: the trained model scored on the validation triplets, with its
ablations, logged into the training run (`training.evaluation_log.evaluate_logged_model`, the
same code as `cameo evaluate`), and a blocking check on face similarity.

The check reads what the asset recorded, so it can be re-run alone from the UI; its threshold
is params.yaml's `evaluation.min_face_similarity` (null, as in the `tiny` profile: the check
warns that it judged nothing).
"""

import math

import dagster as dg

from core.versioning import source_version
from orchestration.training_assets import REGISTERED_MODEL_KEYS
from training.tracking import configure_tracking, run_url

FACE_CHECK = "face_similarity_above_threshold"
# The entry modules of the asset's code version: this module, and the served model's code file
# (`serving.artifacts.MODEL_CODE`), which MLflow runs when the asset loads the trained model.
EVALUATION_CODE_MODULES = (__name__, "serving.logged_model")


def logged_model_uri(run_id: str, experiment_id: str) -> str:
    """The newest model logged by training run `run_id`, as a `models:/<model id>` URI."""
    import mlflow

    models = mlflow.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        order_by=[{"field_name": "creation_time", "ascending": False}],
        output_format="list",
    )
    if not models:
        raise dg.Failure(
            description=f"training run {run_id} logged no model: train without --no-register"
        )
    return f"models:/{models[0].model_id}"


def face_similarity_check(similarity: float, threshold: float | None) -> dg.AssetCheckResult:
    """Passes when the full model's mean face similarity reaches `threshold`. With no threshold
    (None) nothing was judged: a warning that says so (yellow in the UI, blocking nothing),
    never a green pass."""
    found = "no face found in any output" if math.isnan(similarity) else f"{similarity:.3f}"
    if threshold is None:
        return dg.AssetCheckResult(
            check_name=FACE_CHECK,
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"not checked: evaluation.min_face_similarity is null in this profile "
            f"(mean face similarity {found})",
            metadata={"face_similarity": similarity},
        )
    passed = math.isfinite(similarity) and similarity >= threshold
    return dg.AssetCheckResult(
        check_name=FACE_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"mean face similarity {found}, threshold {threshold}",
        metadata={"face_similarity": similarity, "threshold": threshold},
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

    from training.evaluate import CALIBRATIONS, IDENTITY_METRICS, METRICS
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
    model_uri = logged_model_uri(training_run, experiment_id)
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
    return dg.MaterializeResult(
        metadata={
            "mlflow_run_id": run_id,
            "mlflow_run": dg.MetadataValue.url(run_url(experiment_id, run_id)),
            **registered,
            "model_uri": model_uri,
            "ablations": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".3f")),
            "samples": len(result.samples) // max(len(table), 1),
            # The model's own (the `full` ablation's) metrics, for the check and the UI.
            **{name: metrics[f"eval/{name}"] for name in METRICS if f"eval/{name}" in metrics},
            # The calibrations' identity: the scale the model's similarity is read against.
            **{
                f"{row}/{name}": metrics[f"eval/{row}/{name}"]
                for row in CALIBRATIONS
                for name in IDENTITY_METRICS
                if f"eval/{row}/{name}" in metrics
            },
            **{f"note_{name}": note for name, note in result.notes.items()},
            # What could not be scored (no face found, no keypoint visible), and why.
            **{f"not_scored_{key}": why for key, why in result.unscored().items()},
        },
        data_version=dg.DataVersion(f"{run_id}:{model_uri}"),
    )


@dg.asset_check(asset=evaluation, name=FACE_CHECK, blocking=True, required_resource_keys={"params"})
def face_similarity_above_threshold(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    """The full model's mean face similarity on the validation triplets is at least
    `evaluation.min_face_similarity` (a warning, not a pass, where that is null)."""
    event = context.instance.get_latest_materialization_event(evaluation.key)
    if event is None or event.asset_materialization is None:
        return dg.AssetCheckResult(passed=False, description="evaluation was never materialised")
    recorded = event.asset_materialization.metadata.get("face_similarity")
    similarity = float(recorded.value) if recorded is not None else math.nan
    threshold = context.resources.params.values.evaluation.min_face_similarity
    return face_similarity_check(similarity, threshold)
