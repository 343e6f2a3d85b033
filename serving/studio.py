"""`cameo studio`: a web page where comic creators paint characters into a panel.

Upload a panel, brush where the character goes (or upload a mask), pick the character's
reference (its detected face is drawn; no face, a warning), say what it does, and paint. The
result becomes the canvas for the next character; the list of characters stays editable
(re-run one with the settings now shown, move one earlier, remove one), and every character's
identity is scored again on the final panel. The download is a PNG whose `cameo` chunk names
the model version, params and prompt of each character (`cameo lineage panel.png`).

It paints through the scoring server's HTTP endpoint or a model loaded in this process: the
same `serving.characters` code as `cameo inpaint --character`. An error from either is one
readable line in the page, which stays usable.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw

from core.io import ImageReadError, load_rgb
from perception.anime_faces import no_face_reason
from perception.priors import Priors
from serving.characters import Character, Paint, Panel, paint_characters, save_panel
from serving.client import InpaintResult, ServingError

log = logging.getLogger("serving.studio")

# The params the page sets itself: a PNG it can save losslessly, and the pose to show.
FIXED_PARAMS = {"output_format": "png", "return_pose": True}
# One brush colour: any stroke marks the region to paint, whatever its colour.
BRUSH_COLOUR = "#ffffff"


@dataclass
class Studio:
    """What the page paints with: `paint` (endpoint or in-process), the model it names, the
    inference params' defaults and ranges (as /version gives them), and the perception priors
    whose face detectors draw the reference's face and score the final panel."""

    paint: Paint
    where: str  # "http://127.0.0.1:5000" or a model URI, for the page's header
    model_version: str
    params: Mapping[str, Mapping[str, Any]]
    priors: Priors
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="cameo-studio-")))


@dataclass
class Session:
    """One browser tab's panel: its first image, its characters and their results (in order)."""

    base: PIL.Image.Image | None = None
    characters: list[Character] = field(default_factory=list)
    results: list[InpaintResult] = field(default_factory=list)

    @property
    def image(self) -> PIL.Image.Image | None:
        return self.results[-1].image if self.results else self.base


class StudioError(ValueError):
    """Something the user can fix, said in one line."""


def brushed_mask(editor: Mapping[str, Any] | None, size: tuple[int, int]) -> PIL.Image.Image:
    """The mask the user brushed in the editor's layers (any stroke, any colour), white where
    painted, at the panel's `size`."""
    painted = np.zeros((size[1], size[0]), bool)
    for layer in (editor or {}).get("layers") or []:
        if layer is None:
            continue
        layer = layer.convert("RGBA").resize(size, PIL.Image.Resampling.NEAREST)
        painted |= np.asarray(layer)[..., 3] > 0
    return PIL.Image.fromarray((painted * 255).astype(np.uint8))


def open_picture(path: str | Path | None, what: str) -> PIL.Image.Image | None:
    """An uploaded file as RGB (None when nothing was uploaded); a file that is not an image
    is a `StudioError` naming it."""
    if path is None:
        return None
    try:
        return PIL.Image.fromarray(load_rgb(Path(path)))
    except ImageReadError as e:
        raise StudioError(f"The {what} is not an image Pillow can read: {e}") from None


def character_mask(
    editor: Mapping[str, Any] | None, uploaded: str | Path | None, size: tuple[int, int]
) -> PIL.Image.Image:
    """The uploaded mask if there is one (white = paint here), else the brushed one."""
    picture = open_picture(uploaded, "mask")
    if picture is not None:
        mask = picture.convert("L").resize(size, PIL.Image.Resampling.NEAREST)
    else:
        mask = brushed_mask(editor, size)
    if not (np.asarray(mask) >= 128).any():
        raise StudioError(
            "No region to paint: brush over the panel where the character goes, or upload a mask."
        )
    return mask


def same_image(a: PIL.Image.Image | None, b: PIL.Image.Image | None) -> bool:
    if a is None or b is None or a.size != b.size:
        return False
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def describe_reference(
    priors: Priors, reference: str | Path | None
) -> tuple[PIL.Image.Image | None, str]:
    """The reference with its largest face's box drawn, and a line about it: a warning when no
    detector finds a face (the identity branch then has nothing to hold on to), and a note
    when the face is anime (by default it then conditions nothing, `faces.anime.identity`)."""
    try:
        image = open_picture(reference, "reference")
    except StudioError as e:
        return None, f"**{e}**"
    if image is None:
        return None, ""
    faces, style = priors.find_faces(np.asarray(image), "photo")
    if not faces:
        return image, (
            f"**No face found in the reference** ({no_face_reason(style, priors.faces.anime)}). "
            "The character's face identity cannot be kept: pick a picture where the face is "
            "visible, large and roughly frontal."
        )
    face = max(faces, key=lambda f: f.area)
    drawn = image.copy()
    width = max(2, min(image.size) // 100)
    PIL.ImageDraw.Draw(drawn).rectangle([float(v) for v in face.bbox], outline="lime", width=width)
    x1, y1, x2, y2 = (round(float(v)) for v in face.bbox)
    others = f" ({len(faces) - 1} smaller face(s) ignored)" if len(faces) > 1 else ""
    line = f"Face found: {x2 - x1}x{y2 - y1} px at ({x1}, {y1}){others}."
    if style == "anime":
        line = f"Anime face found: {x2 - x1}x{y2 - y1} px at ({x1}, {y1}){others}." + (
            " It does not condition the painting (faces.anime.identity: dropped): the body "
            "and the prompt carry the character."
            if priors.faces.anime.drops_face(style)
            else ""
        )
    return drawn, line


def error_line(error: Exception, where: str) -> str:
    """One readable line for what went wrong while painting."""
    import requests

    if isinstance(error, StudioError):
        return str(error)
    if isinstance(error, ServingError):
        if error.status == 503:
            wait = f" Try again in {error.retry_after} s." if error.retry_after else ""
            return f"The server is busy (HTTP 503): {error.message}.{wait}"
        if error.status == 504:
            return f"The request took too long (HTTP 504): {error.message}"
        return f"The model refused the request (HTTP {error.status}): {error.message}"
    if isinstance(error, requests.ConnectionError):
        return f"No server answers at {where}: is it running (`cameo serve`, `make serve`)?"
    if isinstance(error, requests.Timeout):
        return f"The server at {where} did not answer in time."
    return f"Painting failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}"


def character_rows(panel: Panel | None, session: Session) -> list[list[Any]]:
    """The characters table: number, prompt, identity when painted and on the final panel."""

    def score(value: float | None) -> str:
        return "no face" if value is None else f"{value:.3f}"

    rows = []
    for i, character in enumerate(session.characters):
        painted = panel.characters[i] if panel is not None else None
        rows.append(
            [
                i + 1,
                character.prompt,
                score(painted.result.identity_score) if painted else "",
                score(painted.final_identity) if painted else "",
                ", ".join(f"covered by {j}" for j in painted.covered_by) if painted else "",
            ]
        )
    return rows


class StudioActions:
    """The page's handlers, on plain values (tested without a browser)."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio

    def inference_params(self, values: Mapping[str, Any]) -> dict[str, Any]:
        params = {}
        for name, value in values.items():
            if name in FIXED_PARAMS or value is None:
                continue
            default = self.studio.params[name]["default"]
            params[name] = type(default)(value)
        return {**params, **FIXED_PARAMS}

    def repaint(
        self,
        session: Session,
        characters: list[Character],
        kept: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Session, Panel | None]:
        """Paint `characters` on the session's base, keeping the first `kept` results."""
        if not characters:
            return replace(session, characters=[], results=[]), None
        panel = paint_characters(
            session.base,
            characters,
            self.studio.paint,
            self.studio.priors.face_analyzer(),
            session.results[:kept],
            progress,
        )
        results = [c.result for c in panel.characters]
        return replace(session, characters=list(characters), results=results), panel

    def add_character(
        self,
        session: Session,
        editor: Mapping[str, Any] | None,
        uploaded_mask: str | Path | None,
        reference: str | Path | None,
        prompt: str,
        negative_prompt: str,
        values: Mapping[str, Any],
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Session, Panel | None]:
        """Paint one more character on the current panel. A panel other than the session's
        current image (a new upload) starts a new session."""
        background = (editor or {}).get("background")
        # Brushing an empty canvas (or before the upload has reached it) sends a transparent
        # background.
        empty = background is not None and background.mode == "RGBA"
        if background is None or (empty and not np.asarray(background)[..., 3].any()):
            raise StudioError(
                "Upload a panel first (the image the characters are painted into), and brush "
                "once it shows."
            )
        if not same_image(background, session.image):
            session = Session(base=background.convert("RGB"))
        picture = open_picture(reference, "reference")
        if picture is None:
            raise StudioError("Upload the character's reference picture.")
        if not prompt or not prompt.strip():
            raise StudioError("Say what the character does (the prompt).")
        mask = character_mask(editor, uploaded_mask, session.base.size)
        character = Character(
            mask,
            picture,
            prompt.strip(),
            (negative_prompt or "").strip() or None,
            params=self.inference_params(values),
        )
        characters = [*session.characters, character]
        return self.repaint(session, characters, len(session.characters), progress)

    def rerun(
        self, session: Session, number: int, values: Mapping[str, Any], progress=None
    ) -> tuple[Session, Panel | None]:
        """Paint character `number` (1-based) again with the settings now shown, and every
        later one on its new result."""
        index = self._index(session, number)
        characters = list(session.characters)
        characters[index] = replace(characters[index], params=self.inference_params(values))
        return self.repaint(session, characters, index, progress)

    def move_up(self, session: Session, number: int, progress=None) -> tuple[Session, Panel | None]:
        """Paint character `number` before the one painted before it."""
        index = self._index(session, number)
        if index == 0:
            raise StudioError(f"Character {number} is already painted first.")
        characters = list(session.characters)
        characters[index - 1], characters[index] = characters[index], characters[index - 1]
        return self.repaint(session, characters, index - 1, progress)

    def remove(self, session: Session, number: int, progress=None) -> tuple[Session, Panel | None]:
        """Take character `number` out and paint the later ones again without it."""
        index = self._index(session, number)
        characters = session.characters[:index] + session.characters[index + 1 :]
        return self.repaint(session, characters, index, progress)

    def _index(self, session: Session, number: int | None) -> int:
        if not session.characters:
            raise StudioError("No character painted yet.")
        if number is None or not 1 <= int(number) <= len(session.characters):
            raise StudioError(f"Pick a character between 1 and {len(session.characters)}.")
        return int(number) - 1

    def saved(self, panel: Panel) -> Path:
        """The panel as a PNG with its `cameo` chunk, for the download button."""
        target = self.studio.work_dir / f"cameo-panel-{len(panel.characters)}-characters.png"
        return save_panel(panel, target)

    def summary(self, panel: Panel | None) -> str:
        """The identity lines, the model version and the seconds, as Markdown."""
        if panel is None:
            return "No character painted."
        seconds = sum(c.result.seconds for c in panel.characters)
        versions = ", ".join(
            dict.fromkeys(str(c.result.model_version or "unnamed") for c in panel.characters)
        )
        lines = [f"- {line}" for line in panel.identity_lines()]
        return "\n".join([f"Model **{versions}**, {seconds:.1f} s painting.", "", *lines])
