"""Anime faces on real anime art (`python -m bench.anime`): how many of the sprites' faces each
detector finds at several sizes, and whether the anime detector fires on the sample's photos.

The sprites are Debian's `renpy-thequestion` (Sylvie: 2 outfits x 4 expressions) and
`renpy-demo` (Eileen: 3 expressions), anime-style art under the Expat licence with alpha
channels, composited on white. Without the packages the section says how to get them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from skimage import data

from assets.sample_movie import INSTALL_SPRITES, _portrait, renpy_sprites
from bench.report import PARAMS, write_section
from core.io import load_rgb
from orchestration.params import load_params
from perception.anime_faces import AnimeFaceDetector
from perception.priors import Priors

SECTION = "Anime faces on real anime art"
SIZES = (1.0, 0.5, 0.25)


Detect = Callable[[np.ndarray], list]


def detection_rows(sprites: list[Path], detectors: dict[str, Detect]) -> list[str]:
    """One Markdown row per detector: sprites with a face found, at each size."""
    images = [load_rgb(path) for path in sprites]
    rows = []
    for name, detect in detectors.items():
        cells = []
        for size in SIZES:
            found = 0
            for image in images:
                scaled = image if size == 1.0 else cv2.resize(
                    image, None, fx=size, fy=size, interpolation=cv2.INTER_AREA
                )  # fmt: skip
                found += len(detect(scaled)) > 0
            cells.append(f"{found} of {len(images)}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def photo_false_hits(detect: Detect) -> str:
    """The anime detector on the sample's photographs and the cat: faces it claims."""
    photos = {
        "Eileen Collins": _portrait("eileen_collins"),
        "Grace Hopper": _portrait("grace_hopper"),
        "Tom Hanks": _portrait("tom_hanks"),
        "Chelsea the cat": data.chelsea(),
    }
    said = ", ".join(f"{name} {len(detect(image))}" for name, image in photos.items())
    return f"On the sample's photographs, anime faces found: {said}."


def report(sprites: dict[str, list[Path]]) -> str:
    files = [path for paths in sprites.values() for path in paths]
    if not files:
        return f"No sprites on this machine: `{INSTALL_SPRITES}` (Debian) installs them."
    faces = load_params(PARAMS, "tiny").faces
    anime = AnimeFaceDetector(faces.anime, faces.min_face_px)
    priors = Priors("tiny", faces=faces)
    dlib, tiny = priors.dlib_faces(), priors.face_analyzer()
    detectors = {
        "dlib's HOG (upsample 1)": dlib.detect,
        "the tiny profile's Haar cascade": tiny.detect,
        "lbpcascade_animeface (`perception.anime_faces`)": anime.detect,
    }
    sizes = " | ".join(f"at {size:g}x" for size in SIZES)
    counts = ", ".join(f"{name.title()} {len(paths)}" for name, paths in sprites.items())
    shape = load_rgb(files[0]).shape
    return "\n".join(
        [
            f"Sprites: {counts} ({shape[1]}x{shape[0]} and alike, composited on white), "
            "scaled down with area interpolation:",
            "",
            f"| detector | {sizes} |",
            "|---" * (len(SIZES) + 1) + "|",
            *detection_rows(files, detectors),
            "",
            photo_false_hits(anime.detect),
        ]
    )


def main() -> None:
    write_section(SECTION, report(renpy_sprites()))


if __name__ == "__main__":
    main()
