"""Triplets from synthetic characters (article section 4.1): a batch of images of one described
character, drawn together by a text-to-image model, yields (reference, target) pairs as a
movie's frames do.

The batch's first image (ConsiStory's first anchor) is the reference of every pair and each
other image a target, so a batch of n images makes up to n - 1 triplets. Each image's
character face is found as a single image's is. Then the identity-consistency check: dlib's
cosine of every image's face to the reference's; a batch in which any image falls below
`synthetic.min_identity_similarity` shows more than one person and is dropped whole, with its
lowest similarity and the reason (stage `identity`). A kept batch's targets go through the
single images' target stages (mask, pose, caption) and its reference through the crop.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from assets.identity import STAGE as IDENTITY
from assets.identity import identity_similarity
from assets.params import DatasetParams
from assets.references import segment_reference
from assets.singles import character_mask, main_face, target_conditions
from assets.triplet import SKIPPED_COLUMNS, Triplet, mask_image, skipped_record, write_triplet
from core.io import atomic_path, link_tree, load_rgb
from core.layout import DataLayout
from perception.anime_faces import no_face_reason
from perception.faces import DetectedFace
from perception.priors import Priors

SOURCE = "synthetic"
PAIRS = "pairs.parquet"  # a batch's triplets' manifest rows (paths relative to triplets/)
SKIPPED = "skipped.parquet"


def image_name(index: int) -> str:
    return f"image-{index:02d}.png"


def read_batch_images(batch_dir: Path, count: int) -> list[np.ndarray]:
    """The `count` images of a drawn batch, reference first."""
    return [load_rgb(batch_dir / image_name(i)) for i in range(count)]


def batch_identity(
    images: list[np.ndarray], style: str, priors: Priors
) -> tuple[list[DetectedFace | None], str, dict[int, float]]:
    """Each image's character face (None: no face), the batch's style (the reference's: a
    photo batch may fall back to anime), and dlib's cosine of each other image's face to the
    reference's, by image index: the identity-consistency check's figures."""
    reference_face, style = main_face(images[0], style, priors)
    faces = [reference_face] + [main_face(image, style, priors)[0] for image in images[1:]]
    recogniser = priors.dlib_faces()
    similarities = {}
    if reference_face is not None:
        for index, face in enumerate(faces[1:], start=1):
            if face is not None:
                similarities[index] = identity_similarity(
                    recogniser, images[0], reference_face.bbox, images[index], face.bbox
                )
    return faces, style, similarities


def batch_triplets(
    character_id: str,
    images: list[np.ndarray],
    style: str,
    priors: Priors,
    params: DatasetParams,
    min_identity_similarity: float,
) -> tuple[list[Triplet], list[dict]]:
    """The triplets of one character's batch, and every image or pair left out with why."""

    def skip(index: int | None, stage: str, reason: str, similarity: float = math.nan) -> dict:
        file = image_name(index) if index is not None else ""
        record = skipped_record(SOURCE, character_id, 0, index, stage, reason, file)
        return record | {"identity_similarity": similarity}

    reference = images[0]
    faces, style, similarities = batch_identity(images, style, priors)
    reference_face = faces[0]
    if reference_face is None:
        reason = no_face_reason(style, priors.faces.anime)
        return [], [skip(0, "faces", f"the reference image: {reason}")]
    targets, skipped = [], []
    for index, face in enumerate(faces[1:], start=1):
        if face is None:
            skipped.append(skip(index, "faces", no_face_reason(style, priors.faces.anime)))
        else:
            targets.append((index, images[index], face))
    if similarities and min(similarities.values()) < min_identity_similarity:
        index = min(similarities, key=similarities.__getitem__)
        reason = (
            f"the batch shows more than one person: image {index}'s face has identity "
            f"similarity {similarities[index]:.3f} to the reference's < "
            f"{min_identity_similarity} (synthetic.min_identity_similarity)"
        )
        return [], [*skipped, skip(None, IDENTITY, reason, similarities[index])]
    reference_mask = None
    triplets = []
    for index, image, face in targets:
        conditions, stage, reason = target_conditions(image, face.bbox, style, priors)
        if conditions is None:
            skipped.append(skip(index, stage, reason))
            continue
        if reference_mask is None:
            reference_mask, reason = character_mask(reference, reference_face.bbox, style, priors)
            if reference_mask is None:
                return [], [*skipped, skip(0, "masks", f"the reference image: {reason}")]
        mask, pose_image, prompt = conditions
        triplets.append(
            Triplet(
                triplet_id=f"{character_id}-t{index:02d}",
                source=SOURCE,
                movie=character_id,  # the batch: the split keeps a character on one side
                character_id=0,
                reference_frame=0,
                target_frame=index,
                prompt=prompt,
                face_embedding=[float(v) for v in reference_face.embedding],
                face_embedding_raw_norm=float(reference_face.raw_norm),
                reference_bbox=[float(v) for v in reference_face.bbox],
                target_bbox=[float(v) for v in face.bbox],
                images={
                    "reference.png": reference,
                    "reference_crop.png": segment_reference(
                        reference, reference_mask, params.references
                    ),
                    "target.png": image,
                    "target_mask.png": mask_image(mask),
                    "target_pose.png": pose_image,
                },
                identity_similarity=similarities[index],
                style=style,
                face_dropped=priors.faces.anime.drops_face(style),
            )
        )
    return triplets, skipped


def write_batch_triplets(triplets: list[Triplet], skipped: list[dict], batch_dir: Path) -> Path:
    """A batch's triplets in `batch_dir/triplets/`, with their manifest rows (pairs.parquet)
    and what was left out (skipped.parquet), replaced as one folder; returns the folder."""
    folder = batch_dir / "triplets"
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        rows = [write_triplet(t, tmp) for t in triplets]
        pd.DataFrame(rows).to_parquet(tmp / PAIRS, index=False)
        pd.DataFrame(skipped, columns=SKIPPED_COLUMNS).to_parquet(tmp / SKIPPED, index=False)
    return folder


def collect_synthetic(layout: DataLayout, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """The manifest rows of every described character's triplets, their folders linked into
    `out_dir`, and what was left out of each batch (a character whose stages have not run,
    too)."""
    rows, skipped = [], []
    for character_id in layout.synthetic_characters():
        folder = layout.synthetic_batch(character_id) / "triplets"
        if not (folder / PAIRS).is_file():
            reason = "not drawn and processed yet: `cameo synthetic build`"
            skipped.append(skipped_record(SOURCE, character_id, None, None, SOURCE, reason))
            continue
        for row in pd.read_parquet(folder / PAIRS).to_dict(orient="records"):
            link_tree(folder / row["triplet_id"], out_dir / row["triplet_id"])
            rows.append(row)
        skipped += pd.read_parquet(folder / SKIPPED).to_dict(orient="records")
    return rows, skipped
