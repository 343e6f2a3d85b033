"""The `serving` section of params.yaml: request limits, the scoring server's settings, and
each inference param's default and range. The limits and params travel with the logged model
(`serving.schema.ServingConfig`); `timeout_s`, `workers`, `max_waiting` and `max_request_mb`
are the server's (`cameo serve` passes them to `serving.app`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from pydantic import Field, model_validator

from core.params import Section
from perception.params import FacesParams, PosesParams
from training.params import Acceleration


@dataclass(frozen=True)
class InferenceParams:
    """The per-request knobs of `CharacterInpaintPipeline` and of the response."""

    num_inference_steps: int
    guidance_scale: float
    face_scale: float
    body_scale: float
    controlnet_scale: float
    seed: int
    output_format: str  # of the returned image: "png" or "jpeg"
    return_pose: bool  # also return the pose drawing that conditioned the output


class ParamSpec(Section):
    """One inference param: its default, and its bounds or allowed values."""

    default: bool | int | float | str
    min: int | float | None = None
    max: int | float | None = None
    choices: list[bool | int | float | str] | None = None


DEFAULT_INFERENCE = {
    "num_inference_steps": ParamSpec(default=30, min=1, max=100),
    "guidance_scale": ParamSpec(default=5.0, min=0.0, max=20.0),
    "face_scale": ParamSpec(default=1.0, min=0.0, max=2.0),
    "body_scale": ParamSpec(default=1.0, min=0.0, max=2.0),
    "controlnet_scale": ParamSpec(default=1.0, min=0.0, max=2.0),
    "seed": ParamSpec(default=0, min=0, max=4294967295),
    "output_format": ParamSpec(default="png", choices=["png", "jpeg"]),
    "return_pose": ParamSpec(default=True),
}


class ServingParams(Section):
    """The `serving` section."""

    max_pixels: int = Field(4_194_304, ge=1)
    min_side: int = Field(64, ge=1)
    max_rows: int = Field(4, ge=1)
    timeout_s: int = Field(300, ge=1)
    workers: int = Field(1, ge=1)
    max_waiting: int = Field(2, ge=0)
    # A request body larger than this is refused (413) before it is read. A row carries three
    # images: at max_pixels, as PNG of a photograph, about 30 MB in base64; four rows fit.
    max_request_mb: int = Field(128, ge=1)
    verify_checksums: bool = True
    # The U-Net's and the ControlNet's speed levers; with `compile`, the server compiles at
    # start (a warm-up painting) before /ping answers healthy.
    acceleration: Acceleration = Acceleration()
    params: dict[str, ParamSpec] = Field(default_factory=lambda: dict(DEFAULT_INFERENCE))

    @model_validator(mode="after")
    def _every_inference_param(self) -> ServingParams:
        expected = {f.name for f in fields(InferenceParams)}
        if set(self.params) != expected:
            missing, unknown = (
                sorted(expected - set(self.params)),
                sorted(set(self.params) - expected),
            )
            raise ValueError(
                f"params must define exactly {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return self


@dataclass(frozen=True)
class ServedSettings:
    """What travels from params.yaml with a logged model: the face and pose priors' settings,
    the `serving` section, and whether the body encoder's own code may run."""

    faces: FacesParams = field(default_factory=FacesParams)
    poses: PosesParams = field(default_factory=PosesParams)
    serving: ServingParams = field(default_factory=ServingParams)
    trust_remote_code: bool = False
