"""Images per second of the dataset's GPU stages at full size, random weights, on one CUDA GPU.

Run from the repository root:

    python -m bench.dataset_gpu           # writes "Dataset stages (GPU)" and the capacity plan
    python -m bench.dataset_gpu --smoke   # tiny sizes on CPU: checks this code, writes nothing
                                          # unless --report names a file (tests do)

An accelerator machine with torch and transformers but without the dataset stages' other
libraries measures and saves the figures, and the development machine writes the sections:

    python -m bench.dataset_gpu --figures figures.json --no-report     # on the GPU machine
    python -m bench.dataset_gpu --from-figures figures.json            # here

`make gpu-window PART=dataset` runs it in a GPU window (`--out`, `--budget-s`): each figure
printed and kept as it is measured, a part that would not fit skipped, a part that fails
costing only its rows; OUT holds the section and `dataset_figures.json` for `--from-figures`.

Every run counts each network's parameters and FLOPs per item at full size on the meta device
(no memory, no GPU needed): those figures are measured on any machine. Throughput is measured
only on CUDA; without a GPU its column says pending, and the capacity plan
(`bench/capacity.py`) falls back to estimates from the counted FLOPs, labelled as such.

What runs (`bench/standins.py` says what stands in for what):

- faces: the SCRFD-10GF layout on 640x640 letterboxed frames (fp16), `faces.batch_size` frames
  a call; ArcFace IResNet-100 on 112x112 crops (fp16), 64 faces a call;
- masks: the stage's own `SamSegmenter.segment_batch` with SAM ViT-H as the stage runs it
  (fp32: processor, image encoder, per-prompt decoder, mask upscaling) on 1280x720 frames,
  `masks.batch_size` frames a call; and the image encoder alone in bf16;
- poses: the RTMW-x layout on 384x288 crops (fp16), `poses.batch_size` crops a call;
- captions: InternVL2-26B's sizes in bf16 through `generate`: `captions.batch_size` images of
  `--tiles` 448-px tiles (256 tokens each), the prompt template's length in text tokens,
  `--new-tokens` generated (EOS suppressed so every caption has that length); and the vision
  tower alone (tiles per second).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from bench import standins
from bench.dataset_gpu_figures import PROMPT_TOKENS, Figure
from bench.window import Outcomes, Window, run_part
from core.params import apply_profile
from perception.params import CaptionsParams, FacesParams, MasksParams, PosesParams

SECTION = "Dataset stages (GPU)"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
FRAME = (720, 1280)  # (height, width) of a frame that SAM sees


def count(build: Callable[[], torch.nn.Module], run: Callable[[Any], Any]) -> tuple[int, int, int]:
    """(parameters, weight bytes, FLOPs of `run(model)`) of the model built on the meta device."""
    with torch.device("meta"):
        model = build()
    with FlopCounterMode(display=False) as counter:
        run(model)
    params = sum(p.numel() for p in model.parameters())
    return (
        params,
        sum(p.numel() * p.element_size() for p in model.parameters()),
        counter.get_total_flops(),
    )


def throughput(step: Callable[[], Any], items: int, repeats: int, warmup: int) -> float:
    """Items per second of `step` (which handles `items`), after `warmup` untimed calls."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    sync()
    return items * repeats / (time.perf_counter() - start)


@dataclass
class Run:
    scale: standins.Scale
    device: str
    measure: bool
    repeats: int
    warmup: int
    tiles: int
    new_tokens: int

    @property
    def half(self) -> torch.dtype:
        return torch.float16 if self.device == "cuda" else torch.float32

    @property
    def bf16(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32


def convnet(
    run: Run, key: str, stage: str, network: str, unit: str, build, shape: tuple, batch: int
) -> Figure:
    """A conv network's figure: counted at batch 1, timed at `batch` in fp16 (CUDA)."""
    params, nbytes, flops = count(
        lambda: build(run.scale).eval(), lambda m: m(torch.empty(1, *shape, device="meta"))
    )
    figure = Figure(key, stage, network, unit, batch, params, nbytes // 2, flops / 1e9)
    if run.measure:
        model = build(run.scale).eval().to(run.device, run.half)
        x = torch.randn(batch, *shape, device=run.device, dtype=run.half)
        with torch.inference_mode():
            figure.per_second = throughput(lambda: model(x), batch, run.repeats, run.warmup)
    return figure


def sam_segmenter(run: Run, dtype: str):
    """The stage's `SamSegmenter` around a random SAM of the run's scale, at `dtype`."""
    from transformers import SamImageProcessorPil, SamModel, SamProcessor

    from perception.segmentation import SamSegmenter

    if run.scale == "smoke":
        return SamSegmenter.tiny(dtype=dtype)
    segmenter = SamSegmenter.__new__(SamSegmenter)
    processor = SamProcessor(image_processor=SamImageProcessorPil())  # SAM's 1024-px input
    segmenter._bind(SamModel(standins.sam_config()), processor, run.device, dtype)
    return segmenter


def sam_figures(run: Run, batch: int, dtype: str) -> list[Figure]:
    """The masks stage as it runs (`masks.dtype`), and SAM's image encoder alone in bf16."""
    from transformers import SamModel

    config = standins.sam_config(run.scale)
    side = config.vision_config.image_size
    params, nbytes, flops = count(
        lambda: SamModel(config),
        lambda m: m.get_image_embeddings(torch.empty(1, 3, side, side, device="meta")),
    )
    stage = Figure(
        "sam",
        "masks",
        f"SAM ViT-H, the stage's segment_batch ({dtype})",
        "frame",
        batch,
        params,
        nbytes if dtype == "float32" else nbytes // 2,
        flops / 1e9,
        dtype=dtype,
    )
    encoder = Figure(
        "sam_encoder",
        "masks",
        "SAM ViT-H image encoder alone (bf16)",
        "frame",
        batch,
        params,
        nbytes // 2,
        flops / 1e9,
        dtype="bfloat16",
    )
    if run.measure:
        segmenter = sam_segmenter(run, dtype)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (*FRAME, 3), dtype=np.uint8) for _ in range(batch)]
        points = [(FRAME[1] / 2, FRAME[0] / 3)] * batch
        stage.per_second = throughput(
            lambda: segmenter.segment_batch(frames, points), batch, run.repeats, run.warmup
        )
        model = segmenter.model.to(run.bf16)
        pixels = torch.randn(batch, 3, side, side, device=run.device, dtype=run.bf16)
        encoder.per_second = throughput(
            lambda: model.get_image_embeddings(pixels), batch, run.repeats, run.warmup
        )
        del segmenter, model
    return [stage, encoder]


def _caption_inputs(
    config, batch: int, tiles: int, device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`batch` prompts, each the template's text around one image of `tiles` tiles."""
    image_tokens = tiles * config.image_seq_length
    text = PROMPT_TOKENS if config.text_config.vocab_size > 1000 else 8
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.image_token_id, (batch, text + image_tokens), generator=generator)
    ids[:, 4 : 4 + image_tokens] = config.image_token_id
    side = _tile_side(config)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids, device=device),
        "pixel_values": torch.randn(batch * tiles, 3, side, side, generator=generator).to(
            device, dtype
        ),
    }


def _tile_side(config) -> int:
    side = config.vision_config.image_size
    return side[0] if isinstance(side, list | tuple) else side


def internvl_figures(run: Run, batch: int) -> list[Figure]:
    from transformers import InternVLForConditionalGeneration

    config = standins.internvl2_26b_config(run.scale)
    side = _tile_side(config)

    def vision(m):
        return m.model.get_image_features(pixel_values=torch.empty(1, 3, side, side, device="meta"))

    params, nbytes, vision_flops = count(lambda: InternVLForConditionalGeneration(config), vision)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    vision_params = sum(p.numel() for p in model.model.vision_tower.parameters())
    language_params = sum(p.numel() for p in model.model.language_model.parameters())
    # A generated or prefilled token costs 2 FLOPs per language weight (attention aside).
    tokens = PROMPT_TOKENS + run.tiles * config.image_seq_length + run.new_tokens
    caption_gflop = (run.tiles * vision_flops + 2 * language_params * tokens) / 1e9
    caption = Figure(
        "caption",
        "captions",
        f"InternVL2-26B sizes, generate ({run.tiles} tiles, {run.new_tokens} new tokens; bf16)",
        "image",
        batch,
        params,
        nbytes // 2,
        caption_gflop,
        language_params=language_params,
        new_tokens=run.new_tokens,
        tiles=run.tiles,
    )
    tower = Figure(
        "vision",
        "captions",
        "InternViT-6B-448px vision tower alone (bf16)",
        "tile",
        4 * run.tiles,
        vision_params,
        2 * vision_params,
        vision_flops / 1e9,
    )
    if run.measure:
        torch.set_default_dtype(run.bf16)
        try:
            with torch.device(run.device):
                model = InternVLForConditionalGeneration(config).eval()
        finally:
            torch.set_default_dtype(torch.float32)
        inputs = _caption_inputs(config, batch, run.tiles, run.device, run.bf16)
        new = run.new_tokens

        def generate() -> None:
            with torch.inference_mode():
                model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False)

        caption.per_second = throughput(generate, batch, max(run.repeats // 4, 1), 1)
        pixels = torch.randn(tower.batch, 3, side, side, device=run.device, dtype=run.bf16)
        with torch.inference_mode():
            tower.per_second = throughput(
                lambda: model.model.get_image_features(pixel_values=pixels),
                tower.batch,
                run.repeats,
                run.warmup,
            )
        del model
    return [caption, tower]


def full_profile_params() -> tuple[FacesParams, MasksParams, PosesParams, CaptionsParams]:
    """params.yaml's perception sections in the full profile, read without the rest of the
    project (an accelerator machine may have only torch and transformers)."""
    raw, _ = apply_profile(yaml.safe_load(PARAMS.read_text()), "full")
    return (
        FacesParams.model_validate(raw["faces"]),
        MasksParams.model_validate(raw["masks"]),
        PosesParams.model_validate(raw["poses"]),
        CaptionsParams.model_validate(raw["captions"]),
    )


# Seconds each part takes on an H100 at full size (its random weights' allocation included),
# rounded up: what the window's budget is checked against. A smoke run takes about 1 s each.
ESTIMATE_S = {"detector": 20, "recogniser": 20, "sam": 90, "pose": 20, "caption": 240}


def measure(
    run: Run, window: Window | None = None, outcomes: Outcomes | None = None
) -> list[Figure]:
    """Every stage's figures; `params.yaml`'s full profile gives the batch sizes. With a
    `window` (`make gpu-window PART=dataset`), part by part within its budget: each figure is
    kept and printed when measured, a part skipped or failed is in `outcomes`."""
    faces, masks, poses, captions = full_profile_params()
    parts: dict[str, Callable[[], list[Figure]]] = {
        "detector": lambda: [
            convnet(run, "detector", "faces", "SCRFD-10GF layout, detector (fp16)", "frame",
                    standins.ScrfdLike, (3, 640, 640), faces.batch_size)
        ],
        "recogniser": lambda: [
            convnet(run, "recogniser", "faces", "ArcFace IResNet-100, recogniser (fp16)", "face",
                    standins.arcface_r100, (3, 112, 112), 64)
        ],
        "sam": lambda: sam_figures(run, masks.batch_size, masks.dtype),
        "pose": lambda: [
            convnet(run, "pose", "poses", "RTMW-x layout, 384x288 (fp16)", "crop",
                    standins.RtmwLike, (3, *standins.POSE_INPUT), poses.batch_size)
        ],
        "caption": lambda: internvl_figures(run, captions.batch_size),
    }  # fmt: skip
    figures: list[Figure] = []
    outcomes = outcomes if outcomes is not None else Outcomes()
    for name, part in parts.items():
        if window is None:
            figures.extend(part())
            continue

        def measured(part: Callable[[], list[Figure]] = part, window: Window = window) -> None:
            for figure in part():
                figures.append(figure)
                window.figure(figure_line(figure))

        estimate = 1 if run.scale == "smoke" else ESTIMATE_S[name]
        run_part(name, estimate, window, outcomes, measured)
    if run.device == "cuda":
        torch.cuda.empty_cache()
    return figures


def figure_line(figure: Figure) -> str:
    speed = "not measured" if figure.per_second is None else f"{figure.per_second:,.1f}/s"
    return f"{figure.stage}: {figure.network}: {speed} ({figure.unit}s, batch {figure.batch})"


def render(
    figures: list[Figure], run: Run, device_name: str, outcomes: Outcomes | None = None
) -> str:
    rows = []
    for f in figures:
        if f.per_second is None:
            speed = "pending: no GPU in this run"
        else:  # a smoke run times tiny models on CPU: it checks the code, it is no throughput
            speed = f"{f.per_second:,.1f} ({'measured' if run.device == 'cuda' else 'smoke'})"
        rows.append(
            f"| {f.stage} | {f.network} | {f.unit} | {f.batch} | {f.params / 1e6:,.1f} | "
            f"{f.weight_bytes / 1e9:.2f} | {f.gflop_per_item:,.1f} | {speed} |"
        )
    where = (
        f"on {device_name}"
        if run.measure
        else "throughput not measured: no CUDA device in this run (`python -m bench.dataset_gpu` "
        "on a CUDA machine measures it and rewrites this section and the capacity plan)"
    )
    return (
        f"Full-size architectures with random weights (`bench/standins.py` says what stands in "
        f"for what), {where}. Parameters, weight bytes (in the dtype the row runs) and FLOPs per "
        f"item are counted on the meta device (`torch.utils.flop_counter`; a multiply-add is 2 "
        f"FLOPs; the caption row: its tiles through the vision tower plus 2 FLOPs per language "
        f"weight per prompt and generated token, attention left out). Items per second: "
        f"{run.warmup} untimed calls, then the mean of {run.repeats} "
        f"(the caption row: a quarter as many).\n\n"
        "| stage | network | item | batch | parameters (M) | weights (GB) | GFLOP per item | "
        "items/s |\n|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + "\n"
        + "".join(
            f"\n- {kind}: {part}: {why}"
            for kind, said in (("skipped", outcomes.skipped), ("failed", outcomes.failed))
            if outcomes is not None
            for part, why in said.items()
        )
    )


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (tests)")
    parser.add_argument("--report", type=Path, help="default BENCHMARKS.md (none with --smoke)")
    parser.add_argument("--no-report", action="store_true", help="write no sections")
    parser.add_argument("--figures", type=Path, help="also save the figures as JSON here")
    parser.add_argument("--from-figures", type=Path, help="write the sections from saved figures")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=9, help="448-px tiles per captioned frame")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens per caption")
    # `make gpu-window PART=dataset` (bench/gpu_window.py) runs it with these.
    parser.add_argument("--out", type=Path, help="write the section, figures and lines here")
    parser.add_argument("--budget-s", type=float, help="skip the parts that would not fit")
    parser.add_argument("--fail-part", help="rehearsal: make this part raise")
    parser.add_argument("--no-compile", help="why torch.compile cannot run (nothing compiles here)")
    args = parser.parse_args(argv)
    window, outcomes = None, Outcomes()
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        args.report = args.report or args.out / "BENCHMARKS.md"
        args.figures = args.figures or args.out / "dataset_figures.json"
        window = Window(args.budget_s, args.out / "dataset_figures.txt", args.fail_part)
    if args.from_figures:
        saved = json.loads(args.from_figures.read_text())
        run, device_name = Run(**saved["run"]), saved["device"]
        figures = [Figure(**figure) for figure in saved["figures"]]
    else:
        cuda = torch.cuda.is_available() and not args.smoke
        run = Run(
            scale="smoke" if args.smoke else "full",
            device="cuda" if cuda else "cpu",
            measure=cuda or args.smoke,
            repeats=1 if args.smoke else args.repeats,
            warmup=0 if args.smoke else args.warmup,
            tiles=2 if args.smoke else args.tiles,
            new_tokens=2 if args.smoke else args.new_tokens,
        )
        if cuda:  # fp32 rows measure fp32 as the stages run it, not TF32
            torch.backends.cuda.matmul.allow_tf32 = False
        figures = measure(run, window, outcomes)
        device_name = (
            torch.cuda.get_device_name() if cuda else "CPU (smoke: tiny sizes, not throughput)"
        )
        if args.figures:
            saved = {
                "run": asdict(run),
                "device": device_name,
                "figures": [asdict(f) for f in figures],
            }
            args.figures.write_text(json.dumps(saved, indent=1))
    if args.no_report:
        return figures
    # The report's writer and the plan need the project's own libraries, the measuring does not.
    from bench import capacity
    from bench.report import REPORT, write_section

    report = args.report or (None if args.smoke else REPORT)
    if report is not None:
        title = f"{SECTION} (smoke)" if run.scale == "smoke" else SECTION
        write_section(title, render(figures, run, device_name, outcomes), report)
        if run.scale == "full":
            write_section(capacity.SECTION, capacity.plan(figures), report)
    return figures


if __name__ == "__main__":
    main()
