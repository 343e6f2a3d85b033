"""Dagster runs of the dataset stages, as `cameo dataset build` executes them.

One `movie_job` run per movie partition (the stages it lacks, with their checks), then a
`triplets_job` run for the dataset; each run's failures, failed checks and warnings come back
as a `PartitionOutcome`. Dagster is imported inside the functions, so that the command line
starts fast.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

# The stage names, in order (orchestration.dataset_definitions.STAGE_NAMES; a test keeps them
# equal).
STAGE_CHOICES = (
    "frames",
    "faces",
    "characters",
    "masks",
    "poses",
    "captions",
    "references",
    "triplets",
)
DATASET_STAGE = "triplets"


@dataclass
class PartitionOutcome:
    movie: str
    success: bool
    message: str
    warnings: list[str] = field(default_factory=list)
    # Each materialised asset's metadata, as plain values (what the UI shows).
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)


def one_line(text: str) -> str:
    return " ".join(text.split())


def stages_until(until: str) -> list[str]:
    return list(STAGE_CHOICES[: STAGE_CHOICES.index(until) + 1])


def unknown_movie(key: str, known: list[str]) -> str:
    """No movie for `key`: say so, with the partition key it most likely meant."""
    from core.layout import slugify

    close = [slugify(key)] if slugify(key) in known else difflib.get_close_matches(key, known, 1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"no movie file for partition key {key!r}{hint}"


def failure_message(event) -> str:
    """The real cause of a failed step or run, on one line: a stage's own failure
    description (which names the movie file), else the innermost exception Dagster wrapped
    (e.g. the params or models problem that stopped a resource)."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return one_line(user.description)
    error = data.error
    while error.cause is not None:
        error = error.cause
    return one_line(error.message)


def materialize_stages(
    movie: str | None,
    stages: list[str],
    instance: dg.DagsterInstance,
    resources: dict,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> PartitionOutcome:
    """Materialise, on `instance`, the per-movie `stages` (with their checks) of partition
    `movie` in a `movie_job` run, or (movie None) the dataset in a `triplets_job` run; with the
    dataset's definitions alone (the build loads no training code)."""
    from orchestration.dataset_definitions import build_dataset_definitions

    job = "triplets_job" if movie is None else "movie_job"
    defs = build_dataset_definitions(resources)
    return materialize(defs, job, stages, instance, movie, log_level, tags)


def materialize(
    defs: dg.Definitions,
    job_name: str,
    assets: list[str],
    instance: dg.DagsterInstance,
    partition: str | None = None,
    log_level: str = "WARNING",
    tags: dict[str, str] | None = None,
) -> PartitionOutcome:
    """Materialise `assets` (with their checks) of `defs`'s job `job_name` on `instance`, as
    the UI would; the outcome names the run, or each failure's cause in one line."""
    import dagster as dg

    job = defs.resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition,
        asset_selection=[dg.AssetKey(name) for name in assets],
        raise_on_error=False,
        # The assets in the tags: the runs list tells a features run from a model run.
        tags={"cameo/source": "cli", "cameo/assets": ",".join(assets), **(tags or {})},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    # A check failing at WARN severity blocks nothing: a warning, not a failure of the run.
    failed_checks, check_warnings = [], []
    for e in result.get_asset_check_evaluations():
        if not e.passed:
            check = f"check {e.asset_key.to_user_string()}.{e.check_name}"
            if e.severity == dg.AssetCheckSeverity.WARN:
                check_warnings.append(f"{check}: {e.description}")
            else:
                failed_checks.append(f"{check} failed: {e.description}")
    step_errors = [
        failure_message(e)
        for e in result.all_events
        if (e.is_step_failure or e.is_run_failure)
        and getattr(e.event_specific_data, "error", None) is not None
        # A failed blocking check is reported below, with its description.
        and e.event_specific_data.error.cls_name != "DagsterAssetCheckFailedError"
    ]
    warnings = check_warnings + [
        str(m.materialization.metadata["warning"].value)
        for m in result.get_asset_materialization_events()
        if m.materialization.metadata.get("warning") and m.materialization.metadata["warning"].value
    ]
    metadata = {
        m.materialization.asset_key.to_user_string(): {
            key: getattr(value, "value", value) for key, value in m.materialization.metadata.items()
        }
        for m in result.get_asset_materialization_events()
    }
    problems = step_errors + failed_checks
    name = partition or ", ".join(assets)
    if result.success and not problems:
        return PartitionOutcome(name, True, f"run {result.run_id}", warnings, metadata)
    message = "; ".join(problems) or f"run {result.run_id} failed"
    return PartitionOutcome(name, False, message, warnings, metadata)


def fail_interrupted_runs(instance, data_root: str) -> list[str]:
    """Mark failed the runs of earlier builds on this data dir still recorded as running:
    the caller holds the build lock, so their process is gone (killed)."""
    import dagster as dg

    active = [
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.NOT_STARTED,
    ]
    runs = instance.get_runs(
        dg.RunsFilter(statuses=active, tags={"cameo/source": "cli", "cameo/data": data_root})
    )
    for run in runs:
        instance.report_run_failed(run, message="interrupted: its build process is gone")
    return [run.run_id for run in runs]


def sync_movie_partitions(instance, found: Collection[str]) -> None:
    """Make the movie partitions the files present: new ones added, those of removed files
    gone."""
    from assets.partitions import movie_partitions

    registered = set(instance.get_dynamic_partitions(movie_partitions.name))
    instance.add_dynamic_partitions(
        movie_partitions.name, [k for k in sorted(found) if k not in registered]
    )
    for gone in sorted(registered - set(found)):
        instance.delete_dynamic_partition(movie_partitions.name, gone)
