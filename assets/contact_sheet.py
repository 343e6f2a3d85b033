"""Contact sheets, so a person can judge a stage at a glance: face crops per character, and
frames with their mask and pose overlays."""

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from core.io import load_rgb

LABEL_WIDTH = 120
CAPTION_HEIGHT = 14
# Wide enough for the Dagster UI to show tiles and captions legibly; sheets are made about
# this wide, so that their previews are not shrunk.
PREVIEW_WIDTH = 800


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
            frame = Image.fromarray(load_rgb(root / face.path))
            tile_image = _face_tile(frame, list(face.bbox), tile)
            left = LABEL_WIDTH + col * tile
            sheet.paste(tile_image, (left, top))
            caption = f"f{face.frame_idx} {face.similarity:.2f}"
            draw.text((left + 2, top + tile), caption, fill="black")
    return sheet


def markdown_preview(image: Image.Image) -> str:
    """The image inline as Markdown (a JPEG data URI at most PREVIEW_WIDTH wide), for Dagster
    metadata."""
    scale = min(1.0, PREVIEW_WIDTH / image.width)
    small = image.resize((round(image.width * scale), round(image.height * scale)))
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return (
        f"![contact sheet](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"
    )


def overlay(frame: np.ndarray, mask: np.ndarray, control: np.ndarray | None) -> np.ndarray:
    """The frame with the mask tinted green and the pose skeleton drawn on top."""
    tinted = frame.astype(np.float32)
    tinted[mask] = 0.6 * tinted[mask] + 0.4 * np.array([0, 255, 0], dtype=np.float32)
    out = tinted.astype(np.uint8)
    if control is not None:
        drawn = control.any(axis=-1)
        out[drawn] = control[drawn]
    return out


def pose_contact_sheet(
    poses: pd.DataFrame,
    root: Path,
    mask_dir: Path,
    pose_dir: Path,
    per_row: int = 4,
    rows: int = 4,
    tile_width: int = 192,
) -> Image.Image:
    """One character's first `per_row * rows` frames (in rank order) with mask and pose
    overlays, in a grid, each captioned with frame and status."""
    tiles = []
    for row in poses.head(per_row * rows).itertuples(index=False):
        frame = load_rgb(root / row.path)
        mask = load_rgb(mask_dir / row.mask_file)[..., 0] > 127
        control = load_rgb(pose_dir / row.control_file) if row.control_file else None
        tile = Image.fromarray(overlay(frame, mask, control))
        tile = tile.resize((tile_width, round(tile.height * tile_width / tile.width)))
        caption = f"f{row.frame_idx} " + ("pose" if row.status == "ok" else "no pose")
        tiles.append((tile, caption))
    if not tiles:
        return Image.new("RGB", (tile_width, CAPTION_HEIGHT), "white")
    cell_height = max(t.height for t, _ in tiles) + CAPTION_HEIGHT
    n_rows = -(-len(tiles) // per_row)
    sheet = Image.new("RGB", (tile_width * per_row, cell_height * n_rows), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(tiles):
        left, top = (i % per_row) * tile_width, (i // per_row) * cell_height
        sheet.paste(tile, (left, top))
        draw.text((left + 2, top + cell_height - CAPTION_HEIGHT), caption, fill="black")
    return sheet


def triplet_sheet(manifest: pd.DataFrame, triplets_dir: Path, tile: int = 160) -> Image.Image:
    """One row per triplet: reference, reference crop, target, target mask, target pose."""
    columns = ("reference", "reference_crop", "target", "target_mask", "target_pose")
    row_height = tile + CAPTION_HEIGHT
    sheet = Image.new("RGB", (tile * len(columns), max(len(manifest), 1) * row_height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, row in enumerate(manifest.itertuples(index=False)):
        for j, column in enumerate(columns):
            thumb = Image.fromarray(load_rgb(triplets_dir / getattr(row, column)))
            thumb.thumbnail((tile, tile))
            sheet.paste(thumb, (j * tile, i * row_height))
        words = " ".join(row.prompt.split()[:12])
        style = f" [{row.style}]" if row.style != "photo" else ""
        draw.text((2, i * row_height + tile), f"{row.triplet_id}{style}: {words}...", fill="black")
    return sheet


def image_strip(images: list[np.ndarray], captions: list[str], tile: int = 160) -> Image.Image:
    """The images side by side as thumbnails, each captioned (a synthetic batch)."""
    sheet = Image.new("RGB", (tile * max(len(images), 1), tile + CAPTION_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        thumb = Image.fromarray(image)
        thumb.thumbnail((tile, tile))
        sheet.paste(thumb, (i * tile, 0))
        draw.text((i * tile + 2, tile), caption, fill="black")
    return sheet
