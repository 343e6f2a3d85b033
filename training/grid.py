"""The article's 5-panel figure: base, mask, pose, reference, output, with the prompt as caption.

Training draws it for validation samples, serving for `cameo inpaint --grid`; both call
`inpaint_grid`.
"""

from __future__ import annotations

import textwrap

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

PANEL_TITLES = ("base", "mask", "pose", "reference", "output")
_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_EMPTY = (230, 230, 230)  # a panel without an image (e.g. no pose: ControlNet off)


def _panel(image: PIL.Image.Image | np.ndarray | None, height: int) -> PIL.Image.Image:
    """`image` scaled to `height`, keeping its aspect ratio; a grey square for None."""
    if image is None:
        return PIL.Image.new("RGB", (height, height), _EMPTY)
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    image = image.convert("RGB")
    width = max(1, round(image.width * height / image.height))
    return image.resize((width, height), PIL.Image.Resampling.LANCZOS)


def inpaint_grid(
    base: PIL.Image.Image | np.ndarray,
    mask: PIL.Image.Image | np.ndarray,
    pose: PIL.Image.Image | np.ndarray | None,
    reference: PIL.Image.Image | np.ndarray,
    output: PIL.Image.Image | np.ndarray,
    caption: str,
    panel_height: int = 256,
) -> PIL.Image.Image:
    """One row of five panels of equal height, each titled, and the caption wrapped below to
    the width of the panels."""
    font = PIL.ImageFont.load_default(size=max(12, panel_height // 16))
    panels = [_panel(image, panel_height) for image in (base, mask, pose, reference, output)]
    gap = max(4, panel_height // 32)
    line_height = round(font.size * 1.3)
    width = sum(panel.width for panel in panels) + gap * (len(panels) + 1)
    char_width = font.getlength("abcdefghijklmnopqrstuvwxyz") / 26
    lines = textwrap.wrap(caption, max(20, int((width - 2 * gap) / char_width))) or [""]
    height = gap + line_height + panel_height + gap + line_height * len(lines) + gap
    grid = PIL.Image.new("RGB", (width, height), _BACKGROUND)
    draw = PIL.ImageDraw.Draw(grid)
    x = gap
    for title, panel in zip(PANEL_TITLES, panels, strict=True):
        draw.text((x, gap), title, fill=_INK, font=font)
        grid.paste(panel, (x, gap + line_height))
        x += panel.width + gap
    y = gap + line_height + panel_height + gap
    for line in lines:
        draw.text((gap, y), line, fill=_INK, font=font)
        y += line_height
    return grid
