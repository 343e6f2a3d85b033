"""Inputs and helpers shared by the model tests (tiny config)."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)

from training.model import TINY


def plain_unet(adapted: UNet2DConditionModel) -> UNet2DConditionModel:
    """A U-Net without image branches carrying `adapted`'s base weights."""
    unet = UNet2DConditionModel(**TINY.unet)
    base = {
        key: value
        for key, value in adapted.state_dict().items()
        if not key.startswith("encoder_hid_proj.") and ".processor." not in key
    }
    unet.load_state_dict(base, strict=True)
    return unet


def sdxl_inpaint_pipeline(
    tiny: dict, unet: UNet2DConditionModel | None = None
) -> StableDiffusionXLInpaintPipeline:
    """diffusers' own SDXL inpainting pipeline on the tiny components, without image branches
    unless `unet` brings them."""
    pipe = StableDiffusionXLInpaintPipeline(
        vae=tiny["vae"],
        text_encoder=tiny["text_encoder"],
        text_encoder_2=tiny["text_encoder_2"],
        tokenizer=tiny["tokenizer"],
        tokenizer_2=tiny["tokenizer_2"],
        unet=unet if unet is not None else plain_unet(tiny["unet"]),
        scheduler=EulerDiscreteScheduler(**TINY.scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def randomize_controlnet_outputs(controlnet: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised output convolutions weights, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


class Scene:
    """A base image, its mask, a pose drawing and identity inputs at one size."""

    def __init__(self, height: int = 64, width: int = 48, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.base = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[height // 4 : 3 * height // 4, width // 5 : 4 * width // 5] = 255
        self.mask = PIL.Image.fromarray(mask)
        self.inside = mask >= 128
        self.pose = PIL.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        face = rng.standard_normal(512).astype(np.float32)
        self.face = face / np.linalg.norm(face)
        self.body = rng.standard_normal((17, TINY.body_resampler.embed_dims)).astype(np.float32)
