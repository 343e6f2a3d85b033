"""The orchestration at scale, on the production storage (`python bench/orchestration.py`).

For each size (300 and 1,200 movie partitions), on a fresh throwaway PostgreSQL server holding
Dagster's instance as k8s/dagster/values.yaml configures it, the tiny profile:

- N short movies: one 60-frame shot from the sample-movie writer (2 frames kept at stride 50,
  one face), hard-linked N times under distinct names;
- the movie sensor: its evaluation over N new files, the instance writes it asks for (the N
  partitions), then a tick with nothing new (what every later tick costs);
- a sample of movies built through Dagster as the sensor's runs build them (frames and faces
  with their checks), one run at a time, with each local executor of params.yaml
  (multiprocess, in-process): the run's wall time against the two stages' own work on the
  same movie in this process (models loaded once); the difference is Dagster's overhead per
  run;
- every other partition's frames and faces materialisations recorded as runless events, so
  the pages show N materialised partitions;
- the asset and partition pages' GraphQL queries, against a real `dagster-webserver`;
- the instance database's size (`pg_database_size`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg
import yaml

from assets.sample_movie import SHOTS, write_sample_movie
from bench.report import PARAMS, REPO, write_section
from core.layout import DataLayout
from orchestration.production import PostgresServer, dagster_home
from orchestration.resources import DataResource
from orchestration.sensors import movie_sensor
from serving.server import free_port, wait_until_answering

SIZES = (300, 1200)
SAMPLE_RUNS = 3
REPEATS = 5  # timings of a step's work, an import or a query: their median
SHORT = (replace(SHOTS[0], frames=60),)  # Grace Hopper alone: frames 0 and 50 kept
STAGES = ("frames", "faces")
ASSET_PAGE = """query AssetPage($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { id description partitionDefinition { description }
    assetMaterializations(limit: 25) { runId partition timestamp }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } } } } }"""
PARTITIONS_PAGE = """query PartitionsPage($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) {
  ... on AssetNode { partitionKeys partitionStats { numMaterialized numPartitions numFailed }
    assetPartitionStatuses { ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions unmaterializedPartitions } } } } }"""


@dataclass
class Figures:
    partitions: int
    sensor_new_s: float  # evaluation over N new files
    partitions_added_s: float  # the N partitions written to the instance
    sensor_steady_s: float  # a tick with nothing new
    runless_events_s: float  # per partition: its frames and faces materialisations recorded
    run_wall_s: float  # median over the sample runs, the multiprocess executor
    in_process_wall_s: float  # the same with the in-process executor
    own_work_s: float  # the two stages' functions on the same movie, warm, median
    asset_page_s: float
    partitions_page_s: float
    database_mb: float
    runs: int
    import_s: float  # a fresh interpreter importing the code location, median
    load: float = 0.0  # the machine's 1-minute load average when the size started

    @property
    def overhead_s(self) -> float:
        return self.run_wall_s - self.own_work_s

    @property
    def in_process_overhead_s(self) -> float:
        return self.in_process_wall_s - self.own_work_s


def write_movies(layout: DataLayout, n: int) -> list[str]:
    """N short movies, the first written, the others hard links to it; their partition keys."""
    first = write_sample_movie(layout, "movie-00000", SHORT)
    for i in range(1, n):
        os.link(first, layout.movies_dir / f"movie-{i:05d}.mp4")
    return sorted(layout.scan_movies()[0])


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def sensor_ticks(instance: dg.DagsterInstance, root: Path, n: int) -> tuple[float, float, float]:
    """Seconds of the sensor over N new files, of adding the partitions it requests, and of a
    tick with nothing new."""
    context = dg.build_sensor_context(
        instance=instance, resources={"data": DataResource(root=str(root))}
    )
    new_s, result = timed(movie_sensor, context)
    (request,) = result.dynamic_partitions_requests
    assert len(request.partition_keys) == len(result.run_requests) == n
    added_s, _ = timed(instance.add_dynamic_partitions, "movies", list(request.partition_keys))
    steady_s, again = timed(movie_sensor, context)
    assert not again.run_requests, "a tick with nothing new requested runs"
    return new_s, added_s, steady_s


def movie_job() -> dg.JobDefinition:
    """The sensor's job with the resources and executor of the environment's params file
    (CAMEO_PARAMS); each step process rebuilds it the same way."""
    from orchestration.definitions import build_definitions, build_resources

    return build_definitions(build_resources()).resolve_job_def("movie_job")


def executor_params(kind: str, work_dir: Path) -> Path:
    """params.yaml with the local executor `kind`, written under `work_dir`."""
    values = yaml.safe_load(PARAMS.read_text())
    values["executor"]["kind"] = kind
    path = work_dir / f"params-{kind}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def build_through_dagster(
    instance: dg.DagsterInstance, keys: list[str], params: Path
) -> list[float]:
    """Frames and faces of each movie, one `movie_job` run each on `instance` with the local
    executor of `params`; each run's wall seconds."""
    job = dg.reconstructable(movie_job)
    selection = [dg.AssetKey(stage) for stage in STAGES]
    walls = []
    os.environ["CAMEO_PARAMS"] = str(params)
    for key in keys:
        start = time.perf_counter()
        with dg.execute_job(
            job, instance, tags={"dagster/partition": key}, asset_selection=selection
        ) as result:
            if not result.success:
                raise RuntimeError(f"run {result.run_id} of {key} failed")
        walls.append(time.perf_counter() - start)
    return walls


def own_work(video: Path, repeats: int) -> float:
    """Median seconds of the frames and faces stages' functions on `video` in this process,
    the face models loaded once beforehand."""
    from assets.faces import detect_faces
    from assets.frames import extract_frames
    from orchestration.params import load_params

    params = load_params(PARAMS, "tiny")
    analyzer = params.priors().face_analyzer()
    seconds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            frames = extract_frames(
                video, Path(tmp), video.stem, params.frames.stride, params.frames.jpeg_quality,
                relative_to=Path(tmp),
            )  # fmt: skip
            detect_faces(frames, Path(tmp), analyzer, params.faces.min_face_px)
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def code_location_import(repeats: int) -> float:
    """Median seconds of a fresh interpreter importing the code location, as every step
    process of the multiprocess executor does before its step."""
    command = [sys.executable, "-c", "import orchestration.definitions"]
    seconds = [timed(subprocess.run, command, cwd=REPO, check=True)[0] for _ in range(repeats)]
    return statistics.median(seconds)


def record_materializations(instance: dg.DagsterInstance, keys: list[str]) -> float:
    """Record frames and faces materialisations of `keys` as runless events; seconds per key."""
    start = time.perf_counter()
    for key in keys:
        for stage in STAGES:
            instance.report_runless_asset_event(dg.AssetMaterialization(stage, partition=key))
    return (time.perf_counter() - start) / max(len(keys), 1)


class Webserver:
    """`dagster-webserver` on the code location and the instance of `env`; it ignores
    SIGTERM, so it is killed by its process group."""

    def __init__(self, env: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        command = [
            str(Path(sys.executable).parent / "dagster-webserver"), "-m",
            "orchestration.definitions", "-h", "127.0.0.1", "-p", self.url.rsplit(":", 1)[1],
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        wait_until_answering(
            "dagster-webserver", f"{self.url}/server_info", self.process, 180, stop=self.stop
        )

    def query(self, query: str, variables: dict) -> dict:
        request = urllib.request.Request(
            f"{self.url}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"content-type": "application/json"},
        )
        answer = json.load(urllib.request.urlopen(request, timeout=300))
        if "errors" in answer:
            raise RuntimeError(f"GraphQL errors: {answer['errors']}")
        return answer["data"]

    def timed_query(self, query: str, variables: dict, repeats: int) -> tuple[float, dict]:
        """Median seconds of `repeats` answers, after one that warms the server's caches."""
        data = self.query(query, variables)
        seconds = [timed(self.query, query, variables)[0] for _ in range(repeats)]
        return statistics.median(seconds), data

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


def measure(
    n: int, sample_runs: int = SAMPLE_RUNS, work_dir: Path | None = None, repeats: int = REPEATS
) -> Figures:
    """Every figure at N partitions, on a fresh PostgreSQL server and data root; each timing of
    a step's work, an import or a query the median of `repeats`."""
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp, PostgresServer() as server:
        root = Path(tmp) / "data"
        layout = DataLayout(root)
        keys = write_movies(layout, n)
        env = {
            **dagster_home(server, Path(tmp) / "dagster"),
            "CAMEO_DATA": str(root),
            "CAMEO_PARAMS": str(PARAMS),
            "CAMEO_PROFILE": "tiny",
            "CAMEO_ENV": "local",
            "OMP_NUM_THREADS": "1",
        }
        previous = {key: os.environ.get(key) for key in env}
        os.environ.update(env)  # the step processes' resources and instance
        try:
            with dg.DagsterInstance.get() as instance:
                new_s, added_s, steady_s = sensor_ticks(instance, root, n)
                sample = keys[: 2 * sample_runs]
                walls = build_through_dagster(
                    instance, sample[::2], executor_params("multiprocess", Path(tmp))
                )
                in_process = build_through_dagster(
                    instance, sample[1::2], executor_params("in_process", Path(tmp))
                )
                runless_s = record_materializations(instance, keys[len(sample) :])
            work_s = own_work(layout.movies_dir / f"{keys[0]}.mp4", repeats)
            import_s = code_location_import(repeats)
            webserver = Webserver({**os.environ})
            try:
                variables = {"key": {"path": ["faces"]}}
                asset_s, asset = webserver.timed_query(ASSET_PAGE, variables, repeats)
                partitions_s, partitions = webserver.timed_query(
                    PARTITIONS_PAGE, variables, repeats
                )
            finally:
                webserver.stop()
            node = partitions["assetNodeOrError"]
            assert len(node["partitionKeys"]) == n
            assert node["partitionStats"]["numMaterialized"] == n, node["partitionStats"]
            assert len(asset["assetNodeOrError"]["assetMaterializations"]) == min(n, 25)
            database_mb = server.database_bytes("dagster") / 2**20
        finally:
            for key, value in previous.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    return Figures(
        n, new_s, added_s, steady_s, runless_s, statistics.median(walls),
        statistics.median(in_process), work_s, asset_s, partitions_s, database_mb, len(walls),
        import_s, load,
    )  # fmt: skip


def growth(small: float, large: float) -> float:
    return large / small if small > 0 else float("nan")


def report(figures: list[Figures]) -> str:
    small, large = figures[0], figures[-1]
    scale = large.partitions / small.partitions
    rows = [
        ("sensor tick, N new files (s)", "sensor_new_s", True),
        ("adding the N partitions (s)", "partitions_added_s", True),
        ("sensor tick, nothing new (s)", "sensor_steady_s", True),
        ("recording one partition's 2 materialisations (s)", "runless_events_s", False),
        ("the two stages' own work on one movie (s)", "own_work_s", False),
        ("run wall, multiprocess executor (s)", "run_wall_s", False),
        ("Dagster's overhead per run, multiprocess (s)", "overhead_s", False),
        ("importing the code location, a fresh process (s)", "import_s", False),
        ("run wall, in-process executor (s)", "in_process_wall_s", False),
        ("Dagster's overhead per run, in-process (s)", "in_process_overhead_s", False),
        ("asset page query (s)", "asset_page_s", True),
        ("partitions page query (s)", "partitions_page_s", True),
        ("instance database (MB)", "database_mb", True),
    ]
    header = "| measurement | " + " | ".join(f"N = {f.partitions:,}" for f in figures)
    lines = [header + f" | growth x{scale:g} N |", "|---" * (len(figures) + 2) + "|"]
    verdicts = []
    for label, name, per_total in rows:
        values = [getattr(f, name) for f in figures]
        ratio = growth(values[0], values[-1])
        cells = " | ".join(f"{v:.3f}" if v < 10 else f"{v:.1f}" for v in values)
        lines.append(f"| {label} | {cells} | x{ratio:.2f} |")
        limit = scale * 1.5 if per_total else 1.5  # linear in N, or flat per partition
        if ratio > limit:
            should = f"grows faster than N (x{scale:g})" if per_total else "should stay flat"
            verdicts.append(f"{label}: x{ratio:.2f}, {should}")
    verdict = (
        "**Nothing grows faster than linearly**: totals grow at most about in proportion to N "
        f"(x{scale:g}), per-partition and per-run figures stay flat (within x1.5)."
        if not verdicts
        else "**Grows more than expected:** " + "; ".join(verdicts) + "."
    )
    loads = ", ".join(f"{f.load:.1f}" for f in figures)
    return (
        f"Tiny profile, CPU; a fresh PostgreSQL {postgres_version()} server per size holds "
        "Dagster's instance as `k8s/dagster/values.yaml` configures it. What was measured, "
        "per size:\n\n"
        "- the movie sensor's evaluation (`movie_sensor`, called directly) over N new movie "
        "files (one 60-frame shot of the sample-movie writer, hard-linked N times), then "
        "writing the N partitions it requests, then a tick with nothing new; the daemon's "
        "creation of the N runs it requests is not included;\n"
        f"- {2 * large.runs} movies per size built through Dagster: one `movie_job` run "
        "each (frames and faces with their blocking checks, `execute_job` on the instance), "
        f"one run at a time, {large.runs} with each local executor of params.yaml's "
        "`executor` (multiprocess: a process per step, 2 at once; in-process: the steps in "
        "the run's process); their median wall time against the median of the two stages' "
        "functions on the same movie in the benchmark's process with the face models already "
        "loaded; the overhead is the difference (run and event bookkeeping in PostgreSQL, "
        "step processes and their imports, the tiny models loaded per step or run);\n"
        "- every other partition's two materialisations recorded as runless events, so the "
        "pages show N materialised partitions;\n"
        "- the GraphQL queries of the `faces` asset page (definition, latest 25 "
        "materialisations, checks) and its partitions page (keys, stats, partition statuses) "
        "against a real `dagster-webserver`, median of 5 after one warm-up;\n"
        "- the instance database's size at the end.\n\n"
        f"The machine's cores are shared: 1-minute load average when each size started: "
        f"{loads}; figures of a few tenths of a second and less move with that load more "
        "than with N.\n\n" + "\n".join(lines) + "\n\n" + verdict
    )


def postgres_version() -> str:
    from orchestration.production import postgres_bin

    done = subprocess.run(
        [postgres_bin() / "postgres", "--version"], capture_output=True, text=True
    )
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return done.stdout.split()[2] if done.returncode == 0 else "(unknown version)"


def main(sizes: tuple[int, ...] = SIZES) -> None:
    figures = []
    for n in sizes:
        figures.append(measure(n))
        print(figures[-1], flush=True)
    write_section("Orchestration at scale (PostgreSQL)", report(figures))


if __name__ == "__main__":
    # Through the package's module, not __main__: the step processes rebuild `movie_job` from
    # bench.orchestration (this file's own name would shadow the orchestration package).
    from bench.orchestration import main as run

    run(tuple(int(a) for a in sys.argv[1:]) or SIZES)
