"""The dataset assets materialised in-process, with their blocking checks."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from assets.partitions import movie_partitions
from assets.sample_movie import compare_with_truth
from assets.triplets import dvc_md5, triplets
from core.layout import DataLayout
from orchestration.cli.main import main
from orchestration.dataset_definitions import (
    CHECKS,
    MOVIE_STAGES,
    STAGE_NAMES,
    STAGES,
    build_resources,
)
from orchestration.definitions import defs
from orchestration.params import load_params
from orchestration.resources import DataResource
from orchestration.runs import STAGE_CHOICES
from orchestration.sensors import movie_sensor
from orchestration.synthetic_assets import SYNTHETIC_ASSETS
from tests.conftest import PARAMS
from training.data import person_keys


def materialize(
    root: Path, params: Path = PARAMS, movie: str = "sample", instance=None
) -> dg.ExecuteInProcessResult:
    """Every per-movie stage of one partition, with their checks."""
    instance = instance or dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(movie_partitions.name, [movie])
    return dg.materialize(
        [*MOVIE_STAGES, *CHECKS[:-1]],
        partition_key=movie,
        instance=instance,
        resources=build_resources(str(root), str(params), "tiny"),
        raise_on_error=False,
    )


def check_outcomes(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


@pytest.fixture(scope="module")
def built(sample_root: Path, instance) -> dg.ExecuteInProcessResult:
    return materialize(sample_root, instance=instance)


@pytest.fixture(scope="module")
def dataset(built, sample_root: Path, instance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*STAGES, *CHECKS],
        selection=dg.AssetSelection.assets(triplets),
        instance=instance,
        resources=build_resources(str(sample_root), str(PARAMS), "tiny"),
    )


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert set(STAGE_NAMES) == set(STAGE_CHOICES)
    synthetic = {asset.key.to_user_string() for asset in SYNTHETIC_ASSETS}
    assert keys == {*STAGE_NAMES, *synthetic, "features", "model", "evaluation"}


def test_descriptions_render_as_text_not_code_blocks():
    """The UI renders descriptions as Markdown: an indented line would be a code block."""
    assets = {spec.key.to_user_string(): spec for a in defs.assets for spec in a.specs}
    checks = [spec for d in (*defs.assets, *defs.asset_checks) for spec in d.check_specs]
    descriptions = {
        **{name: spec.description for name, spec in assets.items()},
        **{spec.key.name: spec.description for spec in checks},
    }
    assert "\n\nEach character also gets" in descriptions["poses"]  # two paragraphs
    assert "poses_expectations" in descriptions
    for name, description in descriptions.items():
        lines = description.splitlines()
        assert lines and not any(line[:1].isspace() for line in lines), name


def test_sample_movie_materialises_with_every_check_passing(built, sample_root: Path):
    assert built.success
    assert check_outcomes(built) == {
        f"{name}_expectations": True for name in STAGE_NAMES if name != "triplets"
    }
    layout = DataLayout(sample_root)
    frames = pd.read_parquet(layout.table("frames", "sample"))
    faces = pd.read_parquet(layout.table("faces", "sample"))
    assert (frames["frame_idx"] % 50 == 0).all()
    assert set(faces["frame_idx"]) < set(frames["frame_idx"])  # faceless frames dropped
    assert (faces["n_faces"] > 1).any()  # the distinctive-face rule was exercised


def test_characters_carry_a_contact_sheet(built, sample_root: Path):
    event = next(
        e
        for e in built.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "characters"
    )
    metadata = event.materialization.metadata
    sheet = Path(metadata["contact_sheet"].value)
    assert sheet == DataLayout(sample_root).contact_sheet("characters", "sample")
    characters = pd.read_parquet(DataLayout(sample_root).table("characters", "sample"))
    with Image.open(sheet) as image:
        assert image.height >= characters["character_id"].nunique() * 96  # a row per character
    assert metadata["preview"].value.startswith("![contact sheet](data:image/jpeg;base64,")


def test_skip_counts_are_shown_only_where_rows_were_skipped(built, sample_root: Path):
    layout = DataLayout(sample_root)
    for stage in ("masks", "poses"):
        (event,) = [
            e for e in built.get_asset_materialization_events() if e.asset_key.path == [stage]
        ]
        table = pd.read_parquet(layout.table(stage, "sample"))
        reasons = table.loc[table["status"] != "ok", "skip_reason"].value_counts().to_dict()
        shown = event.materialization.metadata.get("skipped")
        if reasons:
            assert shown.value == reasons, stage
        else:
            assert shown is None, stage  # no empty `skipped {}` in the UI


def test_characters_match_the_ground_truth(built, sample_root: Path):
    layout = DataLayout(sample_root)
    characters = pd.read_parquet(layout.table("characters", "sample"))
    truth = json.loads(layout.ground_truth("sample").read_text())
    params = load_params(PARAMS, "tiny")
    report = compare_with_truth(
        characters, truth, params.frames.stride, params.characters.min_frames
    )
    assert report["pure"], report["groups"]  # each group is one identity
    assert report["expected"] == ["eileen_collins", "grace_hopper", "luis_pedro_coelho"]
    assert report["found"] == report["expected"]  # every identity with enough frames found


def test_a_failing_check_blocks_downstream_and_says_why(sample_root: Path, tmp_path: Path):
    root = tmp_path / "data"
    (root / "movies").mkdir(parents=True)
    (root / "movies" / "sample.mp4").symlink_to(sample_root / "movies" / "sample.mp4")
    params = yaml.safe_load(PARAMS.read_text())
    params["faces"]["min_face_px"] = 10_000  # no face is that large: faces comes out empty
    strict = tmp_path / "params.yaml"
    strict.write_text(yaml.safe_dump(params))

    result = materialize(root, strict)
    outcomes = check_outcomes(result)
    assert outcomes["frames_expectations"] and not outcomes["faces_expectations"]
    failed = next(e for e in result.get_asset_check_evaluations() if not e.passed)
    assert "expect_table_row_count_to_be_between" in failed.description
    materialised = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialised == {"frames", "faces"}
    assert not DataLayout(root).table("characters", "sample").exists()


def test_cli_build_fails_the_bad_movie_and_finishes_the_others(sample_root: Path, tmp_path: Path):
    root = tmp_path / "data"
    (root / "movies").mkdir(parents=True)
    shutil.copy(sample_root / "movies" / "sample.mp4", root / "movies" / "sample.mp4")
    (root / "movies" / "Broken Reel.mkv").write_bytes(b"\x1aE\xdf\xa3 garbage" * 64)

    result = CliRunner().invoke(
        main, ["dataset", "build", "--data", str(root), "--until", "frames"]
    )
    assert result.exit_code == 1, result.output
    assert "FAILED broken-reel" in result.output and "Broken Reel.mkv" in result.output
    assert "ok     sample" in result.output
    assert DataLayout(root).table("frames", "sample").is_file()
    assert not DataLayout(root).stage_dir("frames", "broken-reel").exists()
    # Both movies are registered partitions of the persistent instance, visible in the UI,
    # built by runs of the named job.
    instance = dg.DagsterInstance.get()
    assert {"sample", "broken-reel"} <= set(instance.get_dynamic_partitions("movies"))
    runs = instance.get_runs(dg.RunsFilter(tags={"cameo/data": str(DataLayout(root).root)}))
    assert {run.job_name for run in runs} == {"movie_job"}
    # Again: the current movie is kept, the failed one is tried again.
    again = CliRunner().invoke(main, ["dataset", "build", "--data", str(root), "--until", "frames"])
    assert "ok     sample (sample.mp4): up to date" in again.output
    assert "FAILED broken-reel" in again.output


def test_an_unknown_movie_key_suggests_the_key_of_its_file(tmp_path: Path):
    movies = tmp_path / "data" / "movies"
    movies.mkdir(parents=True)
    (movies / "Heldout A.mp4").write_bytes(b"not decoded here")
    result = CliRunner().invoke(
        main, ["dataset", "build", "--data", str(tmp_path / "data"), "--movie", "heldout_a"]
    )
    assert result.exit_code == 2
    assert "no movie file for partition key 'heldout_a'; did you mean 'heldout-a'?" in (
        result.output
    )


def test_sensor_registers_new_movies_once(sample_root: Path):
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"data": DataResource(root=str(sample_root))}
    )
    result = movie_sensor(context)
    assert [r.partition_key for r in result.run_requests] == ["sample"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["sample"]
    instance.add_dynamic_partitions("movies", ["sample"])
    again = movie_sensor(context)
    assert not again.run_requests and again.skip_reason


def test_triplet_dataset_from_the_movie_and_the_singles(dataset, sample_root: Path):
    assert check_outcomes(dataset) == {"triplets_expectations": True}
    layout = DataLayout(sample_root)
    manifest = pd.read_parquet(layout.triplets_dir / "manifest.parquet")
    characters = pd.read_parquet(layout.table("characters", "sample"))
    movie_rows = manifest[manifest["source"] == "movie"]
    assert len(movie_rows) == characters["character_id"].nunique()  # one triplet a character
    # Each pair's faces are one person to dlib: the mined characters are pure.
    threshold = load_params(PARAMS, "tiny").triplets.min_identity_similarity
    assert (movie_rows["identity_similarity"] >= threshold).all()
    assert (movie_rows["reference_frame"] != movie_rows["target_frame"]).all()
    assert manifest.loc[manifest["source"] == "single", "triplet_id"].tolist() == [
        "single-eileen_collins"
    ]
    # The single is cropped from the photograph the movie shows Eileen Collins in: one person
    # with her movie character, so the split keeps the two on one side.
    tiny = load_params(PARAMS, "tiny").training
    persons = person_keys(manifest, tiny.same_person_similarity)
    (joined,) = persons[manifest["source"] == "single"]
    assert joined.startswith("sample/") and persons.nunique() == len(movie_rows)
    skipped = pd.read_parquet(layout.triplets_dir / "skipped.parquet")
    cat = skipped[skipped["movie"] == "chelsea.png"].iloc[0]
    assert (cat["stage"], cat["reason"]) == (
        "faces",
        "no face found by the photo detector or the anime detector",
    )
    event = next(iter(dataset.get_asset_materialization_events())).materialization
    assert event.metadata["dvc_md5"].value == dvc_md5(layout.triplets_dir)
    assert event.metadata["dvc_md5"].value.endswith(".dir")
    # The first build of this data root made every unit; the page says which.
    assert event.metadata["kept_from_last_build"].value == 0
    assert event.metadata["made_anew"].value == [
        "movie-sample",
        "single-chelsea",
        "single-eileen_collins",
    ]
