"""The code location as Dagster users expect it: code and data versions, named jobs, checks
that re-run alone, table metadata, automation of the dataset, descriptions and kinds."""

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from assets.frames import frames_check
from assets.stage import (
    STAGE_INPUTS,
    code_version,
    incomplete_stage,
    profile_kinds,
    read_status,
    stages_to_build,
)
from assets.triplets import TRIPLETS_CODE_MODULES
from core import versioning
from core.layout import DataLayout
from core.versioning import FIRST_PARTY, source_version
from orchestration.cli.main import main
from orchestration.dataset_definitions import (
    CHECKS,
    MOVIE_STAGES,
    STAGE_NAMES,
    STAGES,
    build_resources,
)
from orchestration.definitions import build_definitions, defs
from tests.conftest import PARAMS, REPO
from tests.test_dagster_pipeline import materialize


@pytest.fixture(scope="module")
def built(sample_root: Path, tmp_path_factory) -> tuple[Path, dg.DagsterInstance]:
    """Every stage of the sample movie, then the dataset, in a data root of this module."""
    root = tmp_path_factory.mktemp("conventions") / "data"
    for folder in ("movies", "singles"):
        shutil.copytree(sample_root / folder, root / folder)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(root, instance=instance).success
    dataset = dg.materialize(
        [*STAGES, *CHECKS],
        selection=dg.AssetSelection.assets("triplets"),
        instance=instance,
        resources=build_resources(str(root), str(PARAMS), "tiny"),
    )
    assert dataset.success
    return root, instance


def materialized(instance: dg.DagsterInstance, asset: str) -> dg.AssetMaterialization:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    assert event is not None
    return event.asset_materialization


def test_every_asset_has_a_code_version_and_descriptions_render():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.code_version, key
        # Markdown: no `<word>` that would render as an HTML tag.
        assert "<" not in (node.description or ""), key
    assert graph.get(dg.AssetKey("frames")).code_version == code_version("frames")


def test_named_jobs_and_the_automation_sensor():
    names = {job.name for job in defs.resolve_all_job_defs()}
    assert {"movie_job", "triplets_job", "training_job"} <= names
    sensor = defs.resolve_sensor_def("dataset_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("movie_sensor").job_name == "movie_job"


def test_kinds_follow_the_profile(monkeypatch):
    kinds = {"full": {"insightface"}, "tiny": {"scikit-image"}}
    monkeypatch.setenv("CAMEO_PROFILE", "full")
    assert profile_kinds(kinds) == {"insightface"}
    monkeypatch.setenv("CAMEO_PROFILE", "tiny")
    assert profile_kinds(kinds) == {"scikit-image"}
    assert profile_kinds({"numpy"}) == {"numpy"}


def test_tables_publish_row_count_and_described_column_schema(built):
    _, instance = built
    for asset in STAGE_NAMES:
        metadata = materialized(instance, asset).metadata
        assert metadata["dagster/row_count"].value >= 0
        columns = metadata["dagster/column_schema"].schema.columns
        assert columns, asset
        undescribed = [c.name for c in columns if not c.description]
        assert not undescribed, f"{asset}: describe {undescribed} in assets/columns.py"
    masks = materialized(instance, "masks").metadata["dagster/column_schema"].schema.columns
    assert next(c for c in masks if c.name == "prompt").description.startswith("the segmenter")
    frames_columns = materialized(instance, "frames").metadata["dagster/column_schema"]
    assert [c.name for c in frames_columns.schema.columns][:2] == ["movie", "frame_idx"]


def test_code_a_stage_runs_only_indirectly_makes_it_and_every_later_stage_stale(
    built, tmp_path: Path, monkeypatch
):
    """perception/face_batch.py is imported inside a function of perception/faces.py: a change
    to it alone makes faces, every stage after it and the dataset out of date. Before the
    tests that re-materialise a stage (which withdraws the records downstream of it)."""
    root, _ = built
    layout = DataLayout(root)
    values = build_resources(str(root), str(PARAMS), "tiny")["params"].values
    video = layout.movie("sample")
    graph = defs.resolve_asset_graph()
    for stage in STAGE_INPUTS:  # the records name the code versions Dagster shows
        recorded = read_status(layout, stage, "sample")["code_version"]
        assert recorded == graph.get(dg.AssetKey(stage)).code_version, stage
    assert stages_to_build(layout, "sample", video, values, "triplets") == []
    dataset_version = source_version(*TRIPLETS_CODE_MODULES)

    # The source as a copy with the change: the repository stays as it is.
    source = tmp_path / "source"
    for package in FIRST_PARTY:
        for path in (REPO / package).rglob("*.py"):
            copy = source / path.relative_to(REPO)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
    with (source / "perception" / "face_batch.py").open("a") as f:
        f.write("# changed\n")
    monkeypatch.setattr(versioning, "SOURCE_ROOT", source)

    stale = incomplete_stage(layout, "sample", video, values)
    assert stale == ("faces", "built by an earlier version of its code")
    assert stages_to_build(layout, "sample", video, values, "triplets") == list(STAGE_INPUTS)[1:]
    assert source_version(*TRIPLETS_CODE_MODULES) != dataset_version


def test_unchanged_output_keeps_its_data_version(built):
    root, instance = built
    before = materialized(instance, "frames").tags["dagster/data_version"]
    again = dg.materialize(
        [*MOVIE_STAGES, *CHECKS[:-1]],
        selection=dg.AssetSelection.assets("frames"),
        partition_key="sample",
        instance=instance,
        resources=build_resources(str(root), str(PARAMS), "tiny"),
    )
    assert again.success
    assert materialized(instance, "frames").tags["dagster/data_version"] == before


def test_a_check_reruns_alone_and_blocks_the_movie_when_files_broke(built):
    root, instance = built
    layout = DataLayout(root)
    resources = build_resources(str(root), str(PARAMS), "tiny")
    values = resources["params"].values
    video = layout.movie("sample")

    # What the UI launches for "Execute" on one check of one partition: a run of the check
    # alone, tagged with the partition.
    check_job = dg.define_asset_job(
        "frames_check_job", selection=dg.AssetSelection.checks(frames_check)
    )
    code_location = dg.Definitions(
        assets=list(STAGES), asset_checks=list(CHECKS), jobs=[check_job], resources=resources
    )

    def rerun_check() -> dg.ExecuteInProcessResult:
        return code_location.resolve_job_def("frames_check_job").execute_in_process(
            tags={"dagster/partition": "sample"}, instance=instance, raise_on_error=False
        )

    first_frame = next(layout.stage_dir("frames", "sample").glob("*.jpg"))
    kept = first_frame.read_bytes()
    first_frame.unlink()
    result = rerun_check()
    assert not result.get_asset_materialization_events()  # the check alone ran
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and "file_exists" in evaluation.description
    assert read_status(layout, "frames", "sample")["status"] == "failed"
    assert incomplete_stage(layout, "sample", video, values)[0] == "frames"
    first_frame.write_bytes(kept)
    [evaluation] = rerun_check().get_asset_check_evaluations()
    assert evaluation.passed
    assert read_status(layout, "frames", "sample")["status"] == "ok"


def test_the_dataset_follows_new_movie_runs_by_automation(built):
    root, instance = built
    selection = dg.AssetSelection.assets("triplets")
    code_location = build_definitions(build_resources(str(root), str(PARAMS), "tiny"))
    first = dg.evaluate_automation_conditions(
        defs=code_location, instance=instance, asset_selection=selection
    )
    settled = dg.evaluate_automation_conditions(
        defs=code_location, instance=instance, asset_selection=selection, cursor=first.cursor
    )
    assert settled.total_requested == 0  # the dataset is newer than every movie stage
    # A movie stage re-materialised (as a sensor run does): the dataset is requested.
    dg.materialize(
        [*STAGES, *CHECKS],
        selection=dg.AssetSelection.assets("references"),
        partition_key="sample",
        instance=instance,
        resources=build_resources(str(root), str(PARAMS), "tiny"),
    )
    after = dg.evaluate_automation_conditions(
        defs=code_location, instance=instance, asset_selection=selection, cursor=settled.cursor
    )
    assert after.total_requested == 1


def test_summary_says_which_stages_are_current(built, tmp_path: Path):
    root, _ = built

    def summary(params: Path) -> dict[str, str]:
        result = CliRunner().invoke(
            main, ["dataset", "summary", "--data", str(root), "--params", str(params)]
        )
        assert result.exit_code == 0, result.output
        return {line.split()[0]: line for line in result.output.splitlines() if line[:2] == "  "}

    assert "37 rows" in summary(PARAMS)["frames"]
    values = yaml.safe_load(PARAMS.read_text())
    values["frames"]["stride"] = 25
    changed = tmp_path / "params.yaml"
    changed.write_text(yaml.safe_dump(values))
    assert "built with other params (frames, images)" in summary(changed)["frames"]
