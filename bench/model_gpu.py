"""Full-size model cost on one CUDA GPU: a training step and a 30-step 1024² inference.

Run from the repository root on a GPU machine:

    python -m bench.model_gpu            # or: python bench/model_gpu.py with the project installed

Weights are random (the `sdxl` config at real sizes): cost does not depend on their values, and
the benchmark needs nothing from the models directory. It measures

- training: one step of the article's setup at 1024×1024, batch 1 — Pose-IdentityNet + the
  9-channel U-Net with both image branches, forward + backward under bf16 autocast, then AdamW
  on the trainable set (kept in fp32; the frozen U-Net in bf16), with gradient checkpointing on
  (`training.gradient_checkpointing`) and off, side by side, and the optimizer step
  alone.
  Latents, prompt embeddings, face embedding and body features come in precomputed, as a
  training loop with cached VAE/text/body encodings feeds them;
- inference: `CharacterInpaintPipeline` at 1024×1024, 30 steps, classifier-free guidance, bf16,
  with a precomputed face embedding and body features (perception models excluded).

Step time, peak allocated memory and achieved TFLOP/s (FLOPs counted by
`torch.utils.flop_counter`, recomputation under checkpointing included) go into the
"Model (GPU)" section of BENCHMARKS.md; the rest of that file is left as it is.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import EulerDiscreteScheduler
from torch.utils.flop_counter import FlopCounterMode

from bench.report import REPORT, write_section
from training.model import (
    SDXL,
    ModelConfig,
    adapter_processors,
    build_components,
    predict_noise,
    trainable_parameters,
)
from training.pipeline import CharacterInpaintPipeline
from training.text import MAX_PROMPT_TOKENS, byte_level_tokenizer

SIZE = 1024
BODY_TOKENS = 1025  # InternViT-300M-448px: 32 × 32 patches + CLS
TRAINING_BUDGET_GB = 80  # the article's H100s


def _timed(fn: Callable[[], Any], repeats: int) -> float:
    """Mean seconds per call, synchronised with the GPU."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def _counted_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _training_inputs(config: ModelConfig, size: int, device: torch.device) -> dict[str, Any]:
    """One batch-1 sample as a training loop with cached encodings feeds the denoiser."""
    latent = size // 2 ** (len(config.vae["block_out_channels"]) - 1)
    dtype = torch.bfloat16

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=dtype)

    return {
        "latents": randn(1, 4, latent, latent),
        "timestep": torch.tensor([500], device=device),
        "mask": (randn(1, 1, latent, latent) > 0).to(dtype),
        "masked_image_latents": randn(1, 4, latent, latent),
        "prompt_embeds": randn(1, MAX_PROMPT_TOKENS, config.unet["cross_attention_dim"]),
        "text_embeds": randn(1, config.text_encoder_2["projection_dim"]),
        "time_ids": torch.tensor([[size, size, 0, 0, size, size]], device=device, dtype=dtype),
        "face_embeds": randn(1, config.face_resampler.embed_dims),
        "body_features": randn(1, BODY_TOKENS, config.body_resampler.embed_dims),
        "pose_image": torch.rand(1, 3, size, size, device=device, dtype=dtype),
    }


def bench_training(
    components: dict[str, Any], config: ModelConfig, size: int, steps: int, warmup: int
) -> dict[str, dict[str, float]]:
    """The training step with gradient checkpointing on (the default) and off, one after the
    other on the same weights, and the optimizer step's share of it."""
    unet, controlnet = components["unet"], components["controlnet"]
    device = unet.device
    # Mixed precision as in diffusers' training scripts: frozen weights in bf16, trainable fp32.
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[name].to(torch.bfloat16)
    unet.encoder_hid_proj.float()
    for processor in adapter_processors(unet):
        processor.float()
    controlnet.float()
    unet.train()
    controlnet.train()
    params = list(trainable_parameters(unet, controlnet).values())
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    inputs = _training_inputs(config, size, device)
    target = torch.randn_like(inputs["latents"], dtype=torch.float32)

    def forward_backward() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            noise_pred = predict_noise(unet, controlnet, **inputs)
        loss = torch.nn.functional.mse_loss(noise_pred.float(), target)
        loss.backward()

    def step() -> None:
        forward_backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    results = {}
    for checkpointing in (True, False):
        if checkpointing:
            unet.enable_gradient_checkpointing()
            controlnet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
            controlnet.disable_gradient_checkpointing()
        name = "checkpointing" if checkpointing else "no_checkpointing"
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(warmup):
                step()
            flops = _counted_flops(step)
            seconds = _timed(step, steps)
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            results[name] = None  # reported as out of memory
            continue
        results[name] = {
            "seconds": seconds,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
            "tflops": flops / seconds / 1e12,
            "tflop_per_step": flops / 1e12,
        }
    unet.enable_gradient_checkpointing()
    controlnet.enable_gradient_checkpointing()
    forward_backward()  # gradients in place for the optimizer alone
    results["optimizer_seconds"] = _timed(optimizer.step, steps)
    results["trainable"] = sum(p.numel() for p in params)
    optimizer.zero_grad(set_to_none=True)
    return results


def bench_inference(
    components: dict[str, Any], config: ModelConfig, size: int, steps: int, runs: int
) -> dict[str, float]:
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2"):
        components[name].to(torch.bfloat16).eval()
    pipe = CharacterInpaintPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    base = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 8 :, size // 4 : 3 * size // 4] = 255
    pose = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    body_dims = config.body_resampler.embed_dims
    arguments = {
        "image": base,
        "mask_image": PIL.Image.fromarray(mask),
        "prompt": "a middle-aged man with silver hair, wearing a beige V-neck sweater, smiling",
        "face_embedding": rng.standard_normal(config.face_resampler.embed_dims).astype(np.float32),
        "body_features": rng.standard_normal((BODY_TOKENS, body_dims)).astype(np.float32),
        "pose_image": pose,
        "num_inference_steps": steps,
        "guidance_scale": 5.0,
        "seed": 0,
    }

    def generate() -> None:
        pipe(**arguments)

    generate()
    flops = _counted_flops(generate)
    torch.cuda.reset_peak_memory_stats()
    seconds = _timed(generate, runs)
    return {
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
        "tflops": flops / seconds / 1e12,
    }


def render(train: dict[str, Any], infer: dict[str, float], args: argparse.Namespace) -> str:
    on, off = train["checkpointing"], train["no_checkpointing"]

    def cells(key: str) -> str:
        return " | ".join(
            "out of memory" if run is None else key.format(**run) for run in (on, off)
        )

    ratio = (
        f"**Step time, checkpointing off / on: {off['seconds'] / on['seconds']:.2f}.** "
        if off is not None
        else "**Without checkpointing the step does not fit.** "
    )
    return "\n".join(
        [
            f"`python -m bench.model_gpu` on {torch.cuda.get_device_name()}, torch "
            f"{torch.__version__}, diffusers {diffusers.__version__}, {platform.node()}, "
            f"{time.strftime('%Y-%m-%d')}. Full-size `sdxl` config, random weights.",
            "",
            "| measurement | checkpointing on | checkpointing off |",
            "| --- | --- | --- |",
            f"| training step, 1024², batch 1, bf16 autocast, fused AdamW (mean of {args.steps})"
            f" | {cells('{seconds:.3f} s')} |",
            f"| training peak memory (allocated) | {cells('{peak_gb:.1f} GiB')} |",
            "| training achieved throughput (TFLOP per step, recomputation included) | "
            f"{cells('{tflops:.1f} TFLOP/s ({tflop_per_step:.1f})')} |",
            "",
            ratio + f"The optimizer step alone (AdamW over {train['trainable'] / 1e9:.3f} B fp32 "
            f"trainable parameters): {train['optimizer_seconds'] * 1000:.0f} ms, "
            f"{train['optimizer_seconds'] / on['seconds']:.0%} of the step with checkpointing. "
            f"The article's budget is {TRAINING_BUDGET_GB} GB per GPU.",
            "",
            "| inference | value |",
            "| --- | --- |",
            f"| 1024², {args.inference_steps} steps, CFG, bf16 (mean of {args.inference_runs}) "
            f"| {infer['seconds']:.2f} s ({infer['seconds_per_step'] * 1000:.0f} ms/step) |",
            f"| peak memory (allocated) | {infer['peak_gb']:.1f} GiB |",
            f"| achieved throughput | {infer['tflops']:.1f} TFLOP/s |",
            "",
            "Training step: ControlNet + U-Net forward and backward on precomputed latents and "
            "embeddings, plus the optimizer step. Inference: the whole pipeline call (prompt "
            "encoding, denoising, VAE decode, compositing), face embedding and body features "
            "precomputed.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--inference-steps", type=int, default=30)
    parser.add_argument("--inference-runs", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit(
            "bench/model_gpu.py needs a CUDA GPU: it trains and samples the full-size SDXL "
            "model in bf16. No CUDA device is visible here; nothing was measured."
        )
    with torch.device("cuda"):
        components = build_components(SDXL)
    # The scheduler's tables stay on the CPU, where diffusers computes its sigmas with NumPy.
    components["scheduler"] = EulerDiscreteScheduler(**SDXL.scheduler)
    # Random text encoders read any ids; a file-free tokenizer fills the fixed 154 positions.
    components["tokenizer"] = byte_level_tokenizer()
    components["tokenizer_2"] = byte_level_tokenizer(pad_token="!")
    train = bench_training(components, SDXL, SIZE, args.steps, args.warmup)
    torch.cuda.empty_cache()
    infer = bench_inference(components, SDXL, SIZE, args.inference_steps, args.inference_runs)
    section = render(train, infer, args)
    write_section("Model (GPU)", section, args.output)
    print(section)


if __name__ == "__main__":
    main()
