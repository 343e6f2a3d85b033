"""Issue 11: bad footage, bad images, bad params and interrupted runs never crash a build,
lose a good movie or drop anything silently. Every bad file here is made by the test."""

import json
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from fractions import Fraction
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image
from pydantic import Field

from assets.captions import caption_frames, check_captions
from assets.characters import build_characters, check_characters
from assets.frames import TruncatedVideoWarning, VideoReadError, check_frames, extract_frames
from assets.masks import check_masks, generate_masks
from assets.params import CharactersParams, ImagesParams, ReferencesParams
from assets.poses import check_poses, estimate_poses
from assets.references import crop_references
from assets.stage import MOVIE_STAGE_DEPS, build_key, downstream, incomplete_stage
from assets.triplets import build_triplets
from core.io import ImageReadError, atomic_path, load_rgb, write_json
from core.layout import BuildLockedError, DataLayout, single_ids, source_fingerprint
from core.params import ParamsError, ParamsRoot, Section
from core.params import load_params as load_schema
from core.versioning import dvc_md5
from orchestration.cli.main import main
from orchestration.dataset_definitions import STAGES, build_resources
from orchestration.params import Params, load_params
from orchestration.resources import DataResource, ParamsResource, PerceptionResource
from orchestration.runs import fail_interrupted_runs, failure_message
from orchestration.sensors import movie_sensor
from perception.captions import TinyCaptioner
from perception.params import CaptionsParams, MasksParams, PosesParams
from tests.conftest import PARAMS
from tests.test_dataset_stages import small_movie_dataset
from tests.test_frames import write_video

# --- images -------------------------------------------------------------------------------


def png_declaring(path: Path, width: int, height: int) -> Path:
    """A few-byte PNG whose header declares `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def test_oversized_images_are_refused_before_decoding_naming_the_file(tmp_path: Path):
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused as a decompression bomb"):
        load_rgb(png_declaring(tmp_path / "bomb.png", 60_000, 60_000))
    # Under Pillow's own limit but over ours (images.max_pixels).
    with pytest.raises(ImageReadError, match=r"big\.png: 7000x7000 = 49000000 pixels, over"):
        load_rgb(png_declaring(tmp_path / "big.png", 7000, 7000))
    Image.new("RGB", (100, 60)).save(tmp_path / "small.png")
    assert load_rgb(tmp_path / "small.png").shape == (60, 100, 3)
    with pytest.raises(ImageReadError, match="over the limit of 5000"):
        load_rgb(tmp_path / "small.png", max_pixels=5000)


def test_exif_orientation_is_applied(tmp_path: Path):
    image = np.zeros((20, 40, 3), np.uint8)
    image[:, :20] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90° clockwise
    Image.fromarray(image).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    upright = load_rgb(tmp_path / "phone.jpg")
    assert upright.shape == (40, 20, 3)
    assert upright[:18].mean() > 200 and upright[22:].mean() < 50  # white half now on top


def test_16_bit_grey_is_scaled_not_clipped(tmp_path: Path):
    ramp = np.tile(np.linspace(0, 65535, 65).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as raw:
        assert raw.mode.startswith("I")  # really stored as 16-bit
    rgb = load_rgb(tmp_path / "grey16.png")
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255
    assert rgb[0, 32, 0] == 127  # mid-grey, not white


@pytest.mark.parametrize("name", ["cut.png", "cut.jpg"])
def test_truncated_and_fake_images_are_read_errors(tmp_path: Path, name: str):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / name)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=name.replace(".", r"\.")):
        load_rgb(tmp_path / name)


def test_gif_singles_are_read(tmp_path: Path):
    frames = [Image.new("RGB", (30, 20), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert load_rgb(tmp_path / "anim.gif").shape == (20, 30, 3)


# --- inputs: names, formats, links ----------------------------------------------------------


def test_inputs_are_used_or_listed_as_skipped_with_the_reason(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    layout.singles_dir.mkdir()
    for name in ("a.flv", "b.MKV", "song.m4a", "notes.txt", ".DS_Store"):
        (layout.movies_dir / name).write_bytes(b"x")
    (layout.movies_dir / "extras").mkdir()
    (layout.movies_dir / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    for name in ("hero.gif", "hero.tif", "readme.md"):
        (layout.singles_dir / name).write_bytes(b"x")
    (layout.singles_dir / "lost.png").symlink_to(tmp_path / "nowhere.png")

    movies, skipped = layout.scan_movies()
    assert sorted(movies) == ["a", "b"]
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons == {
        "extras": "a folder, not a video file",
        "gone.mp4": f"dangling symlink to {tmp_path / 'nowhere.mp4'}",
        "notes.txt": "not a video format cameo reads (.txt)",
        "song.m4a": "audio-only file (.m4a): no video to mine",
    }
    singles, skipped = layout.scan_singles()
    assert sorted(p.name for p in singles.values()) == ["hero.gif", "hero.tif"]
    # One stem, two files: an ID each, from its own name (as movies' partition keys).
    assert all(single_id.startswith("hero-") for single_id in singles)
    assert single_ids(["hero.tif", "hero.gif", "villain.png"])["villain.png"] == "villain"
    assert {s.path.name for s in skipped} == {"lost.png", "readme.md"}


def test_sensor_keys_every_file_and_removes_partitions_of_gone_files(tmp_path: Path):
    layout = DataLayout(tmp_path)
    layout.movies_dir.mkdir()
    for name in ("a b.mp4", "a-b.mp4", "映画.mp4"):
        (layout.movies_dir / name).write_bytes(b"x")
    instance = dg.DagsterInstance.ephemeral()
    context = dg.build_sensor_context(
        instance=instance, resources={"data": DataResource(root=str(tmp_path))}
    )
    result = movie_sensor(context)
    keys = sorted(r.partition_key for r in result.run_requests)
    assert len(keys) == 3 and all(k.isascii() for k in keys)
    instance.add_dynamic_partitions("movies", keys)
    assert movie_sensor(context).skip_reason
    (layout.movies_dir / "映画.mp4").unlink()
    again = movie_sensor(context)
    assert not again.run_requests
    (delete,) = again.dynamic_partitions_requests
    assert list(delete.partition_keys) == [k for k in keys if k.startswith("movie-")]
    # A file replaced after its frames were built is run again.
    instance.delete_dynamic_partition("movies", delete.partition_keys[0])
    key, video = next(iter(layout.movies().items()))
    mark_complete(layout, key, video)
    assert movie_sensor(context).skip_reason
    video.write_bytes(b"a new cut of the movie")
    replaced = movie_sensor(context)
    assert [r.partition_key for r in replaced.run_requests] == [key]
    assert not replaced.dynamic_partitions_requests


# --- video ----------------------------------------------------------------------------------


def test_a_movie_cut_short_warns_and_keeps_its_frames(tmp_path: Path):
    video = tmp_path / "cut.mp4"
    with av.open(str(video), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(200):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # incompressible
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    with pytest.warns(TruncatedVideoWarning, match=r"cut\.mp4: decoded \d+ of the 200 frames"):
        df = extract_frames(video, tmp_path / "out", "cut", stride=10)
    assert 0 < len(df) < 20


def test_an_intact_movie_does_not_warn(tmp_path: Path, recwarn):
    extract_frames(write_video(tmp_path / "ok.mp4", 60), tmp_path / "out", "ok", stride=25)
    assert not [w for w in recwarn if issubclass(w.category, TruncatedVideoWarning)]


def test_frames_over_the_pixel_limit_fail_naming_the_movie(tmp_path: Path):
    video = write_video(tmp_path / "wide shot.mp4", 3, size=(128, 96))
    with pytest.raises(VideoReadError, match=r"wide shot\.mp4: 128x96 frames, over the limit"):
        extract_frames(video, tmp_path / "out", "wide-shot", max_pixels=10_000)


def test_variable_frame_rate_and_single_frame_clips_extract(tmp_path: Path):
    video = tmp_path / "vfr.mkv"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("mpeg4", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i, pts in enumerate([0, 40, 50, 170, 180, 400]):  # irregular gaps (ms)
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 30, np.uint8), "rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    df = extract_frames(video, tmp_path / "out", "vfr", stride=2, relative_to=tmp_path)
    assert df["frame_idx"].tolist() == [0, 2, 4]
    np.testing.assert_allclose(df["pts_s"], [0.0, 0.05, 0.18])  # the clip's own timestamps
    assert check_frames(df, tmp_path, stride=2).passed
    one = extract_frames(write_video(tmp_path / "one.mp4", 1), tmp_path / "one", "one")
    assert one["frame_idx"].tolist() == [0]


# --- a movie with no usable characters: empty tables that pass their checks ----------------


def test_no_characters_gives_empty_tables_through_every_stage(tmp_path: Path):
    """Empty tables, written and read back as the stages do, through every stage and check."""

    def round_trip(df: pd.DataFrame, name: str) -> pd.DataFrame:
        df.to_parquet(tmp_path / f"{name}.parquet")
        return pd.read_parquet(tmp_path / f"{name}.parquet")

    faces = pd.DataFrame(
        {
            "movie": ["m"],
            "frame_idx": [0],
            "path": ["f.jpg"],
            "width": [64],
            "height": [48],
            "bbox": [[1.0, 1.0, 20.0, 20.0]],
            "embedding": [np.eye(512, dtype=np.float32)[0].tolist()],
            "embedding_raw_norm": [20.0],
            "identity_embedding": [np.eye(512, dtype=np.float32)[0].tolist()],
        }
    )
    characters = round_trip(build_characters(faces, CharactersParams(min_frames=3)), "c")
    assert characters.empty and check_characters(characters, CharactersParams()).passed
    masks = round_trip(
        generate_masks(characters, tmp_path, tmp_path / "m", None, None, MasksParams()), "m"
    )
    assert check_masks(masks, tmp_path / "m", MasksParams()).passed
    poses = round_trip(
        estimate_poses(masks, tmp_path, tmp_path / "m", tmp_path / "p", None, PosesParams()), "p"
    )
    assert check_poses(poses, tmp_path / "p", PosesParams()).passed
    captions = round_trip(caption_frames(poses, tmp_path, TinyCaptioner(), CaptionsParams()), "cap")
    assert captions.empty and check_captions(captions, CaptionsParams()).passed
    crops = crop_references(masks, tmp_path, tmp_path / "m", tmp_path / "r", ReferencesParams())
    assert crops.empty


# --- the dataset is a function of the files present ----------------------------------------


TINY = load_params(PARAMS, "tiny")


def mark_complete(layout: DataLayout, movie: str, video: Path) -> None:
    """Stage records of a finished, checked build of `movie` from `video` with the tiny
    params, as the stage assets and their checks write them."""
    md5 = dvc_md5(video)
    for stage in MOVIE_STAGE_DEPS:
        write_json(
            {
                "stage": stage,
                "movie": movie,
                "source": source_fingerprint(video),
                **build_key(stage, md5, TINY),
                "status": "ok",
            },
            layout.stage_status(stage, movie),
        )


def built_movie_and_no_singles(root: Path) -> DataLayout:
    """`small_movie_dataset`'s movie m, its file present and every stage complete, and an
    empty singles/ folder."""
    layout = small_movie_dataset(root)
    layout.movies_dir.mkdir()
    video = layout.movies_dir / "m.mp4"
    video.write_bytes(b"a movie whose stages all completed")
    mark_complete(layout, "m", video)
    layout.singles_dir.mkdir()
    return layout


@pytest.fixture(scope="module")
def perception() -> PerceptionResource:
    return PerceptionResource(params=ParamsResource(path=str(PARAMS), profile="tiny"))


def test_triplets_come_only_from_present_complete_movies(tmp_path: Path, perception):
    layout = small_movie_dataset(tmp_path / "data")
    layout.movies_dir.mkdir()
    video = layout.movies_dir / "m.mp4"
    video.write_bytes(b"version 1")
    params = perception.params.values

    def build(values: Params = params) -> tuple[pd.DataFrame, pd.DataFrame]:
        out = tmp_path / "out"
        shutil.rmtree(out, ignore_errors=True)
        built = build_triplets(layout, perception.priors, values, out)
        return built.manifest, pd.DataFrame(built.skipped)

    # Tables on disk but no stage record: a run that never finished.
    manifest, skipped = build()
    assert manifest.empty
    first = skipped[skipped["movie"] == "m"].iloc[0]
    assert (first["stage"], first["file"]) == ("frames", "m.mp4")
    assert first["reason"].startswith("did not complete")

    mark_complete(layout, "m", video)
    manifest, _ = build()
    assert manifest["movie"].tolist() == ["m"]

    # A crash half way: the crashed stage's and later records were withdrawn.
    for stage in downstream("poses"):
        layout.stage_status(stage, "m").unlink()
    _, skipped = build()
    assert skipped.loc[skipped["movie"] == "m", "stage"].tolist() == ["poses"]

    # Built with other params than those now: not used until rebuilt.
    mark_complete(layout, "m", video)
    other = params.model_copy(update={"characters": CharactersParams(min_frames=4, max_frames=50)})
    manifest, skipped = build(other)
    assert manifest.empty
    stale = skipped[skipped["movie"] == "m"].iloc[0]
    assert (stale["stage"], stale["reason"]) == (
        "characters",
        "built with other params (characters)",
    )

    # Replaced by another file: its old results are not used.
    mark_complete(layout, "m", video)
    video.write_bytes(b"version 2, a different file")
    manifest, skipped = build()
    assert manifest.empty
    assert "earlier version of m.mp4" in skipped.loc[skipped["movie"] == "m", "reason"].iloc[0]

    # Deleted: no triplets and nothing about it.
    video.unlink()
    manifest, skipped = build()
    assert manifest.empty and "m" not in set(skipped.get("movie", []))


def test_downstream_follows_the_stage_graph():
    assert downstream("masks") == ["masks", "poses", "captions", "references"]
    assert downstream("captions") == ["captions"]
    assert downstream("frames") == list(MOVIE_STAGE_DEPS)


def test_bad_singles_are_recorded_and_the_good_ones_kept(
    sample_root: Path, tmp_path: Path, perception
):
    layout = DataLayout(tmp_path)
    layout.singles_dir.mkdir(parents=True)
    shutil.copy(sample_root / "singles" / "eileen_collins.png", layout.singles_dir)
    png_declaring(layout.singles_dir / "bomb.png", 60_000, 60_000)
    Image.new("RGB", (64, 64), "gray").save(layout.singles_dir / "plain.gif")
    (layout.singles_dir / "notes.txt").write_text("not an image")
    (layout.singles_dir / "lost.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (layout.singles_dir / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")

    manifest, skipped, _, _ = build_triplets(
        layout, perception.priors, perception.params.values, tmp_path / "out"
    )
    assert manifest["triplet_id"].tolist() == ["single-eileen_collins"]
    records = {s["file"]: (s["stage"], s["reason"]) for s in skipped}
    assert records["bomb.png"][0] == "read" and "decompression bomb" in records["bomb.png"][1]
    assert records["photo.png"][0] == "read" and "photo.png" in records["photo.png"][1]
    assert records["plain.gif"] == (
        "faces",
        "no face found by the photo detector or the anime detector",
    )
    assert records["notes.txt"][0] == records["lost.jpg"][0] == "inputs"
    assert pd.read_parquet(tmp_path / "out" / "skipped.parquet")["file"].tolist() == [
        s["file"] for s in skipped
    ]


def test_singles_of_one_stem_get_an_id_each_and_the_movies_keep_theirs(
    sample_root: Path, tmp_path: Path, perception
):
    layout = built_movie_and_no_singles(tmp_path / "data")
    portrait = Image.open(sample_root / "singles" / "eileen_collins.png")
    portrait.save(layout.singles_dir / "hero.png")
    portrait.save(layout.singles_dir / "hero.jpg", quality=95)

    def triplet_ids(out: Path) -> list[str]:
        manifest = build_triplets(layout, perception.priors, perception.params.values, out).manifest
        assert sorted(manifest["triplet_id"]) == sorted(p.name for p in out.glob("*/"))
        return sorted(manifest["triplet_id"])

    ids = triplet_ids(tmp_path / "first")
    singles = [i for i in ids if i.startswith("single-hero-")]
    assert "m-c0000" in ids and len(singles) == len(set(singles)) == 2
    assert triplet_ids(tmp_path / "again") == ids


def test_a_rebuild_takes_unchanged_units_triplets_from_the_last_build(
    sample_root: Path, tmp_path: Path, perception
):
    """A movie whose stage outputs, and a single image whose bytes, are unchanged give the
    triplets the last build made (the same bytes, no model run); a changed unit is made anew,
    a unit whose files were removed by hand fails alone and is not kept, an unreadable record
    is made anew, a unit gone leaves the cache, and a change to a param a unit reads makes it
    anew."""
    layout = built_movie_and_no_singles(tmp_path / "data")
    for name in ("eileen_collins.png", "chelsea.png"):  # a triplet, and a skip record
        shutil.copy(sample_root / "singles" / name, layout.singles_dir)
    params = perception.params.values
    builds = iter(range(100))

    def build(values: Params = params) -> tuple[str, list[dict], list[str]]:
        """The dataset's md5, its skip records and the units made anew."""
        out = tmp_path / f"out{next(builds)}"
        built = build_triplets(layout, perception.priors, values, out)
        return dvc_md5(out), built.skipped, built.made

    everything = ["movie-m", "single-chelsea", "single-eileen_collins"]
    first, first_skipped, made = build()
    assert made == everything
    again, again_skipped, made = build()
    assert made == [] and again == first
    assert pd.DataFrame(again_skipped).equals(pd.DataFrame(first_skipped))

    (layout.singles_dir / "chelsea.png").unlink()
    Image.open(sample_root / "singles" / "eileen_collins.png").transpose(
        Image.Transpose.FLIP_LEFT_RIGHT
    ).save(layout.singles_dir / "eileen_collins.png")
    _, _, made = build()
    assert made == ["single-eileen_collins"]
    present = ["movie-m", "single-eileen_collins"]  # chelsea.png is gone
    assert sorted(p.name for p in layout.triplets_cache_dir.iterdir()) == present

    pose = layout.stage_dir("poses", "m") / "pose0.png"
    Image.open(pose).rotate(90).save(pose)
    _, _, made = build()
    assert made == ["movie-m"]

    mask = layout.stage_dir("masks", "m") / "mask0.png"
    mask_bytes = mask.read_bytes()
    mask.unlink()
    _, skipped, made = build()
    assert made == [] and not (layout.triplets_cache_dir / "movie-m").exists()
    (lost,) = [s for s in skipped if s["movie"] == "m" and s["stage"] == "triplets"]
    assert "mask0.png" in lost["reason"]
    mask.write_bytes(mask_bytes)
    (layout.triplets_cache_dir / "single-eileen_collins" / "kept.json").write_text("{trunc")
    _, _, made = build()
    assert made == present  # the movie's entry went with its failure

    # A new seed for the movies' pairs: a single's triplet does not read it.
    seed = params.model_copy(update={"triplets": params.triplets.model_copy(update={"seed": 7})})
    _, _, made = build(seed)
    assert made == ["movie-m"]
    padding = params.references.model_copy(update={"padding": params.references.padding + 0.1})
    _, _, made = build(params.model_copy(update={"references": padding}))
    assert made == ["single-eileen_collins"]  # the movie's references stage is out of date


def test_a_decode_limit_from_params_refuses_large_singles(tmp_path: Path, perception):
    layout = DataLayout(tmp_path)
    layout.singles_dir.mkdir(parents=True)
    Image.new("RGB", (200, 100)).save(layout.singles_dir / "wide.png")
    params = perception.params.values.model_copy(update={"images": ImagesParams(max_pixels=10_000)})
    skipped = build_triplets(layout, perception.priors, params, tmp_path / "out").skipped
    assert skipped[0]["stage"] == "read" and "200x100 = 20000 pixels" in skipped[0]["reason"]


# --- params ---------------------------------------------------------------------------------


def write_params(tmp_path: Path, edit) -> Path:
    params = yaml.safe_load(PARAMS.read_text())
    edit(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, allow_unicode=True))
    return path


def test_params_problems_are_listed_together(tmp_path: Path):
    def nonsense(p):
        p["frames"]["stride"] = -5
        p["frames"]["jpeg_quality"] = "high"
        p["faces"]["det_treshold"] = 0.4
        p["characters"]["similarity_threshold"] = 2.0
        p["profiles"]["tiny"]["characters"]["min_frames"] = 60  # > tiny's max_frames 50
        p["captions"]["batch_size"] = 0
        p["masks"]["person_box_prompt"] = "yes"

    with pytest.raises(ParamsError) as error:
        load_params(write_params(tmp_path, nonsense), "tiny")
    message = str(error.value)
    for expected in (
        "7 problem(s)",
        "frames.stride: must be >= 1, got -5",
        "frames.jpeg_quality: expected an integer, got 'high'",
        "faces.det_treshold: unknown key (did you mean 'det_thresh'?)",
        "characters.similarity_threshold: must be <= 1.0, got 2.0",
        "characters: min_frames (60) > max_frames (50)",
        "captions.batch_size: must be >= 1, got 0",
        "masks.person_box_prompt: expected true or false, got 'yes'",
    ):
        assert expected in message, message


def test_a_threshold_from_another_recognisers_scale_is_refused(tmp_path: Path):
    """dlib scores different people 0.80-0.91: grouping characters with it at ArcFace's 0.5
    would merge everyone. Each identity threshold is checked against its own recogniser."""
    dlib = write_params(tmp_path, lambda p: p["faces"].update(recogniser="dlib"))
    with pytest.raises(ParamsError) as error:
        load_params(dlib, "full")
    assert "characters.similarity_threshold 0.5 is not on dlib's scale: expected 0.88-0.96" in (
        str(error.value)
    )

    def on_dlibs_scale(p):
        p["faces"]["recogniser"] = "dlib"
        p["characters"]["similarity_threshold"] = 0.91
        p["profiles"]["tiny"]["characters"]["similarity_threshold"] = 0.91

    assert load_params(write_params(tmp_path, on_dlibs_scale), "full").faces.recogniser == "dlib"
    # The evaluation scored by an insightface folder: ArcFace's scale, not dlib's 0.91.
    arcface = write_params(tmp_path, lambda p: p["evaluation"].update(face_model="antelopev2"))
    with pytest.raises(ParamsError, match=r"min_face_similarity 0\.91 is not on arcface.s scale"):
        load_params(arcface, "full")


def test_unknown_profile_is_one_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("CAMEO_PROFILE")
    path = write_params(tmp_path, lambda p: p.update(profile="huge"))
    with pytest.raises(ParamsError, match="unknown profile 'huge'; expected one of tiny, full"):
        load_params(path)
    bad_override = write_params(tmp_path, lambda p: p["profiles"].update(tiyn={}))
    with pytest.raises(ParamsError, match=r"profiles\.tiyn: unknown profile"):
        load_params(bad_override, "tiny")


def test_a_misspelt_section_is_refused_and_sections_compose(tmp_path: Path):
    path = write_params(tmp_path, lambda p: p.update(trainig={"max_steps": 1}))
    with pytest.raises(ParamsError, match=r"trainig: unknown key \(did you mean 'training'\?\)"):
        load_params(path, "tiny")

    class ExperimentParams(Section):  # what another package would own
        lr: float = Field(1e-4, gt=0)
        steps: int = Field(100, ge=1)

    class WithExperiments(ParamsRoot):
        experiments: ExperimentParams = ExperimentParams()

    values = write_params(tmp_path, lambda p: p.clear() or p.update(experiments={"lr": 1e-5}))
    assert load_schema(values, WithExperiments, "tiny").experiments.lr == 1e-5
    typo = write_params(tmp_path, lambda p: p.clear() or p.update(experiments={"lr": 0, "step": 1}))
    with pytest.raises(ParamsError) as error:
        load_schema(typo, WithExperiments, "tiny")
    assert "experiments.step: unknown key (did you mean 'steps'?)" in str(error.value)
    assert "experiments.lr: must be > 0.0, got 0" in str(error.value)


def test_the_shipped_params_are_valid_in_both_profiles():
    for profile in ("tiny", "full"):
        params = load_params(PARAMS, profile)
        assert params.images.max_pixels > 0  # a default filled in


def test_cli_checks_params_before_any_stage_runs(tmp_path: Path):
    root = tmp_path / "data"
    (root / "movies").mkdir(parents=True)
    write_video(root / "movies" / "m.mp4", 3)
    path = write_params(tmp_path, lambda p: p["frames"].update(stride=0, strid=5))
    result = CliRunner().invoke(
        main, ["dataset", "build", "--data", str(root), "--params", str(path)]
    )
    assert result.exit_code == 1
    assert "frames.stride: must be >= 1" in result.output
    assert "frames.strid: unknown key (did you mean 'stride'?)" in result.output
    assert not (root / "frames").exists()


def test_full_profile_lists_every_missing_model_at_once(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CAMEO_MODELS", str(tmp_path / "models"))
    (tmp_path / "models" / "sam").mkdir(parents=True)
    root = tmp_path / "data"
    (root / "movies").mkdir(parents=True)
    write_video(root / "movies" / "m.mp4", 3)
    result = CliRunner().invoke(
        main,
        ["dataset", "build", "--data", str(root), "--params", str(PARAMS), "--profile", "full"],
    )
    assert result.exit_code == 1
    assert "3 model(s) missing" in result.output
    assert "`cameo weights download --for dataset` downloads them" in result.output
    for setting in ("faces.model", "poses.model", "captions.model"):
        assert setting in result.output
    assert not (root / "frames").exists()
    until_frames = CliRunner().invoke(
        main,
        [
            "dataset",
            "build",
            "--data",
            str(root),
            "--params",
            str(PARAMS),
            "--profile",
            "full",
            "--until",
            "frames",
        ],
    )
    assert until_frames.exit_code == 0, until_frames.output  # frames needs no model
    # A run started elsewhere (the UI, the sensor) checks the models of its own stages.
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("movies", ["m"])
    run = dg.materialize(
        list(STAGES),
        selection=["faces", "masks", "poses"],
        partition_key="m",
        instance=instance,
        resources=build_resources(str(root), str(PARAMS), "full"),
        raise_on_error=False,
    )
    failure = next(e for e in run.all_events if e.is_run_failure)
    message = failure_message(failure)
    assert "2 model(s) missing" in message and "faces.model" in message
    assert "poses.model" in message and "captions.model" not in message


# --- interrupted and concurrent runs --------------------------------------------------------


def _replace_folder_repeatedly(target: str, writer: int, rounds: int) -> None:
    for i in range(rounds):
        with atomic_path(Path(target)) as tmp:
            tmp.mkdir()
            for n in range(5):
                (tmp / f"{n}.txt").write_text(f"{writer}-{i}")


def test_concurrent_folder_replacers_never_fail(tmp_path: Path):
    target = tmp_path / "frames" / "m"
    context = multiprocessing.get_context("fork")
    workers = [
        context.Process(target=_replace_folder_repeatedly, args=(str(target), w, 40))
        for w in range(4)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0, 0]
    contents = {p.read_text() for p in target.iterdir()}
    assert len(contents) == 1 and sorted(p.name for p in target.iterdir()) == [
        f"{n}.txt" for n in range(5)
    ]  # one writer's complete folder
    assert [p.name for p in target.parent.iterdir()] == ["m"]  # no temp folder left


KILLED_WRITER = """
import sys, time
from pathlib import Path
from core.io import atomic_path
with atomic_path(Path(sys.argv[1])) as tmp:
    tmp.mkdir()
    for i in range(85):
        (tmp / f"{i:08d}.jpg").write_bytes(b"x")
    print("written", flush=True)
    time.sleep(60)
"""


def test_temp_folders_of_a_killed_process_are_cleaned(tmp_path: Path):
    layout = DataLayout(tmp_path)
    target = layout.stage_dir("frames", "m")
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    assert writer.stdout.readline().strip() == "written"
    (leftover,) = (tmp_path / "frames").glob(".tmp-*")
    assert layout.clean_stale_temps() == []  # its process still runs: left alone
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert leftover.is_dir() and not target.exists()
    assert layout.clean_stale_temps() == [leftover]
    assert list((tmp_path / "frames").iterdir()) == []


def test_a_second_build_on_one_data_dir_refuses_with_a_clear_message(tmp_path: Path):
    layout = DataLayout(tmp_path / "data")
    (layout.movies_dir).mkdir(parents=True)
    write_video(layout.movies_dir / "m.mp4", 3)
    with layout.build_lock():
        with pytest.raises(BuildLockedError, match=rf"pid {os.getpid()}"), layout.build_lock():
            pass
        result = CliRunner().invoke(
            main, ["dataset", "build", "--data", str(layout.root), "--params", str(PARAMS)]
        )
        assert result.exit_code == 1 and "is being built by pid" in result.output
        assert "--wait" in result.output
    with layout.build_lock():  # released
        pass


def test_runs_left_started_by_a_killed_build_are_marked_failed(tmp_path: Path):
    instance = dg.DagsterInstance.ephemeral()
    root = str(tmp_path)

    def run(tags: dict) -> str:
        return instance.add_run(
            dg.DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED, tags=tags)
        ).run_id

    stale = run({"cameo/source": "cli", "cameo/data": root})
    other_dir = run({"cameo/source": "cli", "cameo/data": "/elsewhere"})
    from_ui = run({"cameo/data": root})
    assert fail_interrupted_runs(instance, root) == [stale]
    status = {r: instance.get_run_by_id(r).status for r in (stale, other_dir, from_ui)}
    assert status == {
        stale: dg.DagsterRunStatus.FAILURE,
        other_dir: dg.DagsterRunStatus.STARTED,
        from_ui: dg.DagsterRunStatus.STARTED,
    }


# --- end to end: a folder of real-world footage ---------------------------------------------


def portrait_movie(path: Path, portrait: Path, n_frames: int = 3) -> Path:
    """A movie shorter than the stride showing one portrait: one face frame, no character."""
    image = load_rgb(portrait)
    image = image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        for _ in range(n_frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def test_a_movie_without_a_character_says_why_in_the_build_and_the_summary(
    sample_root: Path, tmp_path: Path
):
    root = tmp_path / "data"
    (root / "movies").mkdir(parents=True)
    portrait = sample_root / "singles" / "eileen_collins.png"
    portrait_movie(root / "movies" / "still.mp4", portrait, n_frames=1)
    portrait_movie(root / "movies" / "short.mp4", portrait, n_frames=60)  # frames 0 and 50
    options = ["--data", str(root), "--params", str(PARAMS)]
    min_frames = TINY.characters.min_frames
    need = f"a character needs {min_frames} (characters.min_frames)"
    reasons = {
        "still": f"no character: 1 frame kept, 1 with a face; {need}",
        "short": f"no character: 2 frames kept, 2 with a face; {need}",
    }
    assert min_frames > 2
    for _ in ("built", "up to date"):
        build = CliRunner().invoke(main, ["dataset", "build", "--until", "characters", *options])
        assert build.exit_code == 0, build.output
        lines = build.stdout.splitlines()  # stderr has the progress bar
        for movie, reason in reasons.items():
            at = next(i for i, line in enumerate(lines) if line.startswith(f"ok     {movie} "))
            assert lines[at + 1] == f"       warning: {reason}", build.output
    assert "up to date" in build.stdout
    summary = CliRunner().invoke(main, ["dataset", "summary", *options])
    for reason in reasons.values():
        assert f"warning: {reason}" in summary.output, summary.output
    layout = DataLayout(root)
    assert layout.stage_status("characters", "still").read_text().count(reasons["still"]) == 1


@pytest.mark.slow
def test_a_folder_of_bad_footage_builds_what_it_can_and_says_why(sample_root: Path, tmp_path: Path):
    root = tmp_path / "data"
    movies = root / "movies"
    movies.mkdir(parents=True)
    shutil.copytree(sample_root / "singles", root / "singles")
    png_declaring(root / "singles" / "bomb.png", 60_000, 60_000)
    portrait_movie(movies / "映画.mp4", sample_root / "singles" / "eileen_collins.png")
    (movies / "Broken Reel.mkv").write_bytes(b"\x1aE\xdf\xa3 garbage" * 64)
    write_video(movies / "tiny.mp4", 2, size=(16, 16))  # no face: the faces check fails
    (movies / "notes.txt").write_text("shooting notes")

    result = CliRunner().invoke(
        main, ["dataset", "build", "--data", str(root), "--params", str(PARAMS)]
    )
    out = result.output
    assert result.exit_code == 1, out
    layout = DataLayout(root)
    keys = {p.name: k for k, p in layout.movies().items()}
    # The bad movie's line gives the real cause and names the file, on one line.
    broken = next(line for line in out.splitlines() if line.startswith("FAILED broken-reel"))
    assert "Broken Reel.mkv" in broken and "not a readable video" in broken
    assert "DagsterExecutionStepExecutionError" not in out
    tiny = next(line for line in out.splitlines() if line.startswith("FAILED tiny"))
    assert "movie tiny (tiny.mp4)" in tiny and "faces_expectations" in tiny
    # The movie without characters finished every stage with empty, passing tables.
    assert f"ok     {keys['映画.mp4']} (映画.mp4)" in out
    assert "ok     triplets" in out
    assert "skipped movies/notes.txt" in out

    skipped = pd.read_parquet(layout.triplets_dir / "skipped.parquet")
    by_file = {r.file: (r.stage, r.reason) for r in skipped.itertuples() if r.file}
    assert by_file["Broken Reel.mkv"][0] == "frames"
    assert "Broken Reel.mkv" in by_file["Broken Reel.mkv"][1]
    assert by_file["tiny.mp4"][0] == "faces" and "faces_expectations" in by_file["tiny.mp4"][1]
    need = f"a character needs {TINY.characters.min_frames} (characters.min_frames)"
    assert by_file["映画.mp4"] == (
        "characters",
        f"no character: 1 frame kept, 1 with a face; {need}",
    )
    assert by_file["notes.txt"][0] == "inputs"
    assert by_file["bomb.png"][0] == "read"
    manifest = pd.read_parquet(layout.triplets_dir / "manifest.parquet")
    assert manifest["triplet_id"].tolist() == ["single-eileen_collins"]
    assert incomplete_stage(layout, keys["映画.mp4"], movies / "映画.mp4", TINY) is None
    assert not list(root.glob("*/.tmp-*")) and not list(root.glob(".tmp-*"))


def test_single_images_alone_build_a_dataset(tmp_path: Path):
    """No movie, single images only (as the article's anime identities come): the triplets are
    built from them, anime sprites among them where installed, with their style in the
    manifest, the metrics and the summary; asking for a movie stage still says there is no
    movie."""
    from assets.sample_movie import renpy_sprites, write_sample_singles

    layout = DataLayout(tmp_path / "data")
    write_sample_singles(layout)
    sprites = [found[0] for found in renpy_sprites().values() if found]
    layout.anime_singles_dir.mkdir()
    for sprite in sprites:
        shutil.copyfile(sprite, layout.anime_singles_dir / sprite.name)
    options = ["--data", str(layout.root), "--params", str(PARAMS)]
    built = CliRunner().invoke(main, ["dataset", "build", *options])
    assert built.exit_code == 0, built.output
    triplets = pd.read_parquet(layout.triplets_dir / "manifest.parquet")
    assert len(triplets) >= 1 and set(triplets["source"]) == {"single"}
    anime = triplets[triplets["style"] == "anime"]
    assert len(anime) == len(sprites) and anime["face_dropped"].all()
    assert (anime["mask_alpha_iou"] > 0.5).all() and triplets["mask_alpha_iou"].isna().sum() == 1
    metrics = json.loads(layout.metrics_file.read_text())
    assert metrics["by_style"] == {"photo": 1, "anime": len(sprites)}
    summary = CliRunner().invoke(main, ["dataset", "summary", *options])
    assert f"by style {{'anime': {len(sprites)}, 'photo': 1}}" in summary.output or not sprites
    frames = CliRunner().invoke(main, ["dataset", "build", "--until", "frames", *options])
    assert frames.exit_code == 2 and "no movie files under" in frames.output
    empty = tmp_path / "empty"
    nothing = CliRunner().invoke(main, ["dataset", "build", "--data", str(empty)])
    assert nothing.exit_code == 2 and "and no single images under" in nothing.output
