"""The params.yaml sections of the frozen priors: which model each stage runs and how.

The dataset stages, the served pipeline and the evaluation all build their priors from these
(`perception.priors.Priors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from core.params import Section

DEFAULT_POSE_MODEL = "rtmw-dw-x-l_simcc-cocktail14_270e-384x288_20231122.onnx"


@dataclass(frozen=True)
class SimilarityScale:
    """Where a recogniser's same-person threshold belongs on its cosine scale: a prior until a
    calibration on labelled faces replaces it."""

    low: float
    high: float
    why: str


# Each recogniser's own scale. A threshold from another's scale silently merges everyone (dlib
# at ArcFace's 0.5) or splits everyone (ArcFace at dlib's 0.91): refused before anything runs.
SIMILARITY_SCALES = {
    "dlib": SimilarityScale(
        0.88,
        0.96,
        "dlib's descriptors of different people have cosine 0.80-0.91, and its documented "
        "operating point (Euclidean 0.6) is cosine 0.903-0.928 at their lengths",
    ),
    "arcface": SimilarityScale(
        0.15,
        0.75,
        "ArcFace's embeddings of different people have cosine near 0 and of one person "
        "typically above 0.3; insightface's verification thresholds lie in that gap",
    ),
}


def similarity_scale_problem(setting: str, threshold: float | None, recogniser: str) -> str | None:
    """Why `threshold` (for `setting`) is not on `recogniser`'s scale, or None. Recognisers
    without a scale (the tiny profile's random descriptor) accept any threshold."""
    scale = SIMILARITY_SCALES.get(recogniser)
    if threshold is None or scale is None or scale.low <= threshold <= scale.high:
        return None
    return (
        f"{setting} {threshold} is not on {recogniser}'s scale: expected "
        f"{scale.low}-{scale.high} ({scale.why})"
    )


class DlibParams(Section):
    """dlib's face models (`perception.faces.DlibFaceAnalyzer`), from face_recognition_models."""

    # hog: dlib's built-in HOG detector (frontal faces, fast on CPU); cnn: the MMOD CNN
    # detector (mmod_human_face_detector.dat; slow on CPU, this wheel has no CUDA).
    detector: Literal["hog", "cnn"] = "hog"
    # Image doublings before detection: HOG's 80 px window finds faces from 40 px at 1.
    upsample: int = Field(1, ge=0, le=3)
    # Detector score a face needs (HOG: the SVM margin, dlib's own default 0). On the sample
    # movie real faces scored >= 0.41 and false hits <= 0.22 (BENCHMARKS.md).
    det_thresh: float = 0.3
    jitters: int = Field(0, ge=0)  # descriptor averaged over N jittered crops (dlib's num_jitters)


class AnimeFacesParams(Section):
    """The anime face detector (`perception.anime_faces`): OpenCV's cascade search."""

    scale_factor: float = Field(1.1, gt=1.0)  # image pyramid step
    min_neighbors: int = Field(5, ge=1)  # overlapping hits a face needs
    # Movies drawn in anime style, by partition key: the anime detector finds their faces.
    # Single images are anime when they lie under singles/anime/.
    movies: list[str] = Field(default_factory=list)
    # A photo input whose photo detector finds no face is tried with the anime detector, and
    # is anime if that finds one (it found none in the sample's photographs).
    fallback: bool = True
    # What an anime face gives the model: `dropped`, no face condition (zeros, as CFG dropout
    # drops it), or `embedding`, the profile recogniser's embedding of its aligned crop.
    # dlib does not tell the sprites' characters apart (BENCHMARKS.md, "Anime identity").
    identity: Literal["dropped", "embedding"] = "dropped"

    def style_of(self, movie: str) -> str:
        """A movie's style, by its partition key."""
        return "anime" if movie in self.movies else "photo"

    def drops_face(self, style: str) -> bool:
        """Whether a face found in an input of `style` conditions nothing."""
        return style == "anime" and self.identity == "dropped"


class FacesParams(Section):
    model: str = "antelopev2"  # folder under $CAMEO_MODELS (insightface layout)
    det_size: int = Field(640, ge=32)
    det_thresh: float = Field(0.5, ge=0.0, le=1.0)
    min_face_px: int = Field(24, ge=0)
    # Whose embedding groups frames into characters: `profile`, the profile's analyzer (the
    # ArcFace of `model` in full, the tiny descriptor in tiny), or `dlib`, dlib's ResNet on the
    # same boxes. The conditioning embedding is always the profile's (InstantID reads ArcFace).
    recogniser: Literal["profile", "dlib"] = "profile"
    # Frames per detector call (`detect_batch`), their faces in one recogniser call. A model
    # file whose batch axis is fixed at 1 runs frame by frame (face by face) instead.
    batch_size: int = Field(16, ge=1)
    dlib: DlibParams = DlibParams()
    anime: AnimeFacesParams = AnimeFacesParams()


class AnimeMasksParams(Section):
    """The anime character segmenter (`perception.anime_segmentation`, article Note 2)."""

    model: str = "anime-seg"  # folder under $CAMEO_MODELS holding SkyTNT's isnetis.onnx
    size: int = Field(1024, ge=32)  # the square side the image is letterboxed into
    threshold: float = Field(0.5, gt=0.0, lt=1.0)  # foreground probability of a mask pixel


class MasksParams(Section):
    model: str = "sam"
    person_box_prompt: bool = False  # article Note 1
    person_detector: str = "grounding-dino"
    min_area_fraction: float = Field(0.01, ge=0.0, le=1.0)
    max_area_fraction: float = Field(0.95, ge=0.0, le=1.0)
    # Frames per SAM image-encoder call; prompts and mask decoding stay per frame.
    batch_size: int = Field(8, ge=1)
    # SAM's precision. bfloat16 runs at a GPU's tensor-core rate (float32 has none on an
    # H100); its masks differ from float32's in a few edge pixels (tests/test_segmentation.py).
    dtype: Literal["float32", "bfloat16"] = "float32"
    # Anime inputs are masked by a dedicated model instead (Note 2).
    anime: AnimeMasksParams = AnimeMasksParams()

    @model_validator(mode="after")
    def _areas_ordered(self) -> MasksParams:
        if self.min_area_fraction >= self.max_area_fraction:
            raise ValueError(
                f"min_area_fraction ({self.min_area_fraction}) >= "
                f"max_area_fraction ({self.max_area_fraction})"
            )
        return self


class PosesParams(Section):
    model: str = DEFAULT_POSE_MODEL
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    # keypoints above the threshold for a pose to count as found (of 133)
    min_keypoints: int = Field(5, ge=0, le=133)
    # Person crops per pose-model call; a file fixed at batch 1 runs crop by crop.
    batch_size: int = Field(32, ge=1)


class CaptionsParams(Section):
    model: str = "InternVL2-26B"
    prompt_version: str = "caption_v1"
    min_words: int = Field(100, ge=1)
    max_words: int = Field(150, ge=1)
    batch_size: int = Field(8, ge=1)  # images per `generate` call (vLLM schedules its own)

    @model_validator(mode="after")
    def _words_ordered(self) -> CaptionsParams:
        if self.min_words > self.max_words:
            raise ValueError(f"min_words ({self.min_words}) > max_words ({self.max_words})")
        return self
