"""The evaluation's metrics, each a pure function of arrays (`training.evaluate` runs them):
keypoints (PCK), colour (saturation), identity (sim_ref, sim_gt, copy-paste from a
recogniser's embeddings) and CLIP-T."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import PIL.Image
import torch

from perception.faces import copy_paste_score, cosine, face_angle

if TYPE_CHECKING:
    from pandas.api.typing import SeriesGroupBy


def pck(
    predicted: np.ndarray,
    predicted_scores: np.ndarray,
    target: np.ndarray,
    target_scores: np.ndarray,
    alpha: float,
    score_threshold: float,
) -> float:
    """Percentage of correct keypoints: of the target keypoints scored >= `score_threshold`,
    the fraction the prediction also finds within `alpha` × the larger side of their box.
    NaN when no target keypoint is visible."""
    visible = target_scores >= score_threshold
    if not visible.any():
        return math.nan
    reference = target[visible]
    size = max(float((reference.max(axis=0) - reference.min(axis=0)).max()), 1.0)
    distance = np.linalg.norm(predicted[visible] - reference, axis=1)
    found = predicted_scores[visible] >= score_threshold
    return float(((distance <= alpha * size) & found).mean())


def mean_saturation(image: np.ndarray, inside: np.ndarray) -> float:
    """Mean HSV saturation, (max - min) / max of RGB, of an RGB uint8 image's pixels in
    `inside`; NaN for an empty region."""
    pixels = image[inside].astype(np.float32)
    if len(pixels) == 0:
        return math.nan
    high, low = pixels.max(axis=1), pixels.min(axis=1)
    saturation = np.where(high > 0, (high - low) / np.maximum(high, 1e-6), 0.0)
    return float(saturation.mean())


def saturation_ratio(output: np.ndarray, target: np.ndarray, inside: np.ndarray) -> float:
    """The painted region's mean saturation over the target's in the same region."""
    reference = mean_saturation(target, inside)
    return mean_saturation(output, inside) / reference if reference > 0 else math.nan


@dataclass(frozen=True)
class Identity:
    """A triplet's two faces in one recogniser's space: the reference's and the target frame's
    (where the faces stage found the character's); None where the recogniser finds none."""

    reference: np.ndarray | None
    target: np.ndarray | None


def identity_scores(
    output: np.ndarray | None, identity: Identity, copy_paste_min_angle: float
) -> list[float]:
    """sim_ref, sim_gt, copy-paste and face found of an output's face embedding (None: no face
    where the target's is); NaN where a face is missing, and copy-paste NaN where reference
    and target are less than `copy_paste_min_angle` radians apart (the ratio is then noise)."""
    if output is None:
        return [math.nan, math.nan, math.nan, 0.0]
    reference, target = identity.reference, identity.target
    both = reference is not None and target is not None
    return [
        cosine(output, reference) if reference is not None else math.nan,
        cosine(output, target) if target is not None else math.nan,
        copy_paste_score(output, reference, target)
        if both and face_angle(reference, target) >= copy_paste_min_angle
        else math.nan,
        1.0,
    ]


def benchmark_mean(values: pd.Series) -> float:
    """MultiID-Bench's aggregate (`eval.py`): the mean of the values within 1.5 x IQR of the
    quartiles, or their median where that leaves none; NaN ignored, NaN if none."""
    values = values.dropna()
    if values.empty:
        return math.nan
    q1, q3 = values.quantile(0.25), values.quantile(0.75)
    spread = 1.5 * (q3 - q1)
    kept = values[(values >= q1 - spread) & (values <= q3 + spread)]
    return float(kept.mean()) if not kept.empty else float(values.median())


def bootstrap_interval(
    values: pd.Series,
    statistic: Callable[[pd.Series], float],
    resamples: int,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile bootstrap interval of `statistic` over `values` (NaN dropped): the
    statistic of `resamples` resamples with replacement, their (1 - level) / 2 quantiles.
    NaN where fewer than two values leave nothing to resample."""
    values = values.dropna().reset_index(drop=True)
    if len(values) < 2 or resamples < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), (resamples, len(values)))
    stats = np.array([statistic(values.iloc[draw]) for draw in draws])
    tail = (1 - level) / 2
    return float(np.nanquantile(stats, tail)), float(np.nanquantile(stats, 1 - tail))


def figure_spread(grouped: SeriesGroupBy, benchmark: bool, resamples: int) -> dict[str, pd.Series]:
    """What stands beside an identity figure per group: its n, its median where it is the
    benchmark's aggregate (`benchmark`), and its 95 % bootstrap interval (low, high)."""
    statistic = benchmark_mean if benchmark else pd.Series.mean
    intervals = grouped.agg(lambda values: bootstrap_interval(values, statistic, resamples))
    return {
        "n": grouped.count(),
        **({"median": grouped.median()} if benchmark else {}),
        "low": intervals.map(lambda interval: interval[0]),
        "high": intervals.map(lambda interval: interval[1]),
    }


def with_interval(value: float, low: float, high: float, n: float) -> str:
    """`0.912 [0.881, 0.940] n=12`; `-` for no value, no interval where there is none."""
    if math.isnan(value):
        return f"- n={int(n)}"
    interval = "" if math.isnan(low) else f" [{low:.3f}, {high:.3f}]"
    return f"{value:.3f}{interval} n={int(n)}"


class ClipScorer:
    """CLIP-T: 100 × max(cosine, 0) of a transformers CLIP model's image and text features."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.folder = Path(folder)
        self.model = CLIPModel.from_pretrained(self.folder).eval()
        self.processor = CLIPProcessor.from_pretrained(self.folder)

    @torch.no_grad()
    def __call__(self, image: PIL.Image.Image, text: str) -> float:
        inputs = self.processor(
            text=[text], images=[image], return_tensors="pt", padding=True, truncation=True
        )
        # CLIPOutput's image and text embeddings are projected and unit-normed.
        output = self.model(**inputs)
        cosine = (output.image_embeds * output.text_embeds).sum(dim=-1)
        return 100.0 * max(float(cosine[0]), 0.0)
