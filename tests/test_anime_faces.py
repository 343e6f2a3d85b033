"""Anime faces, measured on real anime art: the sprites of Debian's `renpy-thequestion` and
`renpy-demo` (skipped, with the reason, where the packages are absent; `.ci/run` installs
them). Photo detectors find none of their faces; the anime detector finds them all, and none
in the sample's photographs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.anime import INSTALL, renpy_sprites, report
from perception.anime_faces import on_white


def test_the_anime_detector_finds_every_sprites_face_and_none_in_photographs():
    sprites = renpy_sprites()
    if not all(sprites.values()):
        pytest.skip(f"no anime sprites on this machine: {INSTALL}")
    assert [len(paths) for paths in sprites.values()] == [8, 3]
    text = report(sprites)
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if "| " in line}
    anime = next(row for name, row in rows.items() if name.startswith("lbpcascade"))
    assert "| 11 of 11 | 11 of 11 |" in anime  # at full and half size
    assert "| 0 of 11 | 0 of 11 | 0 of 11 |" in rows["dlib's HOG (upsample 1)"]
    assert "Eileen Collins 0, Grace Hopper 0, Tom Hanks 0, Chelsea the cat 0" in text


def test_without_the_packages_the_report_says_how_to_get_them():
    assert INSTALL in report({"sylvie": [], "eileen": []})


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
    rgb = on_white(tmp_path / "rgba.png")
    assert rgb.shape == (8, 8, 3) and tuple(rgb[0, 0]) == (255, 255, 255)
    assert tuple(rgb[3, 3]) == (255, 0, 0)
    assert tuple(on_white(tmp_path / "la.png")[0, 0]) == (255, 255, 255)
    assert on_white(tmp_path / "p.png").shape == (8, 8, 3)
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "invisible.png")
    with pytest.raises(ValueError, match=r"invisible\.png: fully transparent"):
        on_white(tmp_path / "invisible.png")
