"""One triplet: the record the manifest keeps of it, the files written for it, and the
record of whatever could not become one (skipped.parquet)."""

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.io import save_image

FILES = ("reference.png", "reference_crop.png", "target.png", "target_mask.png", "target_pose.png")
SKIPPED_COLUMNS = [
    *("source", "movie", "file", "character_id", "frame_idx", "stage", "reason"),
    "identity_similarity",  # of a pair dropped at stage `identity`; NaN for every other row
]


@dataclass
class Triplet:
    """One training example; image arrays are written into triplets/<triplet_id>/."""

    triplet_id: str
    source: str  # "movie", "single" or "synthetic"
    movie: str
    character_id: int
    reference_frame: int
    target_frame: int
    prompt: str
    face_embedding: list[float]  # unit norm
    face_embedding_raw_norm: float  # times the unit embedding: the recogniser's raw output
    reference_bbox: list[float]  # the character's face in the reference, x1, y1, x2, y2 px
    target_bbox: list[float]  # and in the target
    images: dict[str, np.ndarray]
    # dlib's cosine of the character's face in the reference and the target (movies only)
    identity_similarity: float = math.nan
    style: str = "photo"  # or "anime" (perception.anime_faces.STYLES)
    # True: training never conditions on this face (an anime face, `faces.anime.identity`)
    face_dropped: bool = False
    # The target mask's IoU with the image's own alpha channel, where it has one (a sprite)
    mask_alpha_iou: float = math.nan


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A boolean mask as the RGB image a triplet stores (white: the character)."""
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)


def skipped_record(
    source: str, movie: str, character_id, frame_idx, stage: str, reason: str, file: str = ""
) -> dict:
    return {
        "source": source,
        "movie": movie,
        "file": file,
        "character_id": character_id,
        "frame_idx": frame_idx,
        "stage": stage,
        "reason": reason,
        "identity_similarity": math.nan,
    }


def write_triplet(triplet: Triplet, out_dir: Path) -> dict:
    """Write one triplet's images into `out_dir/<triplet_id>/`; return its manifest row."""
    folder = out_dir / triplet.triplet_id
    folder.mkdir(parents=True)
    for name, image in triplet.images.items():
        save_image(image, folder / name)
    record = {k: v for k, v in asdict(triplet).items() if k != "images"}
    return {**record, **{n.removesuffix(".png"): f"{triplet.triplet_id}/{n}" for n in FILES}}
