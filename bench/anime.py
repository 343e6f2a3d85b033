"""Anime on real anime art (`python -m bench.anime`): how many of the sprites' faces each
detector finds at several sizes, and whether the anime detector fires on the sample's photos;
how well each recogniser tells the two characters apart on the anime detector's aligned faces
(what `faces.anime.identity` is chosen from); the masks of each segmentation path against the
sprites' alpha channels.

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

from assets.masks import mask_iou, segment_character
from assets.sample_movie import INSTALL_SPRITES, _portrait, renpy_sprites
from bench.report import PARAMS, write_section
from core.io import load_rgb, read_alpha
from orchestration.params import load_params
from perception.anime_faces import AnimeFaceDetector
from perception.anime_segmentation import MODEL_FILE
from perception.faces import template_keypoints
from perception.models import models_dir
from perception.priors import Priors

SECTION = "Anime faces on real anime art"
IDENTITY_SECTION = "Anime identity"
MASKS_SECTION = "Anime masks against alpha"
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
        "Luis Pedro Coelho": _portrait("luis_pedro_coelho"),
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


def separation_row(name: str, embeddings: dict[str, list[np.ndarray]], threshold: float) -> str:
    """One Markdown row: cosines of one character's faces, and of two characters' faces, and
    the share of two characters' pairs a recogniser calls one person at `threshold`."""
    characters = list(embeddings)
    within = [
        float(a @ b)
        for faces in embeddings.values()
        for i, a in enumerate(faces)
        for b in faces[i + 1 :]
    ]
    between = [
        float(a @ b)
        for i, first in enumerate(characters)
        for second in characters[i + 1 :]
        for a in embeddings[first]
        for b in embeddings[second]
    ]
    separable = "yes" if max(between) < min(within) else "no"
    merged = sum(c >= threshold for c in between)
    return (
        f"| {name} | {min(within):.3f} / {np.median(within):.3f} | "
        f"{np.median(between):.3f} / {max(between):.3f} | {separable} | "
        f"{merged} of {len(between)} at {threshold:g} |"
    )


def identity_report(sprites: dict[str, list[Path]]) -> str:
    if not all(sprites.values()):
        return f"No sprites on this machine: `{INSTALL_SPRITES}` (Debian) installs them."
    tiny = load_params(PARAMS, "tiny")
    full = load_params(PARAMS, "full")
    priors = tiny.priors(None)
    detector = AnimeFaceDetector(tiny.faces.anime, tiny.faces.min_face_px)
    recognisers = {
        "dlib's ResNet (its own 5-point alignment)": (
            priors.dlib_faces(),
            tiny.triplets.min_identity_similarity,
        ),
        "the tiny profile's descriptor (wiring, not a recogniser)": (
            priors.face_analyzer(),
            tiny.characters.similarity_threshold,
        ),
    }
    arcface = models_dir() / full.faces.model
    if any(arcface.glob("*.onnx")):
        recognisers[f"ArcFace ({full.faces.model})"] = (
            Priors("full", faces=full.faces).face_analyzer(),
            full.characters.similarity_threshold,
        )
    rows = []
    for name, (recogniser, threshold) in recognisers.items():
        embeddings: dict[str, list[np.ndarray]] = {}
        for character, paths in sprites.items():
            for path in paths:
                image = load_rgb(path)
                box = detector.detect(image)[0]
                embedding, _ = recogniser.embed_at(image, box, template_keypoints(box))
                embeddings.setdefault(character, []).append(embedding)
        rows.append(separation_row(name, embeddings, threshold))
    if not any(arcface.glob("*.onnx")):
        rows.append(f"| ArcFace ({full.faces.model}) | pending: no weights under {arcface} | | | |")
    return "\n".join(
        [
            "Each sprite's largest anime face (`perception.anime_faces`), aligned by the "
            "landmark template of its box, embedded by each recogniser; cosines of the pairs of "
            "one character (Sylvie 8, Eileen 3) and of two characters, and how many pairs of two "
            "characters each recogniser's same-person threshold (the triplets' identity check "
            "for dlib, character grouping for the others) calls one person:",
            "",
            "| recogniser | one character: min / median | two characters: median / max "
            "| separable | two characters called one |",
            "|---|---|---|---|---|",
            *rows,
            "",
            "No recogniser here tells the two characters apart on anime faces, so an anime face "
            "conditions nothing by default (`faces.anime.identity: dropped`): its triplets train "
            "the face branch's unconditional input, as classifier-free-guidance dropout does, "
            "and an anime reference at inference is painted from its body and prompt. Set "
            "`embedding` where a recogniser measured here separates anime characters.",
        ]
    )


def masks_report(sprites: dict[str, list[Path]]) -> str:
    files = [path for paths in sprites.values() for path in paths]
    if not files:
        return f"No sprites on this machine: `{INSTALL_SPRITES}` (Debian) installs them."
    tiny = load_params(PARAMS, "tiny")
    full = load_params(PARAMS, "full")
    priors = tiny.priors(None)
    paths = {
        "SAM, tiny random weights (the photo path)": priors.segmenter(),
        "anime segmenter, tiny stand-in (a blank page is background by construction)": (
            priors.anime_segmenter()
        ),
    }
    pending = []
    root = models_dir()
    for name, folder, load in (
        ("SAM (`masks.model`)", root / full.masks.model, lambda: full.priors(root).segmenter()),
        (
            "SkyTNT's ISNet (`masks.anime.model`)",
            root / full.masks.anime.model / MODEL_FILE,
            lambda: full.priors(root).anime_segmenter(),
        ),
    ):
        if folder.exists():
            paths[name] = load()
        else:
            pending.append(f"| {name} | pending: no weights at {folder} | | |")
    detector = AnimeFaceDetector(tiny.faces.anime, tiny.faces.min_face_px)
    rows = []
    for name, segmenter in paths.items():
        scores, kept = [], 0
        for path in files:
            image, truth = load_rgb(path), read_alpha(path)
            box = detector.detect(image)[0]
            mask, record = segment_character(image, box, segmenter, None, tiny.masks)
            kept += record["status"] == "ok"
            scores.append(mask_iou(mask, truth))
        rows.append(
            f"| {name} | {np.mean(scores):.3f} | {min(scores):.3f} | {kept} of {len(files)} |"
        )
    return "\n".join(
        [
            "The masks stage's code (`assets.masks.segment_character`, prompted at the anime "
            "face's centre) on each sprite, against the sprite's own alpha channel (IoU):",
            "",
            "| segmentation path | mean IoU | lowest IoU | masks kept by the stage's rules |",
            "|---|---|---|---|",
            *rows,
            *pending,
            "",
            "The tiny paths check the wiring only. The article's Note 2 (SAM is poor on anime) "
            "is measured here once both `full` models are under `$CAMEO_MODELS`.",
        ]
    )


def main() -> None:
    sprites = renpy_sprites()
    write_section(SECTION, report(sprites))
    write_section(IDENTITY_SECTION, identity_report(sprites))
    write_section(MASKS_SECTION, masks_report(sprites))


if __name__ == "__main__":
    main()
