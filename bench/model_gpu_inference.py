"""Part 4 of `bench/model_gpu.py`: inference, ours against the fair peer.

The peer is diffusers' `StableDiffusionXLControlNetInpaintPipeline` built from the very modules
`CharacterInpaintPipeline` runs: the 9-channel U-Net carrying both identity branches, the same
ControlNet, VAE, text encoders and scheduler, at the same size, steps and guidance. It gets our
154-token prompt embeddings precomputed and the face and body embeddings as
`ip_adapter_image_embeds`, so the U-Net does the same work in both. Two differences remain, and
the FLOP count shows their size: ours encodes its prompt inside the call (counted apart), and
its ControlNet attends to the 16 face tokens (Pose-IdentityNet) where the peer's attends to the
154 text tokens.

Each pipeline is timed whole (prompt, denoising, VAE decode, compositing) and with
`output_type="latent"` (the denoising loop without the decode): one untimed call, then the
median of `run.inference_runs`. Ours and the peer are timed eager (`eager`, early in the run:
the comparison that matters most), ours later with the levers of `training.acceleration`
(`with_levers`; its first call, which compiles, is reported apart).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionXLControlNetInpaintPipeline

from bench.model_gpu_run import Run, counted_flops, flops_by_module, timed
from training.params import Acceleration
from training.pipeline import CharacterInpaintPipeline

PROMPT = "a middle-aged man with silver hair, wearing a beige V-neck sweater, smiling"
GUIDANCE = 5.0


def scene(run: Run) -> dict[str, Any]:
    """The request both pipelines paint: a random base and pose, a mask, the identity."""
    rng = np.random.default_rng(0)
    size = run.size
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 8 :, size // 4 : 3 * size // 4] = 255
    config = run.config
    return {
        "base": PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "mask": PIL.Image.fromarray(mask),
        "pose": PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)),
        "face": rng.standard_normal(config.face_resampler.embed_dims).astype(np.float32),
        "body": rng.standard_normal((run.body_tokens, config.body_resampler.embed_dims)).astype(
            np.float32
        ),
    }


def ours_call(pipe: CharacterInpaintPipeline, request: dict[str, Any], run: Run, output: str):
    def call() -> Any:
        return pipe(
            image=request["base"],
            mask_image=request["mask"],
            prompt=PROMPT,
            face_embedding=request["face"],
            body_features=request["body"],
            pose_image=request["pose"],
            num_inference_steps=run.inference_steps,
            guidance_scale=GUIDANCE,
            seed=0,
            output_type=output,
        )

    return call


def peer_call(
    peer: StableDiffusionXLControlNetInpaintPipeline,
    ours: CharacterInpaintPipeline,
    request: dict[str, Any],
    run: Run,
    output: str,
):
    """The peer's call on the same request. CFG's unconditional half comes first in each
    embedding, zeros as ours (`force_zeros_for_empty_prompt`, dropped identity)."""
    device, dtype = run.device, peer.unet.dtype
    with torch.no_grad():
        prompt_embeds, pooled = ours.encode_long_prompt(PROMPT)
    face = torch.as_tensor(request["face"], device=device, dtype=dtype)[None]
    body = torch.as_tensor(request["body"], device=device, dtype=dtype)[None]
    image_embeds = [
        torch.cat([torch.zeros_like(face), face])[:, None, None, :],  # (2, 1, 1, 512)
        torch.cat([torch.zeros_like(body), body])[:, None],  # (2, 1, S, D)
    ]

    def call() -> Any:
        return peer(
            prompt_embeds=prompt_embeds.to(dtype),
            negative_prompt_embeds=torch.zeros_like(prompt_embeds, dtype=dtype),
            pooled_prompt_embeds=pooled.to(dtype),
            negative_pooled_prompt_embeds=torch.zeros_like(pooled, dtype=dtype),
            image=request["base"],
            mask_image=request["mask"],
            control_image=request["pose"],
            ip_adapter_image_embeds=image_embeds,
            strength=1.0,
            num_inference_steps=run.inference_steps,
            guidance_scale=GUIDANCE,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type=output,
        )

    return call


def median_seconds(call, run: Run) -> float:
    call()  # untimed: allocations, cuDNN's choices
    return statistics.median(timed(call, run.device) for _ in range(run.inference_runs))


@dataclass
class Pipelines:
    """Ours and the peer on the same modules, and their timed calls (whole, loop only)."""

    ours: CharacterInpaintPipeline
    calls: dict[str, dict[str, Any]]


def pipelines(components: dict[str, Any], run: Run) -> Pipelines:
    """Both pipelines on `components`, cast to bf16 for inference (the training bench casts
    its trainables back when it runs again)."""
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2"):
        components[name].to(torch.bfloat16).eval()
    ours = CharacterInpaintPipeline(**components)
    peer = StableDiffusionXLControlNetInpaintPipeline(
        vae=components["vae"],
        text_encoder=components["text_encoder"],
        text_encoder_2=components["text_encoder_2"],
        tokenizer=components["tokenizer"],
        tokenizer_2=components["tokenizer_2"],
        unet=components["unet"],
        controlnet=components["controlnet"],
        scheduler=components["scheduler"],
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,  # ours draws no watermark either
    )
    for pipe in (ours, peer):
        pipe.set_progress_bar_config(disable=True)
    request = scene(run)
    calls = {
        "ours": {out: ours_call(ours, request, run, out) for out in ("pil", "latent")},
        "peer": {out: peer_call(peer, ours, request, run, out) for out in ("pil", "latent")},
    }
    return Pipelines(ours, calls)


def eager(components: dict[str, Any], run: Run) -> dict[str, Any]:
    """Seconds (whole call and denoising loop) of ours and the peer eager, the FLOPs of one
    call of each, and our prompt encoding's FLOPs."""
    pipes = pipelines(components, run)
    figures: dict[str, Any] = {}
    for name in ("ours", "peer"):
        flops = flops_by_module(pipes.calls[name]["pil"])
        figures[name] = {
            "seconds": median_seconds(pipes.calls[name]["pil"], run),
            "loop_seconds": median_seconds(pipes.calls[name]["latent"], run),
            "flops": flops["Global"],
            # Where the two differ by design: the IdentityNet's cross-attention context.
            "controlnet_flops": flops["ControlNetModel"],
        }
    with torch.no_grad():
        figures["prompt_flops"] = counted_flops(lambda: pipes.ours.encode_long_prompt(PROMPT))
    return figures


def with_levers(
    components: dict[str, Any], run: Run, training_best: Acceleration, compile: bool = True
) -> dict[str, Any]:
    """Ours with every layout and kernel lever (compile where it can run) and the attention
    kernel training found faster: its first call (which compiles) apart, then the medians."""
    pipes = pipelines(components, run)
    levers = Acceleration(
        channels_last=True,
        cudnn_benchmark=True,
        attention_backend=training_best.attention_backend,
        compile=compile,
        compile_backend=run.compile_backend,
    )
    pipes.ours.enable_acceleration(levers)
    first = timed(pipes.calls["ours"]["pil"], run.device)  # compiles the whole call's shapes
    return {
        "first_seconds": first,
        "seconds": median_seconds(pipes.calls["ours"]["pil"], run),
        "loop_seconds": median_seconds(pipes.calls["ours"]["latent"], run),
        "acceleration": levers,
    }
