"""Calling the model: request rows, the HTTP client, in-process prediction, demo inputs.

```python
from serving.client import InpaintClient, make_row

row = make_row("base.png", "mask.png", "reference.jpg", "a girl in an orange top ...")
[result] = InpaintClient("http://127.0.0.1:5000").predict([row], {"seed": 7})
result.image.save("out.png")
```
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from serving.schema import encode_image, image_from_base64
from serving.served import SERVING_TOKEN_ENV

ImageLike = str | Path | PIL.Image.Image | np.ndarray
REQUEST_FORMATS = ("dataframe_split", "dataframe_records", "inputs")


def encode(image: ImageLike) -> str:
    """Base64 of an image: a file's bytes as they are (PNG or JPEG), an in-memory image as PNG."""
    if isinstance(image, (str, Path)):
        return base64.b64encode(Path(image).read_bytes()).decode("ascii")
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    return encode_image(image)


def make_row(
    base: ImageLike,
    mask: ImageLike,
    reference: ImageLike,
    prompt: str,
    negative_prompt: str | None = None,
    pose: ImageLike | None = None,
    face_embedding: Sequence[float] | np.ndarray | None = None,
) -> dict[str, Any]:
    """One request row, as the model's signature names the columns."""
    row: dict[str, Any] = {
        "base": encode(base),
        "mask": encode(mask),
        "reference": encode(reference),
        "prompt": prompt,
    }
    if negative_prompt is not None:
        row["negative_prompt"] = negative_prompt
    if pose is not None:
        row["pose"] = encode(pose)
    if face_embedding is not None:
        row["face_embedding"] = [float(x) for x in np.asarray(face_embedding).reshape(-1)]
    return row


def request_body(
    rows: Sequence[Mapping[str, Any]],
    params: Mapping[str, Any] | None = None,
    request_format: str = "dataframe_split",
) -> dict[str, Any]:
    """The JSON body of POST /invocations in one of MLflow's formats (`inputs`: a list of row
    objects; MLflow turns a dict of columns into one row of lists)."""
    if request_format == "dataframe_split":
        columns = list(dict.fromkeys(key for row in rows for key in row))
        data = [[row.get(column) for column in columns] for row in rows]
        body: dict[str, Any] = {"dataframe_split": {"columns": columns, "data": data}}
    elif request_format in ("dataframe_records", "inputs"):
        body = {request_format: [dict(row) for row in rows]}
    else:
        raise ValueError(f"request_format must be one of {REQUEST_FORMATS}, not {request_format!r}")
    if params:
        body["params"] = dict(params)
    return body


@dataclass
class InpaintResult:
    """One response row, decoded."""

    image: PIL.Image.Image
    pose: PIL.Image.Image | None
    identity_score: float | None
    seconds: float
    model_version: str | None  # the served model, e.g. cameo-inpaint/3

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> InpaintResult:
        def given(value: Any) -> bool:
            return value is not None and not (isinstance(value, float) and np.isnan(value))

        return cls(
            image=image_from_base64(row["image"]),
            pose=image_from_base64(row["pose"]) if given(row.get("pose")) else None,
            identity_score=(
                float(row["identity_score"]) if given(row.get("identity_score")) else None
            ),
            seconds=float(row["seconds"]),
            model_version=row.get("model_version"),
        )


class ServingError(RuntimeError):
    """A non-200 answer of the scoring server: its status and the model's message."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after  # seconds, from a 503's Retry-After

    @classmethod
    def from_response(cls, response: Any) -> ServingError:
        retry_after = response.headers.get("Retry-After")
        return cls(
            response.status_code,
            error_message(response.text),
            int(retry_after) if retry_after and retry_after.isdigit() else None,
        )


def error_message(text: str) -> str:
    """The `message` of an error body (`serving.endpoint`: one line, the field first)."""
    try:
        return str(json.loads(text)["message"])
    except (ValueError, KeyError, TypeError):
        return text.strip()


class InpaintClient:
    """The HTTP endpoint of the scoring server (`cameo serve`, `make serve`)."""

    def __init__(self, url: str, timeout_s: float = 600.0, token: str | None = None) -> None:
        """`token`: the server's bearer token; default $CAMEO_SERVING_TOKEN, if set."""
        import requests

        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._session = requests.Session()
        token = token or os.environ.get(SERVING_TOKEN_ENV)
        if token:
            self._session.headers["Authorization"] = f"Bearer {token}"

    def ping(self) -> bool:
        import requests

        try:
            return self._session.get(f"{self.url}/ping", timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    def invoke(self, body: Mapping[str, Any] | str | bytes) -> Any:
        """POST a JSON body (a dict, or raw text as it is) to /invocations; the response."""
        data = body if isinstance(body, (str, bytes)) else json.dumps(body)
        return self._session.post(
            f"{self.url}/invocations",
            data=data,
            headers={"Content-Type": "application/json"},
            timeout=self.timeout_s,
        )

    def predict(
        self,
        rows: Sequence[Mapping[str, Any]],
        params: Mapping[str, Any] | None = None,
        request_format: str = "dataframe_split",
    ) -> list[InpaintResult]:
        response = self.invoke(request_body(rows, params, request_format))
        if response.status_code != 200:
            raise ServingError.from_response(response)
        return [InpaintResult.from_row(row) for row in response.json()["predictions"]]

    def version(self) -> dict[str, Any]:
        """/version: the served model version, its profile and its inference params (defaults
        and ranges)."""
        response = self._session.get(f"{self.url}/version", timeout=10)
        if response.status_code != 200:
            raise ServingError.from_response(response)
        return response.json()


def predict_in_process(
    model: str | Any, rows: Sequence[Mapping[str, Any]], params: Mapping[str, Any] | None = None
) -> list[InpaintResult]:
    """The same prediction without a server: `model` is a model URI or a loaded pyfunc model."""
    import pandas as pd

    from training.tracking import load_pyfunc

    if isinstance(model, str):
        model = load_pyfunc(model)
    predictions = model.predict(pd.DataFrame(list(rows)), params=dict(params or {}))
    return [InpaintResult.from_row(row) for row in predictions.to_dict("records")]


def demo_inputs(
    width: int = 64, height: int | None = None
) -> tuple[PIL.Image.Image, PIL.Image.Image, PIL.Image.Image, str]:
    """A base image (`height` defaults to `width`), its mask, a reference with a face the tiny
    profile's detector finds (scikit-image's astronaut) and a prompt: by default the smallest
    complete request."""
    from skimage import data

    height = width if height is None else height
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], axis=-1)
    mask = np.zeros((height, width), np.uint8)
    mask[height // 8 : 7 * height // 8, width // 4 : 3 * width // 4] = 255
    reference = PIL.Image.fromarray(data.astronaut()).resize((160, 160))
    prompt = "an astronaut in a white suit in front of a flag, photographed from the waist up"
    return PIL.Image.fromarray(base.astype(np.uint8)), PIL.Image.fromarray(mask), reference, prompt


def triplet_inputs(
    data_dir: str | Path = "data", max_side: int | None = None
) -> tuple[PIL.Image.Image, PIL.Image.Image, PIL.Image.Image, str]:
    """The first triplet of the dataset under `data_dir` (what `make demo` builds) as a request:
    its target frame as the base, the target's mask, the reference and the prompt; base and
    mask scaled down to `max_side` when given. FileNotFoundError without a dataset."""
    import pandas as pd

    from core.layout import DataLayout

    triplets = DataLayout.from_env(data_dir).triplets_dir
    manifest = triplets / "manifest.parquet"
    if not manifest.is_file():
        raise FileNotFoundError(f"no dataset: {manifest} does not exist (make demo builds one)")
    triplet = pd.read_parquet(manifest).iloc[0]
    base = PIL.Image.open(triplets / triplet["target"]).convert("RGB")
    mask = PIL.Image.open(triplets / triplet["target_mask"]).convert("L")
    reference = PIL.Image.open(triplets / triplet["reference"]).convert("RGB")
    if max_side is not None and max(base.size) > max_side:
        scale = max_side / max(base.size)
        size = (round(base.width * scale), round(base.height * scale))
        base = base.resize(size, PIL.Image.Resampling.LANCZOS)
        mask = mask.resize(size, PIL.Image.Resampling.NEAREST)
    return base, mask, reference, str(triplet["prompt"])
