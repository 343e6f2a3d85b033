"""A small triplet dataset in the data contract's layout, for the tests of training and of
the training assets."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_triplets(root: Path, identities: int = 6, seed: int = 0) -> Path:
    """A small triplet dataset in the data contract's layout, written by the dataset's own
    writer: `identities` characters (the last one a single image), images of two aspect
    ratios, raw face-embedding norms like ArcFace's (about 20-30). Returns the data root."""
    from assets.triplet import Triplet, write_triplet
    from assets.triplets import write_manifest

    rng = np.random.default_rng(seed)
    out = root / "triplets"
    out.mkdir(parents=True)
    rows = []
    for i in range(identities):
        height, width = (48, 80) if i % 2 else (64, 64)
        mask = np.zeros((height, width, 3), np.uint8)
        mask[height // 4 : 3 * height // 4, width // 4 : 3 * width // 4] = 255
        embedding = rng.standard_normal(512).astype(np.float32)
        single = i == identities - 1
        images = {
            name: rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for name in ("reference.png", "reference_crop.png", "target.png", "target_pose.png")
        }
        images["target_mask.png"] = mask
        triplet = Triplet(
            triplet_id=f"single-{i}" if single else f"movie-c{i:04d}",
            source="single" if single else "movie",
            movie="" if single else "movie",
            character_id=-1 if single else i,
            reference_frame=0,
            target_frame=0 if single else 50,
            prompt=f"A person number {i} wearing a red coat walks through a grey street.",
            face_embedding=[float(v) for v in embedding / np.linalg.norm(embedding)],
            face_embedding_raw_norm=float(20 + i),
            reference_bbox=[width / 4, height / 4, 3 * width / 4, 3 * height / 4],
            target_bbox=[width / 4, height / 4, 3 * width / 4, 3 * height / 4],
            images=images,
        )
        rows.append(write_triplet(triplet, out))
    write_manifest(rows, [], out, {"profile": "tiny"})
    return root
