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
import difflib
import io
import numbers
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import PIL.Image

from serving.params import InferenceParams
from training.model import FACE_EMBED_DIM
from training.params import Acceleration

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
    acceleration: Acceleration

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
            # Models logged before the levers existed run without them.
            acceleration=Acceleration.model_validate(section.get("acceleration", {})),
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
        config["acceleration"] = self.acceleration.model_dump()
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
# The request's keys, checked before MLflow parses it (MLflow drops unknown ones with a warning)

DATA_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
PARAMS_KEY = "params"
_PARAM_TYPES = {  # MLflow's param dtypes: which JSON values each takes, and how to say it
    "boolean": ((bool,), "true or false"),
    "integer": ((numbers.Integral,), "an integer"),
    "long": ((numbers.Integral,), "an integer"),
    "float": ((numbers.Real,), "a number"),
    "double": ((numbers.Real,), "a number"),
    "string": ((str,), "a string"),
}


def _unknown(field: str, kind: str, known: Sequence[str]) -> RequestError:
    """`field` is no known key: name the closest known one, or list them all."""
    name = field.rpartition(".")[2]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
    return RequestError(field, f"unknown {kind}; {hint}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True)
class RequestSchema:
    """The keys a request may use, from the served model's signature: its input columns (which
    are required, which hold strings) and its params with their types."""

    columns: tuple[str, ...]
    required: tuple[str, ...]
    string_columns: tuple[str, ...]
    number_list_columns: tuple[str, ...]
    params: Mapping[str, str]  # name -> MLflow dtype ("long", "double", "boolean", "string")

    @classmethod
    def from_signature(cls, signature: Any) -> RequestSchema:
        from mlflow.types import DataType
        from mlflow.types.schema import Array

        inputs = signature.inputs.inputs
        params = signature.params.params if signature.params is not None else []
        return cls(
            columns=tuple(c.name for c in inputs),
            required=tuple(c.name for c in inputs if c.required),
            string_columns=tuple(c.name for c in inputs if c.type == DataType.string),
            number_list_columns=tuple(c.name for c in inputs if isinstance(c.type, Array)),
            params={p.name: p.dtype.name for p in params},
        )

    def check(self, body: Any) -> str:
        """Refuse, with `RequestError` naming the key, a request MLflow would parse with keys
        dropped or misread: unknown top-level keys, params or columns (with the closest valid
        one), params of the wrong type, missing required columns, string columns holding other
        values. Returns the data key (`dataframe_split`, ...)."""
        formats = ", ".join(DATA_KEYS)
        if not isinstance(body, dict):
            raise RequestError("body", f"expected a JSON object with one of {formats}")
        for key in body:
            if key not in (*DATA_KEYS, PARAMS_KEY):
                raise _unknown(key, "key", [*DATA_KEYS, PARAMS_KEY])
        data_keys = [key for key in DATA_KEYS if key in body]
        if len(data_keys) != 1:
            given = f"got {' and '.join(data_keys)}" if data_keys else "got none"
            raise RequestError("body", f"send exactly one of {formats} ({given})")
        self._check_params(body.get(PARAMS_KEY))
        data_key = data_keys[0]
        data = body[data_key]
        if isinstance(data, dict) and data_key in ("inputs", "instances"):
            # A dict of columns: MLflow makes it one row of lists, which the model refuses
            # with its own message; only its keys are checked here.
            self._check_columns(data)
            return data_key
        rows = self._rows(data_key, data)
        for index, row in enumerate(rows):
            self._check_columns(row)
            self._check_values(row, f"row {index}: " if len(rows) > 1 else "")
        return data_key

    def _check_params(self, params: Any) -> None:
        if params is None:
            return
        if not isinstance(params, dict):
            raise RequestError(PARAMS_KEY, f"expected an object, got {_type_name(params)}")
        for name, value in params.items():
            field = f"{PARAMS_KEY}.{name}"
            if name not in self.params:
                raise _unknown(field, "param", list(self.params))
            types, wanted = _PARAM_TYPES.get(self.params[name], ((object,), "any value"))
            # JSON true/false are Python bools, which are also integers: not a number here.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise RequestError(field, f"expected {wanted}, got {value!r}")

    def _rows(self, data_key: str, data: Any) -> list[dict[str, Any]]:
        """The request's rows as {column: value}; a dict of columns (`inputs`) as one row."""
        if data_key == "dataframe_split":
            if not isinstance(data, dict):
                raise RequestError(data_key, "expected an object with columns and data")
            for key in data:
                if key not in ("columns", "data", "index"):
                    raise _unknown(f"{data_key}.{key}", "key", ["columns", "data", "index"])
            columns, values = data.get("columns"), data.get("data")
            if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
                raise RequestError(f"{data_key}.columns", "expected a list of column names")
            if not isinstance(values, list) or not all(isinstance(v, list) for v in values):
                raise RequestError(f"{data_key}.data", "expected a list of rows (lists)")
            for index, row in enumerate(values):
                if len(row) != len(columns):
                    raise RequestError(
                        f"{data_key}.data[{index}]",
                        f"{len(row)} values for {len(columns)} columns",
                    )
            return [dict(zip(columns, row, strict=True)) for row in values]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise RequestError(data_key, "expected a list of row objects")
        return data

    def _check_columns(self, row: Mapping[str, Any]) -> None:
        for column in row:
            if column not in self.columns:
                raise _unknown(column, "column", list(self.columns))

    def _check_values(self, row: Mapping[str, Any], where: str) -> None:
        for column in self.required:
            if column not in row:
                raise RequestError(
                    f"{where}{column}", f"missing; required: {', '.join(self.required)}"
                )
        for column in self.string_columns:
            value = row.get(column)
            if value is not None and not isinstance(value, str):
                raise RequestError(
                    f"{where}{column}", f"expected a string, got {_type_name(value)}"
                )
        for column in self.number_list_columns:
            value = row.get(column)
            numbers_only = isinstance(value, list) and all(
                isinstance(x, numbers.Real) and not isinstance(x, bool) for x in value
            )
            if value is not None and not numbers_only:
                raise RequestError(f"{where}{column}", "expected a list of numbers")


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


def painted_region(mask: PIL.Image.Image) -> np.ndarray:
    """Where a mask paints: its pixels >= 128, as the pipeline binarises it."""
    return np.asarray(mask.convert("L")) >= 128


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
