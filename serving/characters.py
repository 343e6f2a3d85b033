"""Several characters painted into one panel, and what a saved panel says about its making.

A character is a mask, a reference and a prompt. The first is painted on the panel, each next
one on the previous result, through the HTTP endpoint or a model loaded in this process (both
return `InpaintResult`s). Once all are painted, every character's identity is scored again on
the final panel: a later character's mask may cover an earlier one's face. The saved PNG
carries, in a `cameo` text chunk, the model version, params and prompts of each character, so
`cameo lineage panel.png` starts from the picture.

```python
from serving.characters import Character, paint_characters, save_panel

knight = Character(mask, reference, "a knight waves", params={"seed": 7})
panel = paint_characters(base, [knight], endpoint(url), analyzer)
save_panel(panel, Path("panel.png"))
```
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.PngImagePlugin

from core.io import save_image
from perception.faces import FaceAnalyzer, cosine, face_in_mask
from serving.client import InpaintClient, InpaintResult, make_row, predict_in_process
from serving.schema import painted_region
from training.grid import inpaint_grid

# The PNG text chunk holding how a panel was made (JSON).
PANEL_CHUNK = "cameo"
PANEL_FORMAT = 1

# One request of one row: the endpoint's or the in-process model's prediction.
Paint = Callable[[Sequence[Mapping[str, Any]], Mapping[str, Any]], list[InpaintResult]]


def endpoint(url: str, timeout_s: float = 600.0) -> Paint:
    """Paint through the scoring server at `url` (`cameo serve`)."""
    return InpaintClient(url, timeout_s).predict


def in_process(model_uri: str) -> tuple[Paint, dict[str, Any]]:
    """Paint with the model at `model_uri`, loaded in this process; with what a server's
    /version would say of it (`model_version`, `profile`, `params`). The results name the
    version, as a server's responses do."""

    from serving.served import resolve_model
    from training.tracking import load_pyfunc

    model = load_pyfunc(model_uri)
    about = {"model_version": resolve_model(model_uri).label}
    about.update(model.unwrap_python_model().describe())

    def paint(rows: Sequence[Mapping[str, Any]], params: Mapping[str, Any]) -> list[InpaintResult]:
        results = predict_in_process(model, rows, params)
        for result in results:
            result.model_version = result.model_version or about["model_version"]
        return results

    return paint, about


@dataclass
class Character:
    """One character to paint: where (mask, white = paint here), who (reference) and what."""

    mask: PIL.Image.Image
    reference: PIL.Image.Image
    prompt: str
    negative_prompt: str | None = None
    pose: PIL.Image.Image | None = None  # a pose drawing; default: the model extracts one
    params: dict[str, Any] = field(default_factory=dict)  # inference params; unset: defaults


@dataclass
class PaintedCharacter:
    """A character as painted: the response of its request, its identity on the final panel,
    and the later characters (1-based) whose masks overlap its own."""

    character: Character
    result: InpaintResult
    final_identity: float | None
    covered_by: list[int] = field(default_factory=list)

    def identity_line(self, number: int) -> str:
        """`character 2: identity 0.912 on the final panel (0.930 when painted)`, or why not."""
        painted = self.result.identity_score
        when = "no face when painted" if painted is None else f"{painted:.3f} when painted"
        if self.final_identity is None:
            line = f"character {number}: no face found in its region on the final panel ({when})"
        else:
            line = f"character {number}: identity {self.final_identity:.3f} on the final panel"
            line += f" ({when})"
        if self.covered_by:
            later = ", ".join(str(i) for i in self.covered_by)
            line += f"; character {later} painted over part of its region afterwards"
        return line


@dataclass
class Panel:
    """A panel with its characters painted in order; `image` is the last result."""

    base: PIL.Image.Image
    characters: list[PaintedCharacter]

    @property
    def image(self) -> PIL.Image.Image:
        return self.characters[-1].result.image if self.characters else self.base

    def painted_on(self, index: int) -> PIL.Image.Image:
        """The image character `index` (0-based) was painted on."""
        return self.characters[index - 1].result.image if index else self.base

    def grid(self) -> PIL.Image.Image:
        """The 5-panel figure (base, mask, pose, reference, output) of each character, one row
        per character, in the order they were painted."""
        rows = []
        for i, c in enumerate(self.characters):
            picture = c.character
            rows.append(
                inpaint_grid(
                    self.painted_on(i),
                    picture.mask,
                    c.result.pose,
                    picture.reference,
                    c.result.image,
                    picture.prompt,
                )
            )
        size = (max(r.width for r in rows), sum(r.height for r in rows))
        figure = PIL.Image.new("RGB", size, "white")
        top = 0
        for row in rows:
            figure.paste(row, (0, top))
            top += row.height
        return figure

    def identity_lines(self) -> list[str]:
        return [c.identity_line(i) for i, c in enumerate(self.characters, start=1)]

    def metadata(self) -> dict[str, Any]:
        """What the saved PNG's `cameo` chunk holds."""
        return {
            "format": PANEL_FORMAT,
            "characters": [
                {
                    "model_version": c.result.model_version,
                    "params": c.character.params,
                    "prompt": c.character.prompt,
                    "negative_prompt": c.character.negative_prompt,
                    "identity_when_painted": c.result.identity_score,
                    "identity_on_final_panel": c.final_identity,
                    "seconds": round(c.result.seconds, 3),
                }
                for c in self.characters
            ],
        }


def overlap(a: PIL.Image.Image, b: PIL.Image.Image) -> float:
    """The share of mask `a`'s region that mask `b` also paints."""
    inside_a = painted_region(a)
    inside_b = painted_region(b.resize(a.size, PIL.Image.Resampling.NEAREST))
    return float((inside_a & inside_b).sum() / max(int(inside_a.sum()), 1))


def reference_embedding(analyzer: FaceAnalyzer, reference: PIL.Image.Image) -> np.ndarray | None:
    """The embedding of the reference's largest face; None when it shows none."""
    faces = analyzer.detect(np.asarray(reference.convert("RGB")))
    return max(faces, key=lambda f: f.area).embedding if faces else None


def final_identity(
    analyzer: FaceAnalyzer, character: Character, image: PIL.Image.Image
) -> float | None:
    """The character's identity on `image`: its reference's face against the largest face whose
    box centre lies in its mask, as the served model scores a painting."""
    embedding = reference_embedding(analyzer, character.reference)
    if embedding is None:
        return None
    inside = painted_region(character.mask.resize(image.size, PIL.Image.Resampling.NEAREST))
    face = face_in_mask(analyzer, image, inside)
    return None if face is None else cosine(embedding, face.embedding)


def paint_characters(
    base: PIL.Image.Image,
    characters: Sequence[Character],
    paint: Paint,
    analyzer: FaceAnalyzer,
    kept: Sequence[InpaintResult] = (),
    on_character: Callable[[int, int], None] | None = None,
) -> Panel:
    """Paint `characters` in order, each on the previous result. `kept`: results of the first
    characters, unchanged since they were painted (re-running a later one repaints only from
    it). `on_character(i, n)` is called before character i (0-based) of n is painted.
    `ServingError` and connection errors propagate: the caller says them."""
    if not characters:
        raise ValueError("no character to paint: give at least one mask, reference and prompt")
    results = list(kept[: len(characters)])
    image = results[-1].image if results else base.convert("RGB")
    for i in range(len(results), len(characters)):
        if on_character is not None:
            on_character(i, len(characters))
        character = characters[i]
        mask = character.mask.convert("L").resize(image.size, PIL.Image.Resampling.NEAREST)
        row = make_row(
            image,
            mask,
            character.reference,
            character.prompt,
            character.negative_prompt,
            character.pose,
        )
        [result] = paint([row], character.params)
        results.append(result)
        image = result.image
    painted = []
    for i, (character, result) in enumerate(zip(characters, results, strict=True)):
        later = range(i + 1, len(characters))
        covered_by = [j + 1 for j in later if overlap(character.mask, characters[j].mask) > 0]
        identity = final_identity(analyzer, character, image)
        painted.append(PaintedCharacter(character, result, identity, covered_by))
    return Panel(base.convert("RGB"), painted)


def save_panel(panel: Panel, target: Path) -> Path:
    """Write the final panel as PNG, atomically, with its `cameo` chunk."""
    info = PIL.PngImagePlugin.PngInfo()
    info.add_text(PANEL_CHUNK, json.dumps(panel.metadata()))
    save_image(np.asarray(panel.image.convert("RGB")), target, pnginfo=info)
    return target


class NotAPanel(ValueError):
    """An image without cameo's chunk (or not an image)."""


def read_panel_metadata(path: Path) -> dict[str, Any]:
    """The `cameo` chunk of a panel saved by `save_panel` (the studio's download, `cameo
    inpaint`'s output)."""
    try:
        with PIL.Image.open(path) as image:
            text = getattr(image, "text", {}).get(PANEL_CHUNK)
    except (OSError, ValueError) as e:
        raise NotAPanel(f"{path}: not a readable image ({e})") from None
    if text is None:
        raise NotAPanel(f"{path}: no `{PANEL_CHUNK}` text chunk (not painted by cameo)")
    try:
        return json.loads(text)
    except ValueError:
        raise NotAPanel(f"{path}: its `{PANEL_CHUNK}` chunk is not JSON") from None


def panel_model_uris(path: Path) -> list[str]:
    """The model versions that painted a saved panel, as model URIs, in order of first use."""
    versions = [c.get("model_version") for c in read_panel_metadata(path)["characters"]]
    return [f"models:/{v}" for v in dict.fromkeys(v for v in versions if v)]
