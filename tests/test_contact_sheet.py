"""The contact sheets previewed in the assets' metadata are readable thumbnails: a grid about
as wide as the Dagster UI shows legibly, not a strip shrunk to a few pixels high."""

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from assets.contact_sheet import (
    PREVIEW_WIDTH,
    character_contact_sheet,
    markdown_preview,
    pose_contact_sheet,
)


def preview_size(markdown: str) -> tuple[int, int]:
    """The size of the image a Markdown preview inlines as a data URI."""
    data = markdown.split("base64,", 1)[1].removesuffix(")")
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return image.size


def write_frames(root: Path, count: int, size=(320, 240)) -> list[str]:
    rng = np.random.default_rng(0)
    (root / "frames").mkdir(parents=True)
    paths = []
    for i in range(count):
        path = f"frames/{i * 50:08d}.jpg"
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / path)
        paths.append(path)
    return paths


def test_a_characters_pose_sheet_previews_as_a_legible_grid(tmp_path: Path):
    paths = write_frames(tmp_path, 30)
    mask_dir, pose_dir = tmp_path / "masks", tmp_path / "poses"
    mask_dir.mkdir()
    pose_dir.mkdir()
    mask = np.zeros((240, 320), np.uint8)
    mask[40:200, 100:220] = 255
    Image.fromarray(mask).save(mask_dir / "mask.png")
    control = np.zeros((240, 320, 3), np.uint8)
    control[60:180, 158:162] = (255, 0, 0)
    Image.fromarray(control).save(pose_dir / "pose.png")
    poses = pd.DataFrame(
        {
            "frame_idx": [i * 50 for i in range(30)],
            "path": paths,
            "mask_file": "mask.png",
            "control_file": ["pose.png"] * 29 + [""],
            "status": ["ok"] * 29 + ["skipped"],
        }
    )
    sheet = pose_contact_sheet(poses, tmp_path, mask_dir, pose_dir)
    width, height = preview_size(markdown_preview(sheet))
    # Not shrunk: 4 tiles of 192 px a row, 4 rows of 144 px frames and their captions.
    assert (width, height) == sheet.size == (768, 4 * (144 + 14))
    one = pose_contact_sheet(poses.head(1), tmp_path, mask_dir, pose_dir)
    assert preview_size(markdown_preview(one)) == (768, 144 + 14)


def test_previews_are_at_most_the_preview_width(tmp_path: Path):
    paths = write_frames(tmp_path, 10)
    characters = pd.DataFrame(
        {
            "character_id": [0] * 10,
            "rank": range(10),
            "frame_idx": [i * 50 for i in range(10)],
            "similarity": 0.9,
            "path": paths,
            "bbox": [[120.0, 60.0, 200.0, 160.0]] * 10,
        }
    )
    sheet = character_contact_sheet(characters, tmp_path)
    width, height = preview_size(markdown_preview(sheet))
    assert sheet.width > PREVIEW_WIDTH and width == PREVIEW_WIDTH
    assert height == round(sheet.height * PREVIEW_WIDTH / sheet.width)
