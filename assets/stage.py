"""The one shape of every per-movie stage asset and its check, and the record of which
stages completed from what.

`movie_asset` turns a stage body into a partitioned Dagster asset; `movie_check` turns a
function that validates the stage's files into its blocking GX check (a check of its own, so
it can be re-run alone). Around the body the asset:

- resolves the partition's movie file (a clear error if it is gone) and removes temp files
  that killed processes left in the stage's folder;
- withdraws the completion record of this stage and every stage downstream before the
  body runs, so an interrupted or failed run never leaves earlier results looking current;
- writes the stage's record afterwards: `built` with what it was built from (the movie
  file's md5, the digest of the params the stage reads, and its `code_version`: the digest of
  the first-party source that its module imports, directly or not) and the body's
  `warning` metadata if any, or `failed` with the error; the check turns `built` into `ok`,
  or into `failed` with the failed check;
- publishes the table's row count and column schema, and a data version (the md5s of the
  stage's files), so Dagster marks downstream stale only when the output really changed;
- names the movie file in failures and in check descriptions.

A stage is current for a movie when its record is `ok` for the movie's md5, the params it
reads and its code version now (`incomplete_stage`). `cameo dataset build` rebuilds from the
first stage that is not; the triplets are built only from movies whose every stage is.
"""

import hashlib
import inspect
import json
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from assets.columns import column_description
from assets.params import DatasetParams
from assets.partitions import movie_partitions
from assets.steps import GPU_STEP_TAGS
from core.io import write_json
from core.layout import STAGE_STATUS_OK, DataLayout, source_fingerprint
from core.params import definition_profile
from core.versioning import dvc_md5, source_version

STAGE_STATUS_BUILT = "built"  # written, its check not passed yet


@dataclass(frozen=True)
class StageInputs:
    """What a per-movie stage's output is a function of, besides the movie file."""

    deps: tuple[str, ...]  # the stages it reads
    params: tuple[str, ...]  # the profile-merged params.yaml values it reads
    perception: bool = False  # runs models that the perception resource hands it


# Every per-movie stage, in build order. `profile` picks the models the stage runs.
STAGE_INPUTS: dict[str, StageInputs] = {
    "frames": StageInputs((), ("frames", "images")),
    "faces": StageInputs(("frames",), ("profile", "faces"), perception=True),
    "characters": StageInputs(("faces",), ("characters",)),
    "masks": StageInputs(("characters",), ("profile", "masks"), perception=True),
    "poses": StageInputs(("masks",), ("profile", "poses"), perception=True),
    "captions": StageInputs(("poses",), ("profile", "captions"), perception=True),
    "references": StageInputs(("masks",), ("references",)),
}
MOVIE_STAGE_DEPS: dict[str, tuple[str, ...]] = {n: s.deps for n, s in STAGE_INPUTS.items()}


def downstream(stage: str) -> list[str]:
    """`stage` and every stage that reads its output, directly or not, in build order."""
    found = {stage}
    for name, deps in MOVIE_STAGE_DEPS.items():  # build order: deps come first
        if found.intersection(deps):
            found.add(name)
    return [name for name in MOVIE_STAGE_DEPS if name in found]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# What the perception resource hands to the stages that run models: a `Priors`. Those stages
# call code they do not import, so their code version covers the module that builds it.
PRIORS_MODULE = "perception.priors"


def stage_modules(stage: str) -> tuple[str, ...]:
    """The entry modules of a per-movie stage's code: its own, `assets.<stage>`, and the
    perception resource's where the stage runs its models."""
    return (f"assets.{stage}", *([PRIORS_MODULE] if STAGE_INPUTS[stage].perception else []))


def code_version(stage: str) -> str:
    """A per-movie stage's code version: the digest of the first-party source its entry
    modules import, directly or not (`core.versioning.source_version`)."""
    return source_version(*stage_modules(stage))


def params_digest(stage: str, params: DatasetParams) -> str:
    """The digest of the params values the stage reads (profile applied)."""
    values = params.model_dump()
    used = {key: values[key] for key in STAGE_INPUTS[stage].params}
    return _digest(json.dumps(used, sort_keys=True).encode())


@dataclass(frozen=True)
class MovieStage:
    """What a stage body works on: one movie's file, its data layout and the params."""

    name: str
    movie: str
    video: Path
    layout: DataLayout
    params: DatasetParams

    @property
    def subject(self) -> str:
        return f"movie {self.movie} ({self.video.name})"


def read_status(layout: DataLayout, stage: str, movie: str) -> dict[str, Any] | None:
    path = layout.stage_status(stage, movie)
    return json.loads(path.read_text()) if path.is_file() else None


def recorded_warnings(layout: DataLayout, movie: str, stages: Collection[str]) -> list[str]:
    """The warnings that the records of `stages` (per-movie ones, in build order) keep for
    `movie`."""
    records = [read_status(layout, stage, movie) for stage in MOVIE_STAGE_DEPS if stage in stages]
    return [record["warning"] for record in records if record and record.get("warning")]


def movie_md5(layout: DataLayout, movie: str, video: Path) -> str:
    """The md5 of the movie file (the one DVC records), taken from the movie's stage records
    while the file's name, size and mtime are those recorded, else computed."""
    fingerprint = source_fingerprint(video)
    for stage in MOVIE_STAGE_DEPS:
        status = read_status(layout, stage, movie)
        if status is not None and status["source"] == fingerprint:
            return status["movie_md5"]
    return dvc_md5(video)


def build_key(stage: str, md5: str, params: DatasetParams) -> dict[str, str]:
    """What a stage's record says it was built from."""
    return {
        "movie_md5": md5,
        "params": params_digest(stage, params),
        "code_version": code_version(stage),
    }


def upstream(stage: str) -> list[str]:
    """`stage` and every per-movie stage it reads, directly or not, in build order."""
    found = {stage}
    for name in reversed(MOVIE_STAGE_DEPS):  # reverse build order: readers come first
        if name in found:
            found.update(MOVIE_STAGE_DEPS[name])
    return [name for name in MOVIE_STAGE_DEPS if name in found]


def stage_problem(
    layout: DataLayout, stage: str, movie: str, video: Path, md5: str, params: DatasetParams
) -> str | None:
    """Why `stage` of `movie` is not current for the file (md5) and params now; None if it is."""
    status = read_status(layout, stage, movie)
    if status is None:
        started = layout.table(stage, movie).exists() or layout.stage_dir(stage, movie).exists()
        return (
            "did not complete (interrupted, or failed before finishing)"
            if started
            else "not materialised"
        )
    if status["status"] == STAGE_STATUS_BUILT:
        return f"its check {stage}_expectations has not passed"
    if status["status"] != STAGE_STATUS_OK:
        return status["error"]
    key = build_key(stage, md5, params)
    if status["movie_md5"] != key["movie_md5"]:
        return f"built from an earlier version of {video.name}: rebuild this movie"
    if status["params"] != key["params"]:
        return f"built with other params ({', '.join(STAGE_INPUTS[stage].params)})"
    if status["code_version"] != key["code_version"]:
        return "built by an earlier version of its code"
    return None


def incomplete_stage(
    layout: DataLayout, movie: str, video: Path, params: DatasetParams
) -> tuple[str, str] | None:
    """The first stage of `movie` not current for the file present now and the params, and
    why; None when every stage is."""
    md5 = movie_md5(layout, movie, video)
    for stage in MOVIE_STAGE_DEPS:
        if problem := stage_problem(layout, stage, movie, video, md5, params):
            return stage, problem
    return None


def stages_to_build(
    layout: DataLayout, movie: str, video: Path, params: DatasetParams, until: str
) -> list[str]:
    """The stages up to `until` to materialise for `movie`: each one not current, and every
    stage downstream of it, in build order (empty: nothing to do)."""
    wanted = upstream(until) if until in MOVIE_STAGE_DEPS else list(MOVIE_STAGE_DEPS)
    md5 = movie_md5(layout, movie, video)
    stale = {
        later
        for stage in wanted
        if stage_problem(layout, stage, movie, video, md5, params)
        for later in downstream(stage)
    }
    return [stage for stage in wanted if stage in stale]


def describe_error(e: BaseException) -> str:
    """An exception as one line: its type and message."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def table_metadata(path: Path, stage: str) -> dict[str, Any]:
    """Dagster's row count and column schema of `stage`'s parquet table (read from its
    footer), each column with its description (`assets.columns`)."""
    import pyarrow.parquet as pq

    footer = pq.read_metadata(path)
    columns = [
        dg.TableColumn(field.name, str(field.type), column_description(stage, field.name))
        for field in footer.schema.to_arrow_schema()
    ]
    return {
        "dagster/row_count": footer.num_rows,
        "dagster/column_schema": dg.TableSchema(columns=columns),
    }


def skipped_metadata(df: Any) -> dict[str, dg.MetadataValue]:
    """A stage table's skipped rows counted by reason, as Dagster metadata; nothing when no row
    was skipped, so the UI shows no empty `skipped {}`."""
    reasons = df.loc[df["status"] != "ok", "skip_reason"].value_counts().to_dict()
    return {"skipped": dg.MetadataValue.json(reasons)} if reasons else {}


def output_version(layout: DataLayout, stage: str, movie: str) -> dg.DataVersion:
    """The data version of a stage's output for one movie: the md5s of its table and of its
    folder of images."""
    paths = [layout.table(stage, movie), layout.stage_dir(stage, movie)]
    return dg.DataVersion(_digest(" ".join(dvc_md5(p) for p in paths if p.exists()).encode()))


def profile_kinds(kinds: set[str] | Mapping[str, set[str]]) -> set[str]:
    """The kinds an asset shows: the same in every profile, or those of the loaded profile."""
    return set(kinds[definition_profile()] if isinstance(kinds, Mapping) else kinds)


def movie_asset(
    *,
    group: str,
    kinds: set[str] | Mapping[str, set[str]],
    gpu: bool = False,
) -> Callable[[Callable[[dg.AssetExecutionContext, MovieStage], dg.MaterializeResult]], Any]:
    """Decorator: a per-movie stage body → its partitioned asset (named after the body, deps
    and the perception resource from STAGE_INPUTS, code version from the source it imports).
    `kinds` may be given per profile."""

    def decorator(
        body: Callable[[dg.AssetExecutionContext, MovieStage], dg.MaterializeResult],
    ) -> dg.AssetsDefinition:
        name = body.__name__
        if body.__module__ != stage_modules(name)[0]:
            # The code version is read from assets/<stage>.py: a body elsewhere would escape it.
            raise ValueError(f"stage {name} is defined in {body.__module__}, not assets.{name}")
        perception = STAGE_INPUTS[name].perception

        @dg.asset(
            name=name,
            # The UI renders it as Markdown: a docstring's indentation would make code blocks.
            description=inspect.cleandoc(body.__doc__),
            partitions_def=movie_partitions,
            deps=list(MOVIE_STAGE_DEPS[name]),
            required_resource_keys={"data", "params"} | ({"perception"} if perception else set()),
            group_name=group,
            kinds=profile_kinds(kinds),
            code_version=code_version(name),
            op_tags=GPU_STEP_TAGS if gpu else None,
        )
        def asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            layout = context.resources.data.layout
            movie = context.partition_key
            video = layout.movie(movie)
            params = context.resources.params.values
            record = {
                "stage": name,
                "movie": movie,
                "source": source_fingerprint(video),
                **build_key(name, movie_md5(layout, movie, video), params),
            }
            layout.clean_stale_temps(name)
            for later in downstream(name):
                layout.stage_status(later, movie).unlink(missing_ok=True)
            stage = MovieStage(name, movie, video, layout, params)
            try:
                result = body(context, stage)
            except Exception as e:
                # One line that names the file and says what is wrong.
                error = describe_error(e)
                if video.name not in error:
                    error = f"{video.name}: {error}"
                status = {**record, "status": "failed", "error": error}
                write_json(status, layout.stage_status(name, movie))
                raise dg.Failure(description=error, metadata={"movie_file": str(video)}) from e
            # A stage's warning (a movie cut short, no character found) stays in its record,
            # so later builds and `cameo dataset summary` still say it.
            if warning := result.metadata.get("warning"):
                record["warning"] = warning
            write_json({**record, "status": STAGE_STATUS_BUILT}, layout.stage_status(name, movie))
            return dg.MaterializeResult(
                metadata={**result.metadata, **table_metadata(layout.table(name, movie), name)},
                data_version=output_version(layout, name, movie),
            )

        return asset

    return decorator


def movie_check(
    asset: dg.AssetsDefinition,
) -> Callable[[Callable[[MovieStage], dg.AssetCheckResult]], dg.AssetChecksDefinition]:
    """Decorator: a function validating a stage's files for one movie → the stage's blocking
    check `<stage>_expectations` (described by the function's docstring). It updates the
    stage's record: `ok` when it passes, `failed` with the failed expectations when not."""
    name = asset.key.to_user_string()

    def decorator(
        validate: Callable[[MovieStage], dg.AssetCheckResult],
    ) -> dg.AssetChecksDefinition:
        def check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
            layout = context.resources.data.layout
            movie = context.partition_key
            stage = MovieStage(
                name, movie, layout.movie(movie), layout, context.resources.params.values
            )
            result = validate(stage)
            result = result._replace(description=f"{stage.subject}: {result.description}")
            # Only a record the asset finished (not one of a failed body) follows its check.
            record = read_status(layout, name, movie)
            finished = (STAGE_STATUS_BUILT, STAGE_STATUS_OK)
            if record is not None and (record["status"] in finished or "failed_check" in record):
                record = {k: v for k, v in record.items() if k not in ("error", "failed_check")}
                if result.passed:
                    record["status"] = STAGE_STATUS_OK
                else:
                    record["status"] = "failed"
                    record["failed_check"] = f"{name}_expectations"
                    record["error"] = f"check {name}_expectations failed: {result.description}"
                write_json(record, layout.stage_status(name, movie))
            return result

        # A check per movie partition: Dagster marks partitioned checks as a preview feature.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return dg.asset_check(
                asset=asset,
                name=f"{name}_expectations",
                description=inspect.cleandoc(validate.__doc__),
                blocking=True,
                partitions_def=movie_partitions,
                required_resource_keys={"data", "params"},
            )(check)

    return decorator
