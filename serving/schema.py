"""What the served model takes and returns: columns, inference params, limits, image decoding.

A request is one row per image: the base image, its mask and the reference as base64 PNG or
JPEG, the prompt, optionally a negative prompt, a pose drawing (else the model extracts one from
the masked base) and a face embedding (else the model reads it from the reference). Inference
params go through MLflow's params schema; their defaults and ranges, and every limit, come
from the `serving` section of params.yaml and travel with the logged model.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import PIL.Image

from serving.params import InferenceParams
from training.model import FACE_EMBED_DIM

REQUIRED_COLUMNS = ("base", "mask", "reference", "prompt")
OPTIONAL_COLUMNS = ("negative_prompt", "pose", "face_embedding")
IMAGE_COLUMNS = ("base", "mask", "reference", "pose")
OUTPUT_COLUMNS = ("image", "pose", "identity_score", "seconds", "model_version")
IMAGE_FORMATS = ("PNG", "JPEG")


class RequestError(ValueError):
    """A request the model refuses: `field` names the column or param, `problem` says why.
    The model turns it into MLflow's INVALID_PARAMETER_VALUE, which the scoring server answers
    with 400."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


_MLFLOW_TYPES = {bool: "boolean", int: "long", float: "double", str: "string"}


@dataclass(frozen=True)
class ParamRange:
    """One inference param: its default, and its bounds or allowed values."""

    name: str
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None

    @property
    def dtype(self) -> str:
        return _MLFLOW_TYPES[type(self.default)]

    def check(self, value: Any) -> Any:
        field = f"params.{self.name}"
        if self.choices is not None and value not in self.choices:
            raise RequestError(field, f"{value!r} is not one of {list(self.choices)}")
        if self.min is not None and value < self.min:
            raise RequestError(field, f"{value} is below the minimum {self.min}")
        if self.max is not None and value > self.max:
            raise RequestError(field, f"{value} is above the maximum {self.max}")
        return value


@dataclass(frozen=True)
class ServingConfig:
    """The `serving` section of params.yaml, as the logged model carries it."""

    max_pixels: int
    min_side: int
    max_rows: int
    timeout_s: int
    workers: int
    verify_checksums: bool
    params: tuple[ParamRange, ...]

    @classmethod
    def from_params(cls, section: Mapping[str, Any]) -> ServingConfig:
        """From params.yaml's `serving` section (or `to_dict`'s output)."""
        params = section["params"]
        ranges = tuple(
            ParamRange(
                name=name,
                default=spec["default"],
                min=spec.get("min"),
                max=spec.get("max"),
                choices=tuple(spec["choices"]) if spec.get("choices") is not None else None,
            )
            for name, spec in params.items()
        )
        expected = {f.name for f in fields(InferenceParams)}
        if set(params) != expected:
            missing, unknown = sorted(expected - set(params)), sorted(set(params) - expected)
            raise ValueError(
                f"serving.params must define exactly {sorted(expected)}; "
                f"missing {missing}, unknown {unknown}"
            )
        return cls(
            max_pixels=section["max_pixels"],
            min_side=section["min_side"],
            max_rows=section["max_rows"],
            timeout_s=section["timeout_s"],
            workers=section["workers"],
            verify_checksums=section["verify_checksums"],
            params=ranges,
        )

    def to_dict(self) -> dict[str, Any]:
        """The same shape as params.yaml's section (JSON-able, for the model's config)."""
        config = asdict(self)
        config["params"] = {
            r.name: {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in asdict(r).items()
                if k != "name" and v is not None
            }
            for r in self.params
        }
        return config

    def signature(self):
        """The MLflow signature: input and output columns, and the params with their defaults."""
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
        from mlflow.types.schema import Array

        inputs = [ColSpec("string", name) for name in REQUIRED_COLUMNS]
        inputs += [
            ColSpec("string", "negative_prompt", required=False),
            ColSpec("string", "pose", required=False),
            ColSpec(Array("double"), "face_embedding", required=False),
        ]
        outputs = [
            ColSpec("string", "image"),
            ColSpec("string", "pose", required=False),
            ColSpec("double", "identity_score", required=False),
            ColSpec("double", "seconds"),
        ]
        params = [ParamSpec(r.name, r.dtype, r.default) for r in self.params]
        return ModelSignature(Schema(inputs), Schema(outputs), ParamSchema(params))

    def inference_params(self, params: Mapping[str, Any] | None) -> InferenceParams:
        """Defaults filled in and every value checked against its range.

        MLflow has already checked the types and dropped names the schema does not know."""
        params = params or {}
        values = {r.name: r.check(params.get(r.name, r.default)) for r in self.params}
        return InferenceParams(**values)


# ---------------------------------------------------------------------------------------------
# Images and embeddings in requests and responses


def _b64decode(field: str, value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise RequestError(field, "expected a base64-encoded PNG or JPEG string")
    # Browsers hand out data URLs ("data:image/png;base64,…"): accept them as they are.
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise RequestError(field, f"not valid base64 ({e})") from None


def decode_image(field: str, value: Any, max_pixels: int, min_side: int) -> PIL.Image.Image:
    """Decode a base64 PNG/JPEG, refusing a declared size over `max_pixels` before any pixel is
    decoded (PIL's `open` reads the header only), so decompression bombs cost nothing."""
    data = _b64decode(field, value)
    try:
        with warnings.catch_warnings():
            # PIL warns from 89M pixels on; the limit below refuses far smaller images.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.DecompressionBombError as e:  # beyond PIL's own, larger limit
        raise RequestError(field, f"image too large ({e})") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        raise RequestError(field, f"{len(data)} bytes that are not a PNG or JPEG image") from None
    if image.format not in IMAGE_FORMATS:
        raise RequestError(field, f"a {image.format} image; send PNG or JPEG")
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            field, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}"
        )
    if min(width, height) < min_side:
        raise RequestError(field, f"{width}x{height} is smaller than {min_side} px on a side")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as e:  # truncated or corrupt pixel data
        raise RequestError(field, f"the {image.format} data is corrupt ({e})") from None
    return image


def decode_embedding(field: str, value: Any) -> np.ndarray:
    """A raw-scale face embedding (what `CharacterInpaintPipeline.encode_face` returns)."""
    try:
        embedding = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise RequestError(field, f"expected {FACE_EMBED_DIM} numbers") from None
    if embedding.shape != (FACE_EMBED_DIM,):
        raise RequestError(field, f"expected {FACE_EMBED_DIM} numbers, got {embedding.size}")
    if not np.isfinite(embedding).all() or not np.linalg.norm(embedding) > 0:
        raise RequestError(field, "must be finite and not all zero")
    return embedding


def encode_image(image: PIL.Image.Image, image_format: str = "png") -> str:
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_from_base64(value: str) -> PIL.Image.Image:
    """A response's image (trusted: it comes from the model)."""
    image = PIL.Image.open(io.BytesIO(base64.b64decode(value)))
    image.load()
    return image
