"""`CameoInpaintModel`: `CharacterInpaintPipeline` as an MLflow pyfunc model.

`load_context` rebuilds the pipeline from the logged checkpoint with the face analyzer, pose
extractor and body encoder of the profile the model was logged for. `predict` takes one row per
image (see `serving.schema`), checks every row before computing any, and returns the inpainted
image, the pose drawing that conditioned it, the identity score and the seconds it took.

Errors a client can fix become MLflow's INVALID_PARAMETER_VALUE (HTTP 400) with a one-line
message that starts with the field; anything else becomes INTERNAL_ERROR (500).

Behind the scoring server (`serving.endpoint`), the request being computed can be cancelled (its
timeout passed, its client went away): `RequestStop` stops its work at the next module of its
networks or the next stage, with `RequestCancelled`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import PIL.Image
import torch

from perception.faces import identity_score
from perception.params import FacesParams, PosesParams
from perception.priors import Priors
from serving.artifacts import CHECKPOINT_ARTIFACT, SETTINGS_METADATA
from serving.manifest import check_base_models
from serving.schema import (
    IMAGE_COLUMNS,
    OUTPUT_COLUMNS,
    InferenceParams,
    RequestError,
    ServingConfig,
    decode_embedding,
    decode_image,
    encode_image,
    painted_region,
)
from serving.served import (
    CURRENT_REQUEST,
    SERVED_MODEL_ENV,
    RequestCancelled,
    ServedModel,
    ServedRequest,
)
from training.acceleration import REPEATED_BLOCKS
from training.model import FACE_EMBED_DIM, components_from_checkpoint
from training.params import Acceleration
from training.pipeline import CharacterInpaintPipeline, PaintSettings


class RequestStop:
    """Stops the work on a served request soon after its cancellation (timeout passed, client
    gone), whatever stage it is in:

    - between stages: `check` before the face, pose, painting and identity-score stages;
    - after each denoising step: as the pipeline's `callback_on_step_end` it counts the step
      for the request's log line and, once the request is cancelled, sets the pipeline's
      `interrupt` (diffusers' own stop);
    - inside a step, and inside the text, body and VAE encoders and the decoder: while
      `inside_networks` is entered, a forward pre-hook on the networks' modules raises
      `RequestCancelled`.

    The work is stopped from inside the worker's model thread, not by replacing the worker
    process when it overruns: a new process would load the model again (minutes for `full`)
    before the next request could start. Raising from a hook unwinds the pipeline call safely:
    it keeps nothing across calls that a half-done call leaves wrong (adapter scales and
    timesteps are set per call, the VAE's upcast is undone in a `finally`). What no hook
    stops is the one operation in progress when the request is cancelled: milliseconds on a
    GPU; on CPU, in the tiny profile, up to about a second at 1024x1024 and more beyond (the
    docs/serving.md has the figures). The face and pose stages run outside the
    networks (ONNX Runtime, scikit-image) and are bracketed by `check`.

    Outside the scoring server (in-process `predict`) there is no request: nothing cancels, and
    it does nothing."""

    def __init__(self, request: ServedRequest | None) -> None:
        self.request = request

    def check(self) -> None:
        if self.request is not None:
            self.request.check()

    def __call__(
        self,
        pipe: CharacterInpaintPipeline,
        step: int,
        timestep: torch.Tensor,
        tensors: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        if self.request is not None:
            self.request.steps += 1
            if self.request.should_stop():
                pipe._interrupt = True
        return tensors

    def _stop_if_cancelled(self, module: torch.nn.Module, args: tuple) -> None:
        self.check()

    @contextmanager
    def inside_networks(
        self, pipe: CharacterInpaintPipeline, acceleration: Acceleration
    ) -> Iterator[None]:
        """Hooks on every module of the pipeline's networks while entered. With
        `acceleration.compile` the compiled blocks (`training.acceleration.REPEATED_BLOCKS`)
        get none, inside or on them: dynamo would trace the hook into their graphs."""
        if self.request is None:
            yield
            return
        compiled = REPEATED_BLOCKS if acceleration.compile else ()
        networks = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
        handles = [
            module.register_forward_pre_hook(self._stop_if_cancelled)
            for network in networks
            for module in _modules_outside(network, compiled)
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def _modules_outside(
    module: torch.nn.Module, blocks: tuple[type, ...]
) -> Iterator[torch.nn.Module]:
    """`module` and its submodules, leaving out `blocks` and everything inside them."""
    if isinstance(module, blocks):
        return
    yield module
    for child in module.children():
        yield from _modules_outside(child, blocks)


def build_pipeline(
    checkpoint: str | Path,
    priors: Priors,
    trust_remote_code: bool,
    acceleration: Acceleration,
) -> CharacterInpaintPipeline:
    """The inference pipeline of a checkpoint with the face analyzer and pose extractor of
    `priors`; `trust_remote_code` is params.yaml's `training.trust_remote_code` (see
    `training.model.load_body_encoder`). `full` runs in float16 on the GPU where there is one.
    `acceleration` is `serving.acceleration`; with its `compile` the pipeline is warmed up here,
    so the server pays the compile time before it answers /ping."""
    pipe = CharacterInpaintPipeline(
        **components_from_checkpoint(checkpoint, priors.models_dir, trust_remote_code),
        face_analyzer=priors.face_analyzer(),
        pose_extractor=priors.pose_extractor(),
    )
    pipe.set_progress_bar_config(disable=True)
    if priors.profile == "full" and torch.cuda.is_available():
        pipe.to("cuda", torch.float16)
    pipe.enable_acceleration(acceleration)
    if acceleration.compile:
        seconds = warm_up(pipe)
        logging.getLogger("serving").info("compiled the denoiser in %.1f s (warm-up)", seconds)
    return pipe


def warm_up(pipe: CharacterInpaintPipeline) -> float:
    """One painting of the U-Net's native size with guidance (a default request's shapes), on
    a blank scene; returns its seconds. Requests of other sizes compile their shapes on first
    use."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scene = PIL.Image.new("RGB", (size, size), (127, 127, 127))
    mask = PIL.Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    started = time.perf_counter()
    pipe(
        image=scene,
        mask_image=mask,
        prompt="a person",
        reference_image=scene,
        face_embedding=np.zeros(FACE_EMBED_DIM, dtype=np.float32),
        pose_image=scene,
        num_inference_steps=1,
        guidance_scale=PaintSettings().guidance_scale,
    )
    return time.perf_counter() - started


@dataclass
class InpaintInputs:
    """One checked request row."""

    base: PIL.Image.Image
    mask: PIL.Image.Image
    inside: np.ndarray  # the mask binarised as the pipeline does (>= 128)
    reference: PIL.Image.Image
    prompt: str
    negative_prompt: str | None
    pose: PIL.Image.Image | None
    face_embedding: np.ndarray | None


def _given(row: Mapping[str, Any], column: str) -> Any:
    """The cell's value, or None where the column is absent or the cell empty (NaN/NA)."""
    value = row.get(column)
    if value is None or (np.ndim(value) == 0 and pd.isna(value)):
        return None
    return value


def _text(row: Mapping[str, Any], column: str) -> str | None:
    value = _given(row, column)
    if value is not None and not isinstance(value, str):
        raise RequestError(column, f"expected a string, got {type(value).__name__}")
    return value


def decode_row(row: Mapping[str, Any], config: ServingConfig) -> InpaintInputs:
    """Decode and check one request row; raise `RequestError` naming the field at fault."""
    images = {}
    for column in IMAGE_COLUMNS:
        value = _given(row, column)
        if isinstance(value, (list, tuple, np.ndarray)):
            raise RequestError(
                column,
                "expected one base64 string per row, got a list: send `inputs` as a list of "
                "row objects, or use dataframe_split / dataframe_records",
            )
        if value is not None:
            images[column] = decode_image(column, value, config.max_pixels, config.min_side)
    for column in ("base", "mask", "reference"):
        if column not in images:
            raise RequestError(column, "missing")
    base, mask = images["base"].convert("RGB"), images["mask"].convert("L")
    size = f"the base's {base.width}x{base.height}"
    if mask.size != base.size:
        raise RequestError("mask", f"{mask.width}x{mask.height} differs from {size}")
    inside = painted_region(mask)
    if not inside.any():
        raise RequestError("mask", "empty: no pixel is >= 128 (white marks the region to paint)")
    pose = images.get("pose")
    if pose is not None and pose.size != base.size:
        raise RequestError("pose", f"{pose.width}x{pose.height} differs from {size}")
    prompt = _text(row, "prompt")
    if not prompt or not prompt.strip():
        raise RequestError("prompt", "missing or empty")
    embedding = _given(row, "face_embedding")
    if embedding is not None:
        embedding = decode_embedding("face_embedding", embedding)
    return InpaintInputs(
        base=base,
        mask=mask,
        inside=inside,
        reference=images["reference"].convert("RGB"),
        prompt=prompt,
        negative_prompt=_text(row, "negative_prompt"),
        pose=pose.convert("RGB") if pose is not None else None,
        face_embedding=embedding,
    )


def _invalid(error: RequestError, row: int, rows: int) -> mlflow.MlflowException:
    prefix = f"row {row}: " if rows > 1 else ""
    return mlflow.MlflowException.invalid_parameter_value(f"{prefix}{error}")


def logged_settings(context: mlflow.pyfunc.PythonModelContext) -> dict[str, Any]:
    """What `serving.registry.log_model` logged for loading: the metadata's `served_settings`
    (read from the MLmodel file above the checkpoint artifact), or, for versions logged before,
    the `model_config` (MLflow also logs that as run params, one per setting)."""
    if context.model_config:
        return dict(context.model_config)
    artifact = Path(context.artifacts[CHECKPOINT_ARTIFACT])
    model_dir = next(folder for folder in artifact.parents if (folder / "MLmodel").is_file())
    return mlflow.models.Model.load(str(model_dir)).metadata[SETTINGS_METADATA]


class CameoInpaintModel(mlflow.pyfunc.PythonModel):
    """The served model. Its settings (`logged_settings`) hold the profile, the `faces`,
    `poses` and `serving` sections of params.yaml and, for `full`, the manifest of the base
    weights it expects under `$CAMEO_MODELS`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = logged_settings(context)
        self.profile = config["profile"]
        self.serving = ServingConfig.from_params(config["serving"])
        models_dir = None
        if self.profile == "full":
            from perception.models import models_dir as resolve_models_dir

            models_dir = resolve_models_dir()
            check_base_models(models_dir, config["base_models"], self.serving.verify_checksums)
        priors = Priors(
            self.profile,
            faces=FacesParams.model_validate(config["faces"]),
            poses=PosesParams.model_validate(config["poses"]),
            models_dir=models_dir,
        )
        self.priors = priors
        self.pipeline = build_pipeline(
            context.artifacts[CHECKPOINT_ARTIFACT],
            priors,
            config["trust_remote_code"],
            self.serving.acceleration,
        )
        # Behind `serving.app`, every response names the model version it came from.
        served = os.environ.get(SERVED_MODEL_ENV)
        self.model_version = ServedModel(**json.loads(served)).label if served else None
        # The pipeline (scheduler state, adapter scales) serves one call at a time: the scoring
        # server computes in one thread per worker, in-process callers may share the model.
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The profile and the inference params with their defaults and ranges (/version)."""
        return {"profile": self.profile, "params": self.serving.to_dict()["params"]}

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        records = model_input.to_dict("records")
        try:
            limit = self.serving.max_rows
            if not 1 <= len(records) <= limit:
                raise RequestError("rows", f"{len(records)} rows; send 1 to {limit} per request")
            inference = self.serving.inference_params(params)
        except RequestError as e:
            raise _invalid(e, 0, 1) from None
        rows = []
        for index, record in enumerate(records):
            try:
                rows.append(decode_row(record, self.serving))
            except RequestError as e:
                raise _invalid(e, index, len(records)) from None
        stop = RequestStop(CURRENT_REQUEST.get())
        with self._lock:
            try:
                with stop.inside_networks(self.pipeline, self.serving.acceleration):
                    results = self._run(rows, inference, stop)
                return pd.DataFrame(results, columns=OUTPUT_COLUMNS)
            except RequestCancelled as e:
                # Its traceback holds the stopped call's frames and their tensors (30 MB at
                # 512x512) for as long as the exception lives: the server keeps it with the
                # request until the garbage collector breaks their cycle.
                raise e.with_traceback(None) from None
            except mlflow.MlflowException:
                raise
            except Exception as e:
                raise mlflow.MlflowException(
                    f"inference failed: {type(e).__name__}: {e}"
                ) from e  # INTERNAL_ERROR: 500

    def _run(
        self, rows: list[InpaintInputs], inference: InferenceParams, stop: RequestStop
    ) -> list[dict[str, Any]]:
        pipe = self.pipeline
        # Conditions of every row first: a row without a face or pose fails the request before
        # any sampling is spent on the others.
        conditions = []
        for index, row in enumerate(rows):
            row_started = time.perf_counter()
            try:
                embedding, dropped = row.face_embedding, False
                if embedding is None:
                    stop.check()
                    try:
                        reference = np.asarray(row.reference.convert("RGB"))
                        embedding, dropped = self.priors.reference_face(reference)
                    except ValueError as e:
                        raise RequestError(
                            "reference",
                            f"{e}; send a reference whose face is visible, or its face_embedding",
                        ) from None
                # With the ControlNet off no pose conditions the output: none is returned.
                pose = row.pose if inference.controlnet_scale != 0 else None
                if pose is None and inference.controlnet_scale != 0:
                    stop.check()
                    try:
                        pose = PIL.Image.fromarray(pipe.extract_pose(row.base, row.inside))
                    except ValueError as e:
                        raise RequestError(
                            "mask", f"{e}; send a pose image, or set params.controlnet_scale to 0"
                        ) from None
            except RequestError as e:
                raise _invalid(e, index, len(rows)) from None
            conditions.append((embedding, dropped, pose, time.perf_counter() - row_started))

        results = []
        for row, (embedding, dropped, pose, seconds) in zip(rows, conditions, strict=True):
            stop.check()
            row_started = time.perf_counter()
            settings = PaintSettings(
                face_scale=inference.face_scale,
                body_scale=inference.body_scale,
                controlnet_scale=inference.controlnet_scale,
                guidance_scale=inference.guidance_scale,
                num_inference_steps=inference.num_inference_steps,
                seed=inference.seed,
            )
            output = pipe.paint(
                row.base,
                row.mask,
                row.prompt,
                row.reference,
                embedding,
                pose,
                settings,
                negative_prompt=row.negative_prompt,
                callback_on_step_end=stop,
            )
            stop.check()
            # A dropped face (an anime reference) gives nothing to compare with.
            score = (
                None
                if dropped
                else identity_score(pipe.face_analyzer, embedding, output, row.inside)
            )
            returned_pose = pose if inference.return_pose else None
            results.append(
                {
                    "image": encode_image(output, inference.output_format),
                    "pose": encode_image(returned_pose) if returned_pose is not None else None,
                    "identity_score": score,
                    "seconds": seconds + time.perf_counter() - row_started,
                    "model_version": self.model_version,
                }
            )
        return results
