"""A sensor that keeps the movie partitions equal to the files under movies/."""

from __future__ import annotations

import dagster as dg

from assets.partitions import movie_partitions
from assets.stage import read_status
from core.layout import source_fingerprint
from orchestration.resources import DataResource


@dg.sensor(
    # Every per-movie stage; the triplets follow by their automation condition.
    job_name="movie_job",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def movie_sensor(context: dg.SensorEvaluationContext, data: DataResource) -> dg.SensorResult:
    """New movie files become partitions, each with one run of the per-movie stages; a
    replaced file gets a new run; partitions whose file is gone are removed. Files that are
    not movies are logged."""
    layout = data.layout
    known = set(context.instance.get_dynamic_partitions(movie_partitions.name))
    movies, skipped = layout.scan_movies()
    for s in skipped:
        context.log.warning(f"movies/{s.path.name} skipped: {s.reason}")
    new = sorted(set(movies) - known)
    gone = sorted(known - set(movies))
    replaced = sorted(
        key
        for key in known & set(movies)
        if (status := read_status(layout, "frames", key))
        and status["source"] != source_fingerprint(movies[key])
    )
    requests = []
    if new:
        requests.append(movie_partitions.build_add_request(new))
    if gone:
        requests.append(movie_partitions.build_delete_request(gone))
    if not requests and not replaced:
        return dg.SensorResult(skip_reason="no new, replaced or removed movies")
    return dg.SensorResult(
        # The run key names the file's version: one run per version of a file.
        run_requests=[
            dg.RunRequest(
                partition_key=key, run_key=f"movie:{key}:{movies[key].stat().st_mtime_ns}"
            )
            for key in sorted(new + replaced)
        ],
        dynamic_partitions_requests=requests,
    )
