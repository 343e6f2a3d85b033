"""ConsiStory's GPU cost (`python -m bench.synthetic_gpu`, `make gpu-window PART=synthetic`):
one batch of a synthetic character at the `full` params (`synthetic`: images per batch, size,
steps, guidance), drawn with the method off and on, on a stand-in SDXL text-to-image pipeline:
the `sdxl` config's architecture with a 4-channel U-Net and random weights, in bfloat16 (speed
does not depend on the weights' values; consistency does: `bench/synthetic.py --profile full`
measures it with the real weights). Each setting is drawn once untimed at 2 steps (CUDA's
start, cuDNN's choices), then timed at the params' steps. Figures: seconds per batch, per image
and denoising step, and the GPU seconds of drawing per triplet of a kept batch.

Without CUDA it writes the section as pending; `--smoke` draws the tiny profile's batch on the
CPU (tests), into `--out` only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.report import PARAMS, write_section
from bench.window import Outcomes, Window, run_part
from orchestration.params import load_params
from perception.descriptions import TemplateDescriber, describe_characters
from training.consistory import draw_batch, random_text_to_image
from training.model.config import SDXL, TINY
from training.params import SyntheticParams

SECTION = "Synthetic characters (GPU): drawing cost"
SETTINGS = {"independent (method off)": False, "ConsiStory": True}


def measure(
    params: SyntheticParams, smoke: bool, window: Window, outcomes: Outcomes
) -> dict[str, float]:
    """Seconds to draw one batch in each setting that ran."""
    cuda = torch.cuda.is_available() and not smoke
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    pipe = random_text_to_image(TINY if smoke else SDXL).to(device, dtype)
    (character,) = describe_characters(params.seed, 1, ("photo",), TemplateDescriber())
    seconds = {}
    for name, consistent in SETTINGS.items():
        drawing = params.model_copy(update={"consistent": consistent})

        def timed(drawing: SyntheticParams = drawing, name: str = name) -> None:
            draw_batch(pipe, character, drawing.model_copy(update={"steps": 2}))
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            draw_batch(pipe, character, drawing)
            if cuda:
                torch.cuda.synchronize()
            seconds[name] = time.perf_counter() - start
            window.figure(f"synthetic {name}: {seconds[name]:.2f} s per batch")

        estimate = 3 * next(iter(seconds.values()), 0.0)  # ConsiStory: about twice the first
        run_part(name, estimate, window, outcomes, timed)
    return seconds


def render(params: SyntheticParams, seconds: dict[str, float], device: str, outcomes) -> str:
    triplets = params.batch_size - 1
    rows = [
        f"| {name} | {seconds[name]:.2f} | "
        f"{seconds[name] / (params.batch_size * params.steps) * 1e3:.0f} | "
        f"{seconds[name] / triplets:.1f} |"
        if name in seconds
        else f"| {name} | pending | pending | pending |"
        for name in SETTINGS
    ]
    not_run = {**outcomes.skipped, **outcomes.failed}
    off, on = SETTINGS
    ratio = (
        f"\n\nConsiStory draws a batch in {seconds[on] / seconds[off]:.2f}x the time of "
        "independent images."
        if len(seconds) == len(SETTINGS)
        else ""
    )
    return (
        f"`python -m bench.synthetic_gpu` on {device}: a stand-in SDXL text-to-image pipeline "
        f"(random weights), batches of {params.batch_size} images at {params.size} px, "
        f"{params.steps} steps, guidance {params.guidance_scale} (the `full` params).\n\n"
        "| setting | s per batch | ms per image and step | GPU-s per triplet of a kept batch |\n"
        "|---|---|---|---|\n" + "\n".join(rows) + ratio
        + "".join(f"\n\nNot run: {name}: {why}" for name, why in not_run.items())
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the tiny profile's batch on CPU")
    parser.add_argument("--out", type=Path, help="write the section and figures here")
    parser.add_argument("--budget-s", type=float, help="skip what would not fit")
    parser.add_argument("--fail-part", help="rehearsal: make this part raise")
    parser.add_argument("--no-compile", help="why torch.compile cannot run (nothing compiles)")
    args = parser.parse_args(argv)
    params = load_params(PARAMS, "tiny" if args.smoke else "full").synthetic
    figures = args.out / "synthetic_figures.txt" if args.out else None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    window, outcomes = Window(args.budget_s, figures, args.fail_part), Outcomes()
    if torch.cuda.is_available() or args.smoke:
        seconds = measure(params, args.smoke, window, outcomes)
        device = "CPU (smoke: tiny sizes)" if args.smoke else torch.cuda.get_device_name()
    else:
        seconds, device = {}, "no CUDA device (pending)"
    report = args.out / "BENCHMARKS.md" if args.out else None
    if report is None and args.smoke:
        return
    write_section(SECTION, render(params, seconds, device, outcomes), *([report] if report else []))


if __name__ == "__main__":
    main()
