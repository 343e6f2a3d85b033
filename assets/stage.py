"""The one shape of every per-movie stage asset, and the record of which stages completed.

`movie_asset` turns a stage body into a partitioned Dagster asset with its blocking GX
check. Around the body it:

- resolves the partition's movie file (a clear error if it is gone) and removes temp files
  that killed processes left in the stage's folder;
- withdraws the completion record of this stage and every stage downstream before the
  body runs, so an interrupted or failed run never leaves earlier results looking current;
- writes the stage's record afterwards: `ok` with the version of the movie file it was
  built from, or `failed` with the error or the failed check;
- names the movie file in failures and in check descriptions.

The triplets are built only from movies whose every stage record is `ok` for the file
present now (`incomplete_stage`).
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from assets.layout import STAGE_STATUS_OK, DataLayout, source_fingerprint, write_json
from assets.params import SECTIONS
from assets.partitions import movie_partitions
from assets.quality import blocking_spec
from assets.steps import GPU_STEP_TAGS

# Each per-movie stage and the stages it reads, in build order.
MOVIE_STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "frames": (),
    "faces": ("frames",),
    "characters": ("faces",),
    "masks": ("characters",),
    "poses": ("masks",),
    "captions": ("poses",),
    "references": ("masks",),
}

T = TypeVar("T")


def downstream(stage: str) -> list[str]:
    """`stage` and every stage that reads its output, directly or not, in build order."""
    found = {stage}
    for name, deps in MOVIE_STAGE_DEPS.items():  # build order: deps come first
        if found.intersection(deps):
            found.add(name)
    return [name for name in MOVIE_STAGE_DEPS if name in found]


@dataclass(frozen=True)
class MovieStage:
    """What a stage body works on: one movie's file, its data layout and the params."""

    name: str
    movie: str
    video: Path
    layout: DataLayout
    values: dict[str, Any]

    def params(self, cls: type[T]) -> T:
        """The params section whose schema is `cls`, validated, defaults filled in."""
        section = next(name for name, schema in SECTIONS.items() if schema is cls)
        return cls(**self.values[section])

    @property
    def subject(self) -> str:
        return f"movie {self.movie} ({self.video.name})"


def read_status(layout: DataLayout, stage: str, movie: str) -> dict[str, Any] | None:
    path = layout.stage_status(stage, movie)
    return json.loads(path.read_text()) if path.is_file() else None


def incomplete_stage(layout: DataLayout, movie: str, video: Path) -> tuple[str, str] | None:
    """The first stage of `movie` not completed for the file present now, and why; None
    when every stage completed."""
    fingerprint = source_fingerprint(video)
    for stage in MOVIE_STAGE_DEPS:
        status = read_status(layout, stage, movie)
        if status is None:
            started = layout.table(stage, movie).exists() or layout.stage_dir(stage, movie).exists()
            return stage, (
                "did not complete (interrupted, or failed before finishing)"
                if started
                else "not materialised"
            )
        if status["status"] != STAGE_STATUS_OK:
            return stage, status["error"]
        if status["source"] != fingerprint:
            return stage, f"built from an earlier version of {video.name}: rebuild this movie"
    return None


def describe_error(e: BaseException) -> str:
    """An exception as one line: its type and message."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def _with_subject(result: dg.MaterializeResult, subject: str) -> dg.MaterializeResult:
    checks = [c._replace(description=f"{subject}: {c.description}") for c in result.check_results]
    return dg.MaterializeResult(
        asset_key=result.asset_key,
        metadata=result.metadata,
        check_results=checks,
        data_version=result.data_version,
        tags=result.tags,
    )


def movie_asset(
    *, check: str, group: str, kinds: set[str], perception: bool = False, gpu: bool = False
) -> Callable[[Callable[[dg.AssetExecutionContext, MovieStage], dg.MaterializeResult]], Any]:
    """Decorator: a per-movie stage body → its partitioned asset (named after the body, deps
    from MOVIE_STAGE_DEPS, check `<name>_expectations` described by `check`)."""

    def decorator(
        body: Callable[[dg.AssetExecutionContext, MovieStage], dg.MaterializeResult],
    ) -> dg.AssetsDefinition:
        name = body.__name__

        @dg.asset(
            name=name,
            description=body.__doc__,
            partitions_def=movie_partitions,
            deps=list(MOVIE_STAGE_DEPS[name]),
            required_resource_keys={"data", "params"} | ({"perception"} if perception else set()),
            check_specs=[blocking_spec(name, f"{name}_expectations", check)],
            group_name=group,
            kinds=kinds,
            op_tags=GPU_STEP_TAGS if gpu else None,
        )
        def asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            layout = context.resources.data.layout
            movie = context.partition_key
            video = layout.movie(movie)
            layout.clean_stale_temps(name)
            for later in downstream(name):
                layout.stage_status(later, movie).unlink(missing_ok=True)
            stage = MovieStage(name, movie, video, layout, context.resources.params.values)
            record = {"stage": name, "movie": movie, "source": source_fingerprint(video)}
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
            result = _with_subject(result, stage.subject)
            failed = [c.description for c in result.check_results if not c.passed]
            status = (
                {"status": "failed", "error": f"check {name}_expectations failed: {failed[0]}"}
                if failed
                else {"status": STAGE_STATUS_OK}
            )
            write_json({**record, **status}, layout.stage_status(name, movie))
            return result

        return asset

    return decorator
