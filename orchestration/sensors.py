"""A sensor that turns each new file under movies/ into a partition and materialises it."""

from __future__ import annotations

import dagster as dg

from assets.partitions import movie_partitions
from orchestration.resources import DataResource


@dg.sensor(
    # Every per-movie stage; the triplets gather all movies and are built on demand.
    target=dg.AssetSelection.groups("identity_mining", "dataset")
    - dg.AssetSelection.assets("triplets"),
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def movie_sensor(context: dg.SensorEvaluationContext, data: DataResource) -> dg.SensorResult:
    """New movie files become partitions; each gets one run of the per-movie stages."""
    known = set(context.instance.get_dynamic_partitions(movie_partitions.name))
    try:
        movies = data.layout.movies()
    except ValueError as e:  # two files with one partition key: say so, register neither
        return dg.SensorResult(skip_reason=str(e))
    new = sorted(set(movies) - known)
    if not new:
        return dg.SensorResult(skip_reason="no new movies")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=key, run_key=f"movie:{key}") for key in new],
        dynamic_partitions_requests=[movie_partitions.build_add_request(new)],
    )
