"""The dataset's params.yaml sections, and `DatasetParams`: the part of the file the dataset
stages read (the root `orchestration.params.Params` extends it with the other sections)."""

from __future__ import annotations

from pydantic import Field, model_validator

from core.params import ParamsRoot, Section
from perception.params import (
    CaptionsParams,
    FacesParams,
    MasksParams,
    PosesParams,
    similarity_scale_problem,
)


class ImagesParams(Section):
    # Decode limit for every single image and movie frame; larger ones are refused with a
    # recorded reason (a PNG can declare 100 000 px a side in a few bytes).
    max_pixels: int = Field(40_000_000, ge=1)


class FramesParams(Section):
    stride: int = Field(50, ge=1)
    jpeg_quality: int = Field(95, ge=1, le=100)


class CharactersParams(Section):
    similarity_threshold: float = Field(0.5, ge=-1.0, le=1.0)
    min_frames: int = Field(5, ge=1)
    max_frames: int = Field(200, ge=1)

    @model_validator(mode="after")
    def _frames_ordered(self) -> CharactersParams:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames ({self.min_frames}) > max_frames ({self.max_frames})")
        return self


class ReferencesParams(Section):
    padding: float = Field(0.05, ge=0.0, le=1.0)  # fraction of the mask box on each side
    background: int = Field(255, ge=0, le=255)  # grey level outside the mask


class TripletsParams(Section):
    seed: int = Field(0, ge=0)
    # dlib's cosine of the character's face in the reference and the target frame below which
    # the pair shows two people and is dropped: the highest different-people similarity
    # measured on the sample movie (0.904), rounded up (BENCHMARKS.md, "Identity similarity").
    min_identity_similarity: float = Field(0.91, ge=-1.0, le=1.0)
    # The blocking check fails when more of the movie pairs than this fall below it.
    max_mismatched_fraction: float = Field(0.1, ge=0.0, le=1.0)
    # Where an input has its own alpha channel (a sprite), the blocking check wants its target
    # mask to overlap it at least this much (IoU): below, the segmenter failed on it.
    min_mask_alpha_iou: float = Field(0.5, ge=0.0, le=1.0)


class DatasetParams(ParamsRoot):
    """The sections the dataset stages read, with the active profile."""

    images: ImagesParams = ImagesParams()
    frames: FramesParams = FramesParams()
    faces: FacesParams = FacesParams()
    characters: CharactersParams = CharactersParams()
    masks: MasksParams = MasksParams()
    poses: PosesParams = PosesParams()
    captions: CaptionsParams = CaptionsParams()
    references: ReferencesParams = ReferencesParams()
    triplets: TripletsParams = TripletsParams()

    @model_validator(mode="after")
    def _thresholds_on_their_recognisers_scales(self) -> DatasetParams:
        # Characters are grouped by faces.recogniser (the profile's is ArcFace in full, a
        # random descriptor in tiny); the triplets' identity check is always dlib's.
        grouping = (
            "dlib"
            if self.faces.recogniser == "dlib"
            else {"full": "arcface"}.get(self.profile, self.profile)
        )
        problems = [
            similarity_scale_problem(
                "characters.similarity_threshold", self.characters.similarity_threshold, grouping
            ),
            similarity_scale_problem(
                "triplets.min_identity_similarity", self.triplets.min_identity_similarity, "dlib"
            ),
        ]
        if any(problems):
            raise ValueError("; ".join(p for p in problems if p))
        return self
