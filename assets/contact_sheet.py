"""Contact sheets: one row of face crops per character, so a person can judge a grouping."""

import base64
import io
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

LABEL_WIDTH = 120
CAPTION_HEIGHT = 14


def _face_tile(
    image: Image.Image, bbox: list[float], tile: int, margin: float = 0.3
) -> Image.Image:
    """A square crop around the face box, with some margin, resized to `tile` pixels."""
    x1, y1, x2, y2 = bbox
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    box = tuple(round(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    return image.crop(box).resize((tile, tile), Image.Resampling.LANCZOS)


def character_contact_sheet(
    characters: pd.DataFrame, root: Path, per_row: int = 8, tile: int = 96
) -> Image.Image:
    """Rows = characters (id, size), tiles = their first `per_row` frames in rank order,
    each captioned with frame index and similarity to the seed."""
    ids = sorted(characters["character_id"].unique())
    width = LABEL_WIDTH + per_row * tile
    row_height = tile + CAPTION_HEIGHT
    sheet = Image.new("RGB", (width, max(len(ids), 1) * row_height), "white")
    draw = ImageDraw.Draw(sheet)
    if not ids:
        draw.text((8, 8), "no characters", fill="black")
        return sheet
    for row, cid in enumerate(ids):
        group = characters[characters["character_id"] == cid].sort_values("rank")
        top = row * row_height
        draw.text((8, top + tile // 2 - 12), f"character {cid}", fill="black")
        draw.text((8, top + tile // 2 + 2), f"{len(group)} frames", fill="gray")
        for col, face in enumerate(group.head(per_row).itertuples(index=False)):
            with Image.open(root / face.path) as frame:
                tile_image = _face_tile(frame.convert("RGB"), list(face.bbox), tile)
            left = LABEL_WIDTH + col * tile
            sheet.paste(tile_image, (left, top))
            caption = f"f{face.frame_idx} {face.similarity:.2f}"
            draw.text((left + 2, top + tile), caption, fill="black")
    return sheet


def markdown_preview(image: Image.Image, max_width: int = 800) -> str:
    """The image inline as Markdown (a small JPEG data URI), for Dagster metadata."""
    scale = min(1.0, max_width / image.width)
    small = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return (
        f"![contact sheet](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"
    )
