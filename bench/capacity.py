"""The capacity plan for the article's corpus, from `bench/dataset_gpu.py`'s figures.

Every number in the plan says where it comes from: measured (a throughput measured on a GPU,
bytes of files written here), counted (parameters and FLOPs of the architectures), or
estimated (an assumption, stated next to it). Without a measured throughput a stage's speed
is estimated from its counted FLOPs at an assumed share of the GPU's peak.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bench.dataset_gpu_figures import PROMPT_TOKENS, Figure
from bench.report import PARAMS
from orchestration.params import load_params
from training.params import SyntheticParams

SECTION = "Capacity plan: the article's corpus"

# The article's corpus (issue 23): 1,200 movies; a 2-hour movie at stride 50 gives about 3,500
# frames; up to a million character frames reach SAM, the pose model and the captioner.
MOVIES = 1200
FRAMES_PER_MOVIE = 3500
CHARACTER_FRAMES = 1_000_000
TRIPLETS = 80_000
FRAME_SIZE = (1080, 1920)  # (height, width) of a movie frame

# Assumptions (estimated), each used where said.
FACES_PER_FRAME = 1.5  # faces the recogniser embeds per frame (several people per shot)
PEAK_TFLOPS = {"half": 989.0, "fp32": 67.0}  # H100/H200 SXM dense bf16/fp16, fp32 (no TF32)
HBM_TBPS = 4.8  # H200; an H100 has 3.35
MFU = {"conv": 0.25, "vit": 0.40, "fp32": 0.60, "llm": 0.40, "hbm": 0.60}
CPU_CORES_PER_GPU = 12  # an 8-GPU node of 96+ cores
POD_START_S = 45.0  # step pod: schedule, container start (image cached), imports, CUDA init
LOAD_GBPS = 2.0  # weights read from a node-local disk or a fast PVC
FRAME_JPEG_MB = 0.35  # a 1920x1080 film frame at JPEG quality 95 (frames.jpeg_quality)
# Measured: one denoising step of the inpainting pipeline at 1024², CFG, bf16, one image, on an
# H100 (BENCHMARKS "Model (GPU)", 2026-11-26): SDXL's U-Net with the ControlNet, an upper
# bound for the text-to-image U-Net the synthetic characters are drawn with.
INPAINT_STEP_S = 0.132


# What grouping movies per pod takes, and whether an inference engine for InternVL2 installs
# beside the GPU lock: read from the code and from PyPI's metadata (2026-12-01), not measured.
NOTES = """
**Movies per step pod.** Where a step pod's fixed cost is over a tenth of its movie's work
(the last column above 1), movies should share a pod: one run over a range of movie partitions
(a `BackfillPolicy.multi_run(max_partitions_per_run=k)` on the asset), whose body loads the
models once and loops over `context.partition_keys`. Not implemented: every movie asset handles
one partition today (`assets/stage.py` `movie_asset`) and the movie sensor starts one run per
movie. Where a stage's CPU column is far below its GPU column (with the estimates above: faces
and poses), its pods are bound by their serial CPU side, and decoding and writing images on a
thread pool beside the batched GPU calls saves more than grouping (not implemented either).

**The faces table** keeps its two 512-d embeddings as lists of Python floats, which parquet
stores as float64: float32 columns would halve its size.

**SAM's precision** is `masks.dtype`: float32 (the default) has no tensor-core rate on an
H100/H200, bfloat16 has. On tiny random models bfloat16's masks differ from float32's in at
most 3% of the pixels (tests/test_segmentation.py); on SAM ViT-H's weights that is not
measured, so the default stays float32. The GPU section times the image encoder in bf16
beside the stage as configured.

**A batched inference engine for InternVL2** (read from PyPI's metadata on 2026-12-01, no
wheel installed): vLLM 0.33.0 pins torch 2.14.0, torchvision 0.29.0 and transformers < 5.21;
vLLM 0.32.0 pins torch 2.13.0 (the GPU lock's) but transformers < 5.20 (the lock has 5.24.0)
and torchvision 0.28.0 (never installed beside this torch); lmdeploy 0.18.0 wants torch <=
2.12.1 and torchvision <= 0.27.1. None installs beside `requirements-gpu.lock`, so none was
measured. An engine would run the captions step in an image of its own, with its own pins;
`perception/captions.py` hands its batches to vLLM's offline engine wherever vLLM imports.

**Synthetic triplets** (article section 4.1, `synthetic.count`): the figure above is an
estimate from another pipeline's measured step; the share of batches the in-batch identity
check keeps, and ConsiStory's own GPU step (its shared attention reads the anchors' subject
patches too), are not measured: `python -m bench.synthetic --profile full` on a GPU with the
weights measures both ("Synthetic characters: consistency and cost", pending).
"""


def synthetic_triplet_s(params: SyntheticParams) -> dict[str, float]:
    """GPU seconds of drawing per triplet of a kept batch (batch_size - 1 triplets), with the
    method on and off, from `INPAINT_STEP_S` per U-Net step of one image (estimated).
    ConsiStory denoises the batch twice, and in the first `query_steps` of each pass once more
    for the vanilla queries."""
    consistent = 2 * (1 + params.consistency.query_steps)
    return {
        name: params.batch_size * params.steps * passes * INPAINT_STEP_S / (params.batch_size - 1)
        for name, passes in (("ConsiStory", consistent), ("independent", 1.0))
    }


@dataclass
class Stage:
    """One dataset stage's step pods over the corpus."""

    name: str
    unit: str
    items: float  # over the whole corpus
    gpu_s: float  # GPU seconds per item
    measured: bool  # gpu_s from a measured throughput (else estimated)
    cpu_s: float  # one core's seconds per item on the CPU side (measured here)
    weight_gb: float  # the weights its step pod loads

    @property
    def pod_s(self) -> float:
        """Seconds per item in a step pod today: the CPU side and the GPU take turns."""
        return self.gpu_s + self.cpu_s


def _estimated_speed(figure: Figure, kind: str) -> float:
    peak = PEAK_TFLOPS["fp32" if kind == "fp32" else "half"]
    return peak * 1e12 * MFU[kind] / (figure.gflop_per_item * 1e9)


def _caption_speed(caption: Figure) -> float:
    """Captions per second: vision and prefill compute-bound, decoding bound by reading the
    bf16 language weights once per step for the whole batch."""
    compute_s = caption.gflop_per_item * 1e9 / (PEAK_TFLOPS["half"] * 1e12 * MFU["llm"])
    decode_step_s = 2 * caption.language_params / (HBM_TBPS * 1e12 * MFU["hbm"])
    return 1 / (compute_s + caption.new_tokens * decode_step_s / caption.batch)


def caption_gflop(caption: Figure, vision: Figure, tiles: int) -> float:
    """GFLOP of one caption of an image cut into `tiles` tiles (as `bench/dataset_gpu.py`
    counts it: the tiles through the vision tower, 2 FLOPs per language weight per token)."""
    tokens = PROMPT_TOKENS + tiles * 256 + caption.new_tokens
    return tiles * vision.gflop_per_item + 2 * caption.language_params * tokens / 1e9


def stages(figures: list[Figure], cpu: dict[str, float]) -> list[Stage]:
    """The plan's stages: GPU time from the measured speed where there is one, else the
    estimate; CPU time as measured here."""
    by_key = {f.key: f for f in figures}

    def gpu_s(key: str, kind: str) -> tuple[float, bool]:
        figure = by_key[key]
        if figure.per_second is not None:
            return 1 / figure.per_second, True
        speed = _caption_speed(figure) if key == "caption" else _estimated_speed(figure, kind)
        return 1 / speed, False

    detector, detector_measured = gpu_s("detector", "conv")
    recogniser, recogniser_measured = gpu_s("recogniser", "conv")
    gb = {key: f.weight_bytes / 1e9 for key, f in by_key.items()}
    frames = MOVIES * FRAMES_PER_MOVIE
    return [
        Stage(
            "faces (detector + recogniser)",
            "frame",
            frames,
            detector + FACES_PER_FRAME * recogniser,
            detector_measured and recogniser_measured,
            cpu["faces"],
            gb["detector"] + gb["recogniser"],
        ),
        Stage(f"masks (SAM, {by_key['sam'].dtype})", "frame", CHARACTER_FRAMES,
              *gpu_s("sam", "fp32" if by_key["sam"].dtype == "float32" else "vit"),
              cpu["masks"], gb["sam"]),
        Stage("poses", "crop", CHARACTER_FRAMES, *gpu_s("pose", "conv"), cpu["poses"], gb["pose"]),
        Stage("captions", "image", CHARACTER_FRAMES, *gpu_s("caption", "llm"), cpu["captions"],
              gb["caption"]),
    ]  # fmt: skip


def _file_bytes(write, name: str = "file") -> int:
    """Bytes of the file `write(path)` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        write(path)
        return path.stat().st_size


def measured_bytes() -> dict[str, float]:
    """Bytes per item of the stages' outputs, written here the way the stages write them:
    parquet rows of random values (which compress worst), a person-shaped mask and a pose
    drawing at 1920x1080."""
    from core.io import save_image
    from perception.pose import Pose, draw_openpose

    rng = np.random.default_rng(0)
    n = 2000

    def table(columns: dict) -> float:
        return _file_bytes(lambda p: pd.DataFrame(columns).to_parquet(p, index=False)) / n

    def units(d: int) -> list[list[float]]:
        v = rng.standard_normal((n, d))
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).tolist()

    faces = table(
        {
            "movie": ["a-movie"] * n,
            "frame_idx": np.arange(n) * 50,
            "pts_s": np.arange(n) * 2.0,
            "path": [f"frames/a-movie/{i:08d}.jpg" for i in range(n)],
            "width": 1920,
            "height": 1080,
            "bbox": rng.random((n, 4)).tolist(),
            "kps": rng.random((n, 10)).tolist(),
            "det_score": rng.random(n),
            "n_faces": 1,
            "embedding": units(512),
            "embedding_raw_norm": rng.random(n),
            "identity_embedding": units(512),
        }
    )
    poses_row = table(
        {
            "keypoints": (rng.random((n, 266)) * 1000).tolist(),
            "scores": rng.random((n, 133)).tolist(),
        }
    )
    # Captions of 125 words drawn from a 2,000-word vocabulary of 3-9 letter words.
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocabulary = ["".join(rng.choice(letters, rng.integers(3, 10))) for _ in range(2000)]
    captions = [" ".join(rng.choice(vocabulary, 125)) for _ in range(n)]
    pose = Pose(
        keypoints=(rng.random((133, 2)) * [600, 900] + [660, 100]).astype(np.float32),
        scores=rng.random(133).astype(np.float32),
    )
    yy, xx = np.mgrid[: FRAME_SIZE[0], : FRAME_SIZE[1]]
    person = ((xx - 960) / 260) ** 2 + ((yy - 640) / 480) ** 2 <= 1
    head = ((xx - 960) / 110) ** 2 + ((yy - 170) / 140) ** 2 <= 1
    mask = ((person | head) * 255).astype(np.uint8)
    control = draw_openpose(pose, (FRAME_SIZE[1], FRAME_SIZE[0]))
    return {
        "faces row": faces,
        "mask png": _file_bytes(lambda p: save_image(mask, p), "mask.png"),
        "pose png": _file_bytes(lambda p: save_image(control, p), "pose.png"),
        "poses row": poses_row,
        "captions row": table({"caption": captions}),
    }


def _frame(folder: Path) -> tuple[Path, Path]:
    """A 1920x1080 JPEG (quality 95, as the frames stage writes) of a photograph, and a
    person mask PNG of that size."""
    import cv2
    from skimage import data

    from core.io import save_image

    frame = cv2.resize(data.astronaut(), (FRAME_SIZE[1], FRAME_SIZE[0]))
    save_image(frame, folder / "frame.jpg", quality=95)
    yy, xx = np.mgrid[: FRAME_SIZE[0], : FRAME_SIZE[1]]
    person = ((xx - 960) / 260) ** 2 + ((yy - 640) / 480) ** 2 <= 1
    save_image((person * 255).astype(np.uint8), folder / "mask.png")
    return folder / "frame.jpg", folder / "mask.png"


def cpu_seconds() -> dict[str, float]:
    """Seconds of one core per item for each stage's CPU side, as the stages run it today
    (one process, serial): decoding, resizing, prompt and output processing, PNG writing."""
    import torch
    from insightface.utils import face_align
    from rtmlib.tools.pose_estimation.pre_processings import bbox_xyxy2cs, top_down_affine
    from transformers import GotOcr2ImageProcessorPil, SamImageProcessorPil, SamProcessor

    from core.io import load_rgb, save_image
    from perception.face_batch import letterbox
    from perception.pose import Pose, draw_openpose, mask_box, masked_image

    sam = SamProcessor(image_processor=SamImageProcessorPil())
    tiles = GotOcr2ImageProcessorPil(
        size={"height": 448, "width": 448}, crop_to_patches=True, max_patches=12
    )
    kps = np.array([[900, 300], [1020, 300], [960, 360], [910, 420], [1010, 420]], np.float32)
    pose = Pose(np.random.default_rng(0).random((133, 2)).astype(np.float32) * 900 + 100,
                np.ones(133, np.float32))  # fmt: skip
    logits = torch.randn(1, 1, 3, 256, 256)

    def faces(frame: Path, mask: Path, out: Path) -> None:
        image = load_rgb(frame)[:, :, ::-1]
        letterbox(np.ascontiguousarray(image), (640, 640))
        for _ in range(round(FACES_PER_FRAME)):
            face_align.norm_crop(image, landmark=kps, image_size=112)

    def masks(frame: Path, mask: Path, out: Path) -> None:
        inputs = sam(images=load_rgb(frame), input_points=[[[960.0, 300.0]]], return_tensors="pt")
        masks = sam.post_process_masks(
            logits, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0][0]
        save_image(masks[0].numpy().astype(np.uint8) * 255, out / "mask.png")

    def poses(frame: Path, mask: Path, out: Path) -> None:
        inside = load_rgb(mask)[..., 0] > 127
        crop = masked_image(load_rgb(frame), inside)
        center, scale = bbox_xyxy2cs(np.array(mask_box(inside)), padding=1.25)
        top_down_affine((288, 384), scale, center, crop)
        save_image(draw_openpose(pose, (FRAME_SIZE[1], FRAME_SIZE[0])), out / "pose.png")

    def captions(frame: Path, mask: Path, out: Path) -> None:
        tiles(images=[load_rgb(frame)], return_tensors="np")

    seconds = {}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # insightface's use of scikit-image
        frame, mask = _frame(Path(tmp))
        for name, work in (("faces", faces), ("masks", masks), ("poses", poses),
                           ("captions", captions)):  # fmt: skip
            work(frame, mask, Path(tmp))  # warm caches
            times = []
            for _ in range(7):  # the best of 7: the least disturbed by other work on the machine
                start = time.perf_counter()
                work(frame, mask, Path(tmp))
                times.append(time.perf_counter() - start)
            seconds[name] = min(times)
    return seconds


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f}"


def _label(measured: bool) -> str:
    return "measured" if measured else "estimated"


def plan(figures: list[Figure]) -> str:
    cpu = cpu_seconds()
    rows, total_s, overlapped_s = [], 0.0, 0.0
    for stage in stages(figures, cpu):
        fixed_s = POD_START_S + stage.weight_gb / LOAD_GBPS
        per_movie_s = stage.items / MOVIES * stage.pod_s
        total_s += stage.items * stage.pod_s + MOVIES * fixed_s
        overlapped_s += stage.items * max(stage.gpu_s, stage.cpu_s / CPU_CORES_PER_GPU)
        overlapped_s += MOVIES * fixed_s
        group = max(1, math.ceil(fixed_s / (0.1 * per_movie_s)))
        rows.append(
            f"| {stage.name} | {stage.items:,.0f} {stage.unit}s | "
            f"{1 / stage.gpu_s:,.1f} ({_label(stage.measured)}) | {1 / stage.cpu_s:,.1f} "
            f"(measured) | {1 / stage.pod_s:,.1f} (estimated) | "
            f"{_hours(stage.items * stage.pod_s)} (estimated) | {per_movie_s:,.0f} s | "
            f"{fixed_s:,.0f} s (estimated) | {group} |"
        )
    by_key = {f.key: f for f in figures}
    sam_s = {
        kind: CHARACTER_FRAMES / _estimated_speed(by_key["sam"], kind) for kind in ("fp32", "vit")
    }
    caption, vision = by_key["caption"], by_key["vision"]
    one_tile = caption_gflop(caption, vision, 1)
    one_tile_s = CHARACTER_FRAMES / _caption_speed(replace(caption, gflop_per_item=one_tile))
    sizes = measured_bytes()
    synthetic = load_params(PARAMS, "full").synthetic
    drawing = synthetic_triplet_s(synthetic)
    frames = MOVIES * FRAMES_PER_MOVIE
    png = "a synthetic 1080p"
    storage = [
        ("frames (JPEG q95)", frames * FRAME_JPEG_MB * 1e6, f"estimated: {FRAME_JPEG_MB} MB"),
        ("faces table", frames * sizes["faces row"], f"measured: {sizes['faces row']:,.0f} B/row"),
        ("masks (PNG)", CHARACTER_FRAMES * sizes["mask png"],
         f"measured: {sizes['mask png'] / 1e3:,.1f} kB, {png} person mask"),
        ("poses (control PNG + table)", CHARACTER_FRAMES * (sizes["pose png"] + sizes["poses row"]),
         f"measured: {sizes['pose png'] / 1e3:,.1f} kB, {png} pose drawing, "
         f"+ {sizes['poses row']:,.0f} B a row"),
        ("captions table", CHARACTER_FRAMES * sizes["captions row"],
         f"measured: {sizes['captions row']:,.0f} B a row of 125 random words"),
        ("triplets (target frame, reference crop, mask, pose)",
         TRIPLETS * (1.5 * FRAME_JPEG_MB * 1e6 + sizes["mask png"] + sizes["pose png"]),
         "estimated: a frame's JPEG, half of one for the crop, the measured PNGs"),
    ]  # fmt: skip
    return (
        f"The corpus: {MOVIES:,} movies x {FRAMES_PER_MOVIE:,} frames = {frames / 1e6:.1f} M "
        f"frames to the faces stage; up to {CHARACTER_FRAMES / 1e6:.0f} M character frames to "
        f"SAM, the pose model and the captioner; {TRIPLETS:,} triplets. One step pod per "
        "(movie, stage) on one GPU under `k8s_job_executor`.\n\n"
        "Where each figure comes from:\n\n"
        '- GPU items/s: the "Dataset stages (GPU)" section, measured where it has a GPU figure; '
        "otherwise estimated from the counted FLOPs at an assumed share of an H200's peak "
        f"({PEAK_TFLOPS['half']:.0f} TFLOP/s bf16/fp16 dense, {PEAK_TFLOPS['fp32']:.0f} fp32): "
        f"conv nets {MFU['conv']:.0%}, SAM {MFU['fp32']:.0%} in fp32 and {MFU['vit']:.0%} in "
        f"bf16, InternVL2's vision and "
        f"prefill {MFU['llm']:.0%}, its decoding reading the language weights once a step at "
        f"{MFU['hbm']:.0%} of {HBM_TBPS} TB/s, shared by the batch. The faces row adds "
        f"{FACES_PER_FRAME} recogniser faces a frame (estimated).\n"
        "- CPU items/s: one core of this machine (shared; the best of 7) running each stage's CPU "
        "side on a 1920x1080 JPEG of a photograph: decoding, letterbox and face alignment; "
        "SAM's resizing, mask upscaling and PNG; the masked crop, its affine warp, the pose "
        "drawing and PNG; InternVL's 448-px tiling (`bench/capacity.py` `cpu_seconds`).\n"
        "- Pod items/s: the stages today run the CPU side and the GPU in turn in one process, "
        "so a pod's time per item is the sum of the two (estimated from the two columns).\n"
        f"- A step pod's fixed cost: {POD_START_S:.0f} s to schedule, start and import "
        f"(estimated) plus its weights at {LOAD_GBPS} GB/s (estimated).\n\n"
        "| stage | items | GPU items/s | CPU items/s, 1 core | pod items/s | GPU-hours | "
        "work per movie | pod start + model load | movies per pod for load <= 10% |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\n**Wall-clock (estimated)**, pod starts and loads included, every GPU kept busy "
        f"by the run queue: {_hours(total_s)} GPU-hours, about {_hours(total_s / 8)} h on 8 GPUs "
        f"and {_hours(total_s / 64)} h on 64. With each stage's CPU side spread over "
        f"{CPU_CORES_PER_GPU} cores a GPU (estimated; not implemented) and overlapped with the "
        f"GPU: {_hours(overlapped_s)} GPU-hours, {_hours(overlapped_s / 8)} h on 8 GPUs, "
        f"{_hours(overlapped_s / 64)} h on 64.\n\n"
        f"The captioner's cost is in its tiles: the GPU section counts {caption.tiles} 448-px "
        "tiles an image (InternVL's dynamic tiling of a 16:9 frame at up to 12 tiles: a 4x2 grid "
        "and a thumbnail; estimated). At one tile an image the corpus would take about "
        f"{_hours(one_tile_s)} GPU-hours (estimated: {one_tile / 1e3:,.0f} TFLOP a caption "
        f"against {caption.gflop_per_item / 1e3:,.0f}), if captions keep their quality at that "
        "resolution (not measured).\n\n"
        f"SAM's GPU time, estimated from its counted FLOPs: {_hours(sam_s['fp32'])} GPU-hours in "
        f"float32, {_hours(sam_s['vit'])} in bfloat16 (`masks.dtype`).\n\n"
        f"A synthetic triplet (`synthetic`, the `full` profile: batches of {synthetic.batch_size} "
        f"images at {synthetic.size} px, {synthetic.steps} steps): about "
        f"{drawing['ConsiStory']:,.0f} GPU-seconds of drawing with ConsiStory, "
        f"{drawing['independent']:,.0f} without (estimated: {INPAINT_STEP_S * 1e3:.0f} ms per "
        "image and U-Net step, the inpainting pipeline's measured step, ControlNet included; a "
        "kept batch's images but the reference are targets), before the targets' stages, as "
        "a movie's character frames go through them; a dropped batch costs its drawing too.\n\n"
        "| output | corpus size | per item |\n|---|---|---|\n"
        + "\n".join(f"| {name} | {size / 1e9:,.1f} GB | {how} |" for name, size, how in storage)
        + "\n"
        + NOTES
    )
