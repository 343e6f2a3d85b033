"""The dataset's identity check: a mis-grouped character never becomes a training pair.

A movie triplet's two frames must show one person. dlib's descriptors of the character's face
in each (the boxes the faces stage found, whichever detector found them) are compared; below
`triplets.min_identity_similarity` the pair is dropped into skipped.parquet (stage
`identity`, with its similarity). The triplets' blocking check then holds every movie pair,
kept or dropped, to at most `triplets.max_mismatched_fraction` below the threshold: a few
stray pairs are dropped quietly, many mean the grouping failed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from assets.params import TripletsParams
from perception.faces import DlibFaceAnalyzer

STAGE = "identity"  # the skipped.parquet stage of a dropped pair


def identity_similarity(
    recogniser: DlibFaceAnalyzer,
    reference: np.ndarray,
    reference_box: np.ndarray,
    target: np.ndarray,
    target_box: np.ndarray,
) -> float:
    """Cosine of dlib's descriptors of the face in `reference_box` of the reference frame and
    in `target_box` of the target frame."""
    reference_embedding, _ = recogniser.describe(reference, np.asarray(reference_box))
    target_embedding, _ = recogniser.describe(target, np.asarray(target_box))
    return float(reference_embedding @ target_embedding)


def mismatch_reason(
    similarity: float, reference_frame: int, target_frame: int, params: TripletsParams
) -> str:
    return (
        f"reference frame {reference_frame} and target frame {target_frame} show two people: "
        f"identity similarity {similarity:.3f} < {params.min_identity_similarity} "
        "(triplets.min_identity_similarity)"
    )


def movie_pairs(manifest: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """One row per movie pair, kept (a movie triplet) or dropped: its identity similarity."""
    kept = manifest.loc[manifest["source"] == "movie", ["identity_similarity"]]
    from_movies = (skipped["stage"] == STAGE) & (skipped["source"] == "movie")
    dropped = skipped.loc[from_movies, ["identity_similarity"]]
    return pd.concat([kept, dropped], ignore_index=True).astype(float)


def identity_expectation(params: TripletsParams):
    """At most `max_mismatched_fraction` of the movie pairs below the threshold."""
    import great_expectations as gx

    return gx.expectations.ExpectColumnValuesToBeBetween(
        column="identity_similarity",
        min_value=params.min_identity_similarity,
        mostly=1.0 - params.max_mismatched_fraction,
    )
