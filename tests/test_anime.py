"""Anime, measured on real anime art: the sprites of Debian's `renpy-thequestion` and
`renpy-demo` (skipped, with the reason, where the packages are absent; `.ci/run` installs
them). Photo detectors find none of their faces; the anime detector finds them all, and none
in the sample's photographs. Anime singles become triplets with their style, a mask scored
against the sprite's alpha and no face condition; an anime reference at inference drops its
face the same way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from assets.sample_movie import INSTALL_SPRITES, renpy_sprites
from assets.singles import single_triplet
from bench.anime import identity_report, report
from bench.report import PARAMS
from core.io import ImageReadError, load_rgb
from core.layout import DataLayout
from orchestration.params import load_params
from perception.anime_segmentation import AnimeSegmenter, tiny_anime_segmentation_model
from perception.params import AnimeFacesParams, AnimeMasksParams, FacesParams
from perception.priors import Priors
from serving.studio import describe_reference

needs_sprites = pytest.mark.skipif(
    not all(renpy_sprites().values()), reason=f"no anime sprites on this machine: {INSTALL_SPRITES}"
)


@pytest.fixture(scope="module")
def params():
    return load_params(PARAMS, "tiny")


@pytest.fixture(scope="module")
def priors(params) -> Priors:
    return params.priors(None)


@needs_sprites
def test_the_anime_detector_finds_every_sprites_face_and_none_in_photographs():
    sprites = renpy_sprites()
    assert [len(paths) for paths in sprites.values()] == [8, 3]
    text = report(sprites)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "| " in line}
    anime = next(row for name, row in rows.items() if name.startswith("lbpcascade"))
    assert "| 11 of 11 | 11 of 11 |" in anime  # at full and half size
    assert "| 0 of 11 | 0 of 11 | 0 of 11 |" in rows["dlib's HOG (upsample 1)"]
    assert "Eileen Collins 0, Grace Hopper 0, Luis Pedro Coelho 0, Chelsea the cat 0" in text


@needs_sprites
def test_dlib_calls_the_two_anime_characters_one_person_so_anime_faces_are_dropped():
    """What `faces.anime.identity: dropped` is chosen from (BENCHMARKS.md, "Anime identity")."""
    rows = {
        line.split(" | ")[0].strip("| "): line
        for line in identity_report(renpy_sprites()).splitlines()
        if line.startswith("| ")
    }
    assert rows["dlib's ResNet (its own 5-point alignment)"].endswith("| no | 24 of 24 at 0.91 |")
    assert AnimeFacesParams().identity == "dropped"


def test_without_the_packages_the_report_says_how_to_get_them():
    assert INSTALL_SPRITES in report({"sylvie": [], "eileen": []})


def test_sprites_of_every_mode_are_composited_on_white_and_an_invisible_one_is_refused(
    tmp_path: Path,
):
    red = np.zeros((8, 8, 4), np.uint8)
    red[2:6, 2:6] = (255, 0, 0, 255)  # a red square on a transparent background
    Image.fromarray(red).save(tmp_path / "rgba.png")
    grey = Image.fromarray(red[..., [0, 3]], "LA")  # grey with alpha
    grey.save(tmp_path / "la.png")
    palette = Image.fromarray(red).convert("P")  # a palette with a transparent entry
    palette.save(tmp_path / "p.png", transparency=0)
    rgb = load_rgb(tmp_path / "rgba.png")
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[3, 3]) == (255, 0, 0)
    assert tuple(load_rgb(tmp_path / "la.png")[0, 0]) == (255, 255, 255)
    assert load_rgb(tmp_path / "p.png").shape == (8, 8, 3)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "invisible.png")
    with pytest.raises(ImageReadError, match=r"invisible\.png: fully transparent"):
        load_rgb(tmp_path / "invisible.png")


def test_single_images_under_anime_are_anime_and_keep_their_own_ids(tmp_path: Path):
    layout = DataLayout(tmp_path)
    (layout.anime_singles_dir / "extras").mkdir(parents=True)
    for path in (layout.singles_dir / "hero.png", layout.anime_singles_dir / "hero.png"):
        Image.new("RGB", (8, 8)).save(path)
    (layout.anime_singles_dir / "notes.txt").write_text("x")
    singles, skipped = layout.scan_singles()
    assert {key: layout.single_style(path) for key, path in singles.items()} == {
        "hero": "photo",
        "anime-hero": "anime",
    }
    assert {s.path.name: s.reason for s in skipped} == {
        "extras": "a folder, not an image file",
        "notes.txt": "not an image format cameo reads (.txt)",
    }


@needs_sprites
def test_an_anime_single_becomes_a_triplet_with_a_true_mask_and_no_face_condition(
    tmp_path: Path, params, priors
):
    sylvie = renpy_sprites()["sylvie"][0]
    triplet, stage, reason = single_triplet("sylvie", sylvie, "anime", priors, params)
    assert triplet is not None, (stage, reason)
    assert triplet.style == "anime" and triplet.face_dropped
    # The tiny segmenter takes a blank page for background by construction: this checks the
    # wiring (the flipped alpha against the flipped target's mask), not a model.
    assert triplet.mask_alpha_iou > 0.9
    assert np.linalg.norm(triplet.face_embedding) == pytest.approx(1.0, 1e-5)
    assert tuple(triplet.images["reference.png"][0, 0]) == (255, 255, 255)  # on white

    # A sprite among the photographs: the photo detector finds no face, the anime one does.
    found, _, _ = single_triplet("sylvie", sylvie, "photo", priors, params)
    assert found is not None and found.style == "anime"
    strict = Priors("tiny", faces=FacesParams(anime=AnimeFacesParams(fallback=False)))
    assert single_triplet("sylvie", sylvie, "photo", strict, params)[1:] == (
        "faces",
        "no face found by the photo detector (faces.anime.fallback is off)",
    )
    embedded = Priors("tiny", faces=FacesParams(anime=AnimeFacesParams(identity="embedding")))
    kept, _, _ = single_triplet("sylvie", sylvie, "anime", embedded, params)
    assert kept is not None and not kept.face_dropped

    # Bad sprites: a drawing with no face, a grey one, an invisible one.
    drawing = np.zeros((64, 64, 4), np.uint8)
    drawing[16:48, 16:48] = (200, 30, 30, 255)
    Image.fromarray(drawing).save(tmp_path / "square.png")
    Image.fromarray(drawing[..., [0, 3]], "LA").save(tmp_path / "grey.png")
    Image.fromarray(np.zeros((64, 64, 4), np.uint8)).save(tmp_path / "invisible.png")
    for name in ("square.png", "grey.png"):
        assert single_triplet("x", tmp_path / name, "anime", priors, params)[1:] == (
            "faces",
            "no face found by the anime detector",
        )
    assert single_triplet("x", tmp_path / "square.png", "photo", priors, params)[1:] == (
        "faces",
        "no face found by the photo detector or the anime detector",
    )
    _, stage, reason = single_triplet("x", tmp_path / "invisible.png", "anime", priors, params)
    assert (stage, reason) == ("read", "invisible.png: fully transparent, nothing to see")


@needs_sprites
def test_an_anime_reference_conditions_on_no_face_at_inference(tmp_path: Path, priors):
    eileen = renpy_sprites()["eileen"][0]
    embedding, dropped = priors.reference_face(load_rgb(eileen))
    assert dropped and embedding.shape == (512,) and not embedding.any()
    embedded = Priors("tiny", faces=FacesParams(anime=AnimeFacesParams(identity="embedding")))
    raw, dropped = embedded.reference_face(load_rgb(eileen))
    assert not dropped and np.linalg.norm(raw) > 1
    with pytest.raises(ValueError, match="no face found by the photo detector or the anime"):
        priors.reference_face(np.full((64, 64, 3), 255, np.uint8))
    drawn, line = describe_reference(priors, str(eileen))
    assert drawn is not None and line.startswith("Anime face found")
    assert "does not condition the painting" in line


def test_the_tiny_anime_segmenter_has_isnets_interface_and_answers_like_sam():
    model = tiny_anime_segmentation_model()
    assert [i.name for i in model.graph.input] == ["img"]
    assert len(model.graph.output) == 1
    segmenter = AnimeSegmenter.tiny(AnimeMasksParams(size=128))
    page = np.full((90, 60, 3), 255, np.uint8)
    assert segmenter.foreground(page).shape == (90, 60)
    assert segmenter.segment_batch([page], [(30.0, 45.0)])[0].area_fraction == 0.0
    page[30:60, 20:40] = (40, 90, 200)  # one figure drawn on the page, and a second apart
    page[70:80, 5:15] = (40, 90, 200)
    figure = segmenter.segment_batch([page], [(30.0, 45.0)])[0]
    assert figure.mask[45, 30] and not figure.mask[75, 10] and figure.score > 0.5
    assert segmenter.segment_batch([page], [(55.0, 5.0)])[0].area_fraction == 0.0
