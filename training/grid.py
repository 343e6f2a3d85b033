"""The article's 5-panel figure: base, mask, pose, reference, output, with the prompt as caption.

Training draws it for validation samples, serving for `cameo inpaint --grid`; both call
`inpaint_grid`. MLflow's run card shows an image shrunk into a 256-px square, so the card
version (`Panels.card`) stacks the panels in two or three rows, with larger titles and no
caption.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

PANEL_TITLES = ("base", "mask", "pose", "reference", "output")
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_EMPTY = (230, 230, 230)  # a panel without an image (e.g. no pose: ControlNet off)
Picture = PIL.Image.Image | np.ndarray


def _panel(image: Picture | None, height: int) -> PIL.Image.Image:
    """`image` scaled to `height`, keeping its aspect ratio; a grey square for None."""
    if image is None:
        return PIL.Image.new("RGB", (height, height), _EMPTY)
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    image = image.convert("RGB")
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), PIL.Image.Resampling.LANCZOS)


def inpaint_grid(
    base: Picture,
    mask: Picture,
    pose: Picture | None,
    reference: Picture,
    output: Picture,
    caption: str,
    panel_height: int = 256,
    columns: int = 5,
    font_size: int | None = None,
) -> PIL.Image.Image:
    """Five panels of equal height, each titled, in rows of `columns` (5: the article's single
    row), and the caption, if any, wrapped below to the width of the rows. Titles are
    `font_size` px (default: 1/16 of a panel, at least 12)."""
    font = PIL.ImageFont.load_default(size=font_size or max(12, panel_height // 16))
    panels = [_panel(image, panel_height) for image in (base, mask, pose, reference, output)]
    titled = list(zip(PANEL_TITLES, panels, strict=True))
    rows = [titled[start : start + columns] for start in range(0, len(titled), columns)]
    gap = max(4, panel_height // 32)
    line_height = round(font.size * 1.3)
    row_height = line_height + panel_height + gap

    def cell_width(title: str, panel: PIL.Image.Image) -> int:  # a title wider than a narrow
        return max(panel.width, round(font.getlength(title)))  # panel (a portrait crop) fits

    width = max(sum(cell_width(*cell) for cell in row) + gap * (len(row) + 1) for row in rows)
    char_width = font.getlength("abcdefghijklmnopqrstuvwxyz") / 26
    lines = textwrap.wrap(caption, max(20, int((width - 2 * gap) / char_width)))
    height = gap + row_height * len(rows) + line_height * len(lines) + gap * bool(lines)
    grid = PIL.Image.new("RGB", (width, height), _BACKGROUND)
    draw = PIL.ImageDraw.Draw(grid)
    y = gap
    for row in rows:
        x = gap
        for title, panel in row:
            draw.text((x, y), title, fill=_INK, font=font)
            grid.paste(panel, (x, y + line_height))
            x += cell_width(title, panel) + gap
        y += row_height
    for line in lines:
        draw.text((gap, y), line, fill=_INK, font=font)
        y += line_height
    return grid


@dataclass(frozen=True)
class Panels:
    """One repainting's five images and its prompt, drawn two ways."""

    base: Picture
    mask: Picture
    pose: Picture | None
    reference: Picture
    output: Picture
    caption: str

    def _images(self) -> tuple[Picture, Picture, Picture | None, Picture, Picture]:
        return self.base, self.mask, self.pose, self.reference, self.output

    def sheet(self) -> PIL.Image.Image:
        """The article's figure: one row of 256-px panels, the prompt below."""
        return inpaint_grid(*self._images(), self.caption)

    def card(self) -> PIL.Image.Image:
        """For MLflow's image card, which shows a copy shrunk to fit 256 px: as near square as
        three panels over two, or two a row (wide frames), make it, with titles that stay
        legible there (40 px, about 13 once shrunk), and no caption (the sheet has it)."""
        layouts = [inpaint_grid(*self._images(), "", columns=n, font_size=40) for n in (2, 3)]
        return min(layouts, key=lambda grid: abs(math.log(grid.width / grid.height)))
