"""A deterministic sample movie, composed from face photos that ship inside installed packages.

Three characters (Grace Hopper from matplotlib, Eileen Collins from scikit-image, Luis Pedro
Coelho from mahotas), shots with one face, two or three faces and none, under a moving camera
(pan and zoom over a larger canvas). The ground truth records, for every frame, who is
visible and where each portrait lies in the frame.
"""

from __future__ import annotations

import json
import shutil
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path

import av
import cv2
import numpy as np
import pandas as pd
from PIL import Image

from core.io import atomic_path, save_image
from core.layout import DataLayout

FRAME_SIZE = (640, 360)  # width, height
CANVAS_SIZE = (1280, 720)
FPS = 25


def _portrait(identity: str) -> np.ndarray:
    """RGB uint8 portrait of one identity, read from the package that ships it."""
    if identity == "grace_hopper":
        import matplotlib.cbook

        with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
            return np.asarray(Image.open(f).convert("RGB"))
    if identity == "eileen_collins":
        from skimage import data

        return data.astronaut()
    if identity == "luis_pedro_coelho":
        # mahotas's author's photograph, in its MIT-licensed package: located by the package's
        # file list, since only the file is needed, not mahotas's compiled extensions.
        path = distribution("mahotas").locate_file("mahotas/demos/data/luispedro.jpg")
        return np.asarray(Image.open(str(path)).convert("RGB"))
    raise KeyError(identity)


def _background(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    canvas = cv2.resize(image[..., :3], CANVAS_SIZE, interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(canvas, (0, 0), 3)  # a soft, out-of-focus set


@dataclass(frozen=True)
class Shot:
    """One shot: a set, who stands where (canvas x, y, height), and the camera's path."""

    frames: int
    background: str
    cast: tuple[tuple[str, int, int, int], ...]
    camera_from: tuple[float, float, float]  # centre x, centre y, zoom (1 = whole canvas)
    camera_to: tuple[float, float, float]


SHOTS = (
    Shot(300, "coffee", (("grace_hopper", 420, 90, 560),), (640, 360, 1.0), (640, 330, 1.35)),
    Shot(150, "rocket", (), (600, 360, 1.0), (700, 360, 1.1)),
    Shot(300, "brick", (("eileen_collins", 600, 120, 520),), (560, 360, 1.2), (760, 380, 1.2)),
    Shot(
        200,
        "grass",
        (("grace_hopper", 120, 140, 500), ("eileen_collins", 700, 160, 480)),
        (640, 380, 1.0),
        (640, 380, 1.1),
    ),
    Shot(300, "coffee", (("luis_pedro_coelho", 470, 110, 540),), (660, 380, 1.25), (620, 360, 1.0)),
    Shot(
        200,
        "gravel",
        (
            ("grace_hopper", 40, 200, 420),
            ("eileen_collins", 460, 200, 400),
            ("luis_pedro_coelho", 880, 220, 400),
        ),
        (640, 400, 1.0),
        (660, 400, 1.05),
    ),
    Shot(100, "rocket", (), (640, 360, 1.3), (640, 360, 1.0)),
    Shot(300, "grass", (("eileen_collins", 260, 100, 560),), (560, 380, 1.0), (520, 360, 1.3)),
)


def people_in(shots: Sequence[Shot]) -> tuple[str, ...]:
    """The people `shots` show, each from one portrait (`_portrait`), sorted."""
    return tuple(sorted({who for shot in shots for who, *_ in shot.cast}))


PEOPLE = people_in(SHOTS)  # the sample movie's


def _compose(shot: Shot) -> tuple[np.ndarray, dict[str, tuple[int, int, int, int]]]:
    canvas = _background(shot.background).copy()
    placed = {}
    for identity, x, y, height in shot.cast:
        portrait = _portrait(identity)
        width = round(portrait.shape[1] * height / portrait.shape[0])
        canvas[y : y + height, x : x + width] = cv2.resize(
            portrait, (width, height), interpolation=cv2.INTER_AREA
        )
        placed[identity] = (x, y, x + width, y + height)
    return canvas, placed


def _camera_window(shot: Shot, t: float) -> tuple[float, float, float, float]:
    cx, cy, zoom = (a + (b - a) * t for a, b in zip(shot.camera_from, shot.camera_to, strict=True))
    w, h = CANVAS_SIZE[0] / zoom, CANVAS_SIZE[1] / zoom
    x0 = min(max(cx - w / 2, 0.0), CANVAS_SIZE[0] - w)
    y0 = min(max(cy - h / 2, 0.0), CANVAS_SIZE[1] - h)
    return x0, y0, w, h


def _render(canvas: np.ndarray, window: tuple[float, float, float, float]) -> np.ndarray:
    x0, y0, w, h = window
    sx, sy = FRAME_SIZE[0] / w, FRAME_SIZE[1] / h
    affine = np.array([[sx, 0, -x0 * sx], [0, sy, -y0 * sy]], dtype=np.float64)
    return cv2.warpAffine(canvas, affine, FRAME_SIZE, flags=cv2.INTER_AREA)


def rgb_to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 in integer arithmetic (FFmpeg's layout for
    `VideoFrame.from_ndarray(..., format="yuv420p")`): the same bytes on every CPU, unlike
    libswscale, whose conversion routines are chosen by the CPU at run time."""
    c = rgb.astype(np.int32)
    h, w = rgb.shape[:2]
    half = (c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2] + 2) >> 2
    r, g, b = c[..., 0], c[..., 1], c[..., 2]
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    r, g, b = half[..., 0], half[..., 1], half[..., 2]
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    planes = [y.reshape(-1), u.reshape(-1), v.reshape(-1)]
    return np.concatenate(planes).astype(np.uint8).reshape(h * 3 // 2, w)


# libx264 picks its SIMD routines by CPU at run time and they are not bit-exact with each
# other (AVX-512 and AVX2 machines wrote 2,123,060 and 2,123,074 bytes): `asm=0` runs its C
# code on every CPU. One thread: x264's output depends on the thread count. `bitexact` keeps
# library version strings out of the container.
X264_OPTIONS = {"crf": "23", "preset": "veryfast", "x264-params": "asm=0"}


def _rendered_frames(
    shots: Sequence[Shot], lookahead: int = 8
) -> Iterator[tuple[int, dict, tuple[float, float, float, float], np.ndarray]]:
    """Each frame's shot index, placed cast, camera window and YUV planes, in order. A thread
    renders up to `lookahead` frames ahead while the encoder (which releases the GIL) works:
    the movie is written in about two thirds of the time, with the same bytes."""
    with ThreadPoolExecutor(max_workers=1) as renderer:
        ahead: deque = deque()
        for shot_idx, shot in enumerate(shots):
            canvas, placed = _compose(shot)
            for i in range(shot.frames):
                window = _camera_window(shot, i / max(shot.frames - 1, 1))
                frame = renderer.submit(lambda c, w: rgb_to_yuv420p(_render(c, w)), canvas, window)
                ahead.append((shot_idx, placed, window, frame))
                if len(ahead) > lookahead:
                    shot_of, cast, seen, rendered = ahead.popleft()
                    yield shot_of, cast, seen, rendered.result()
        for shot_of, cast, seen, rendered in ahead:
            yield shot_of, cast, seen, rendered.result()


def write_sample_movie(
    layout: DataLayout, name: str = "sample", shots: Sequence[Shot] = SHOTS
) -> Path:
    """Write movies/<name>.mp4 and its ground truth (data/ground_truth/<name>.json); the
    movie's bytes are the same on every x86-64 machine with the pinned PyAV. `shots`: fewer
    or shorter shots make a shorter movie (the orchestration benchmark's)."""
    movie_path = layout.movies_dir / f"{name}.mp4"
    truth_frames = []
    with (
        atomic_path(movie_path) as tmp,
        av.open(str(tmp), "w", format="mp4", options={"fflags": "+bitexact"}) as container,
    ):
        stream = container.add_stream("libx264", rate=FPS, options=X264_OPTIONS)
        stream.width, stream.height = FRAME_SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame_idx, (shot_idx, placed, window, yuv) in enumerate(_rendered_frames(shots)):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")))
            truth_frames.append(
                {
                    "frame_idx": frame_idx,
                    "shot": shot_idx,
                    "people": [
                        {"identity": who, "box": _to_frame(box, window)}
                        for who, box in placed.items()
                    ],
                }
            )
        container.mux(stream.encode(None))
    truth = {
        "movie": name,
        "fps": FPS,
        "frame_size": list(FRAME_SIZE),
        "identities": list(people_in(shots)),
        "frames": truth_frames,
    }
    truth_path = layout.ground_truth(name)
    with atomic_path(truth_path) as tmp:
        tmp.write_text(json.dumps(truth, indent=1))
    return movie_path


def _to_frame(box: tuple[int, int, int, int], window: tuple[float, float, float, float]) -> list:
    x0, y0, w, h = window
    sx, sy = FRAME_SIZE[0] / w, FRAME_SIZE[1] / h
    x1, y1, x2, y2 = box
    return [
        round((x1 - x0) * sx, 1),
        round((y1 - y0) * sy, 1),
        round((x2 - x0) * sx, 1),
        round((y2 - y0) * sy, 1),
    ]


def write_sample_singles(layout: DataLayout) -> list[Path]:
    """Single-image IDs under singles/: a portrait, and a picture with no human face (a cat),
    which the dataset must skip with its reason."""
    from skimage import data

    images = {"eileen_collins.png": data.astronaut()[:400, 60:460], "chelsea.png": data.chelsea()}
    paths = []
    for name, image in images.items():
        path = layout.singles_dir / name
        save_image(image, path)
        paths.append(path)
    return paths


# Real anime art: Debian's `renpy-thequestion` (Sylvie: 2 outfits x 4 expressions) and
# `renpy-demo` (Eileen: 3 expressions) sprites, under the Expat licence, with alpha channels.
SPRITE_FOLDERS = {
    "sylvie": Path("/usr/share/games/renpy/the_question/game/images"),
    "eileen": Path("/usr/share/games/renpy/demo/game/images"),
}
INSTALL_SPRITES = "apt-get install renpy-thequestion renpy-demo"


def renpy_sprites() -> dict[str, list[Path]]:
    """`{character: [sprite files]}` of the installed packages (empty where absent)."""
    return {
        name: sorted(folder.glob(f"{name} *.png")) if folder.is_dir() else []
        for name, folder in SPRITE_FOLDERS.items()
    }


def write_anime_singles(layout: DataLayout) -> list[Path]:
    """The installed sprites as anime single images under singles/anime/, byte for byte, named
    without spaces (`sylvie-blue-giggle.png`); none where the packages are absent."""
    paths = []
    for sprite in (path for found in renpy_sprites().values() for path in found):
        path = layout.anime_singles_dir / sprite.name.replace(" ", "-")
        with atomic_path(path) as tmp:
            shutil.copyfile(sprite, tmp)
        paths.append(path)
    return paths


def identity_at(truth: dict, frame_idx: int, bbox: list[float]) -> str | None:
    """Whose portrait contains the centre of `bbox` in frame `frame_idx` (None: nobody's)."""
    cx, cy = (bbox[0] + bbox[2]) / 2, (bbox[1] + bbox[3]) / 2
    for person in truth["frames"][frame_idx]["people"]:
        x1, y1, x2, y2 = person["box"]
        if x1 <= cx <= x2 and y1 <= cy <= y2:
            return person["identity"]
    return None


def compare_with_truth(characters: pd.DataFrame, truth: dict, stride: int, min_frames: int) -> dict:
    """How the found characters agree with the ground truth.

    `groups` maps each character to the identities of its frames; `expected` lists every
    identity seen alone in at least `min_frames` sampled frames; `found` those that are the
    identity of some pure group.
    """
    groups = {
        int(cid): sorted(
            {
                str(identity_at(truth, int(f), list(b)))
                for f, b in zip(g["frame_idx"], g["bbox"], strict=True)
            }
        )
        for cid, g in characters.groupby("character_id")
    }
    solo_counts: dict[str, int] = {}
    for frame in truth["frames"][::stride]:
        if len(frame["people"]) == 1:
            who = frame["people"][0]["identity"]
            solo_counts[who] = solo_counts.get(who, 0) + 1
    expected = sorted(who for who, n in solo_counts.items() if n >= min_frames)
    found = sorted({ids[0] for ids in groups.values() if len(ids) == 1})
    return {
        "groups": groups,
        "expected": expected,
        "found": found,
        "pure": all(len(ids) == 1 and ids[0] != "None" for ids in groups.values()),
    }
