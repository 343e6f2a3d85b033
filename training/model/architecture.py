"""The identity-consistent inpainting model of the article's section 3, on diffusers primitives.

- U-Net: SDXL 1.0 inpainting, 9 input channels (noisy latents + mask + masked-image latents),
  frozen.
- ICA1 (face): ArcFace 512-d embedding → Perceiver-Resampler (InstantID's: 16 tokens of 2048) →
  a decoupled image cross-attention in every cross-attention layer.
- ICA2 (body): body-encoder features of the segmented reference (InternViT-300M-448px) → a
  second Perceiver-Resampler → a second decoupled cross-attention in the same layers.
  Both branches live in one diffusers `IPAdapterAttnProcessor2_0` per layer (one `to_k_ip` /
  `to_v_ip` per branch, one scale per branch); both resamplers in the U-Net's
  `MultiIPAdapterImageProjection`, exactly where `load_ip_adapter` puts them.
- Pose-IdentityNet: an SDXL ControlNet over the 4-channel noisy latents whose cross-attention
  reads the face tokens instead of text (InstantID's IdentityNet), conditioned on the
  133-keypoint pose image.

Trainable: both resamplers, both branches' K/V, the whole ControlNet. Everything else is frozen.

`summary` sizes the full model on the meta device.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from transformers import (
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    ViTConfig,
    ViTModel,
)

from training.model.config import BRANCHES, LATENT_CHANNELS, ModelConfig
from training.text import byte_level_tokenizer

# ---------------------------------------------------------------------------------------------
# Building


def build_controlnet(
    unet: UNet2DConditionModel, config: ModelConfig, copy_unet_weights: bool = True
) -> ControlNetModel:
    """Pose-IdentityNet: an SDXL ControlNet shaped like `unet` but over the 4 latent channels.

    `ControlNetModel.from_unet` would copy the inpainting U-Net's 9 input channels; the
    ControlNet sees only the noisy latents, so its `conv_in` takes their 4-channel slice. Call
    this before `attach_adapters`, which changes the U-Net's config.
    """
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    kwargs = {key: value for key, value in unet.config.items() if key in accepted}
    kwargs.update(
        in_channels=LATENT_CHANNELS,
        conditioning_channels=3,
        conditioning_embedding_out_channels=config.controlnet_conditioning_channels,
        encoder_hid_dim=None,
        encoder_hid_dim_type=None,
    )
    with torch.device(unet.device):
        controlnet = ControlNetModel(**kwargs)
    if controlnet.dtype != unet.dtype:
        controlnet.to(dtype=unet.dtype)
    if copy_unet_weights:
        with torch.no_grad():
            controlnet.conv_in.weight.copy_(unet.conv_in.weight[:, :LATENT_CHANNELS])
            controlnet.conv_in.bias.copy_(unet.conv_in.bias)
        for name in ("time_embedding", "add_embedding", "down_blocks", "mid_block"):
            getattr(controlnet, name).load_state_dict(getattr(unet, name).state_dict())
    return controlnet


def adapter_processors(unet: UNet2DConditionModel) -> list[IPAdapterAttnProcessor2_0]:
    """The U-Net's image cross-attention processors, in `unet.attn_processors` order."""
    return [p for p in unet.attn_processors.values() if isinstance(p, IPAdapterAttnProcessor2_0)]


def attach_adapters(unet: UNet2DConditionModel, config: ModelConfig) -> None:
    """Add ICA1 (face) and ICA2 (body) to every cross-attention layer, and their resamplers.

    Each branch's new `to_k_ip`/`to_v_ip` starts as a copy of the layer's text `to_k`/`to_v`
    (IP-Adapter's initialisation), so image tokens enter where text tokens do.
    """
    resampler_configs = (config.face_resampler, config.body_resampler)
    for resampler in resampler_configs:
        if resampler.output_dims != unet.config.cross_attention_dim:
            raise ValueError(
                f"resampler output {resampler.output_dims} != U-Net cross-attention "
                f"{unet.config.cross_attention_dim}"
            )
    num_tokens = [resampler.num_queries for resampler in resampler_configs]
    processors = {}
    for name, processor in unet.attn_processors.items():
        attn = unet.get_submodule(name.removesuffix(".processor"))
        if not attn.is_cross_attention:
            processors[name] = processor
            continue
        weight = attn.to_k.weight
        with torch.device(weight.device):
            adapter = IPAdapterAttnProcessor2_0(
                hidden_size=attn.to_k.out_features,
                cross_attention_dim=attn.to_k.in_features,
                num_tokens=num_tokens,
                scale=[1.0] * len(BRANCHES),
            ).to(dtype=weight.dtype)
        with torch.no_grad():
            for to_k_ip, to_v_ip in zip(adapter.to_k_ip, adapter.to_v_ip, strict=True):
                to_k_ip.weight.copy_(attn.to_k.weight)
                to_v_ip.weight.copy_(attn.to_v.weight)
        processors[name] = adapter
    # Before encoder_hid_proj: the resamplers have attention processors of their own, which
    # set_attn_processor would otherwise expect in its dict.
    unet.set_attn_processor(processors)
    with torch.device(unet.device):
        projections = [IPAdapterPlusImageProjection(**asdict(c)) for c in resampler_configs]
    unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections).to(dtype=unet.dtype)
    unet.register_to_config(encoder_hid_dim_type="ip_image_proj")


def set_adapter_scales(unet: UNet2DConditionModel, face: float, body: float) -> None:
    """Per-branch weights of the image cross-attention; a branch at 0 is skipped entirely."""
    for processor in adapter_processors(unet):
        processor.scale = [face, body]


def resamplers(unet: UNet2DConditionModel) -> dict[str, IPAdapterPlusImageProjection]:
    layers = unet.encoder_hid_proj.image_projection_layers
    return dict(zip(BRANCHES, layers, strict=True))


def set_trainable(unet: UNet2DConditionModel, controlnet: ControlNetModel) -> None:
    """Exactly the article's trainable set: resamplers, both branches' K/V, the ControlNet."""
    unet.requires_grad_(False)  # also freezes the processors and resamplers attached to it
    unet.encoder_hid_proj.requires_grad_(True)
    for processor in adapter_processors(unet):
        processor.requires_grad_(True)
    controlnet.requires_grad_(True)


def trainable_parameters(
    unet: UNet2DConditionModel, controlnet: ControlNetModel
) -> dict[str, torch.nn.Parameter]:
    named = [("unet", unet), ("controlnet", controlnet)]
    return {
        f"{prefix}.{name}": param
        for prefix, module in named
        for name, param in module.named_parameters()
        if param.requires_grad
    }


def parameter_groups(
    trainable: dict[str, torch.nn.Parameter],
) -> dict[str, list[torch.nn.Parameter]]:
    """The trainable parameters by initialisation: `body` (its resampler and its K/V in every
    cross-attention layer, from random weights) and `identity` (the face branch and
    Pose-IdentityNet, from InstantID's), so each group can have its own learning rate."""
    body = BRANCHES.index("body")
    markers = (f"to_k_ip.{body}.", f"to_v_ip.{body}.", f"image_projection_layers.{body}.")
    groups: dict[str, list[torch.nn.Parameter]] = {"identity": [], "body": []}
    for name, param in trainable.items():
        groups["body" if any(m in name for m in markers) else "identity"].append(param)
    return groups


def build_components(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """All pipeline components of `config`, randomly initialised.

    For `tiny` this is the whole offline model; for `sdxl`, random full-size weights (the GPU
    benchmark). Tokenizers and the body encoder are included where the config can build them
    without files (`byte_tokenizers`, `body_encoder`), else None.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config.unet)
    controlnet = build_controlnet(unet, config)
    attach_adapters(unet, config)
    set_trainable(unet, controlnet)
    components: dict[str, Any] = {
        "unet": unet,
        "controlnet": controlnet,
        "vae": AutoencoderKL(**config.vae).requires_grad_(False),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**config.text_encoder)).requires_grad_(False),
        "text_encoder_2": CLIPTextModelWithProjection(
            CLIPTextConfig(**config.text_encoder_2)
        ).requires_grad_(False),
        "scheduler": EulerDiscreteScheduler(**config.scheduler),
        "tokenizer": None,
        "tokenizer_2": None,
        "body_encoder": None,
        "body_processor": None,
    }
    if config.byte_tokenizers:
        components["tokenizer"] = byte_level_tokenizer()
        components["tokenizer_2"] = byte_level_tokenizer(pad_token="!")  # as OpenCLIP pads
    if config.body_encoder is not None:
        encoder = ViTModel(ViTConfig(**config.body_encoder), add_pooling_layer=False)
        side = config.body_encoder["image_size"]
        components["body_encoder"] = encoder.requires_grad_(False)
        components["body_processor"] = CLIPImageProcessorPil(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        )
    return components


# ---------------------------------------------------------------------------------------------
# The denoiser: one code path for training and inference


def predict_noise(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    mask: torch.Tensor,
    masked_image_latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    time_ids: torch.Tensor,
    face_embeds: torch.Tensor,
    body_features: torch.Tensor,
    pose_image: torch.Tensor | None,
    controlnet_scale: float = 1.0,
) -> torch.Tensor:
    """One evaluation of the denoiser.

    `latents` (B, 4, h, w) are the scheduler-scaled noisy latents; `mask` (B, 1, h, w) and
    `masked_image_latents` (B, 4, h, w) complete the U-Net's 9 channels. `face_embeds` (B, 512)
    are ArcFace embeddings, `body_features` (B, S, D) body-encoder hidden states, zeros for the
    unconditional branch. `pose_image` (B, 3, H, W) in [0, 1] is the keypoint drawing; with
    `controlnet_scale` 0 the ControlNet is skipped and the pose may be None.
    """
    added_cond_kwargs = {"text_embeds": text_embeds, "time_ids": time_ids}
    down_residuals, mid_residual = None, None
    if controlnet_scale != 0:
        if pose_image is None:
            raise ValueError("the ControlNet needs a pose image")
        face_tokens = resamplers(unet)["face"](face_embeds[:, None, :])
        down_residuals, mid_residual = controlnet(
            latents,
            timestep,
            encoder_hidden_states=face_tokens,  # Pose-IdentityNet reads the face, not the text
            controlnet_cond=pose_image,
            conditioning_scale=controlnet_scale,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )
    # MultiIPAdapterImageProjection takes (batch, images, sequence, dim) per branch.
    image_embeds = [face_embeds[:, None, None, :], body_features[:, None]]
    return unet(
        torch.cat([latents, mask, masked_image_latents], dim=1),
        timestep,
        encoder_hidden_states=prompt_embeds,
        added_cond_kwargs={**added_cond_kwargs, "image_embeds": image_embeds},
        down_block_additional_residuals=down_residuals,
        mid_block_additional_residual=mid_residual,
        return_dict=False,
    )[0]


# ---------------------------------------------------------------------------------------------
# Summary


def _count(module: torch.nn.Module) -> int:
    return sum(param.numel() for param in module.parameters())


def summary(config: ModelConfig) -> dict[str, Any]:
    """Parameter counts of every component, built on the meta device (no memory, no weights).

    InternViT (the `sdxl` body encoder) ships its own modelling code and is only counted where
    the config describes the encoder itself (`tiny`).
    """
    with init_empty_weights():
        unet = UNet2DConditionModel(**config.unet)
        base_unet = _count(unet)
        controlnet = build_controlnet(unet, config, copy_unet_weights=False)
        attach_adapters(unet, config)
        set_trainable(unet, controlnet)
        vae = AutoencoderKL(**config.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**config.text_encoder))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder_2))
    processors = adapter_processors(unet)
    counts = {
        "unet": base_unet,
        "controlnet": _count(controlnet),
        "face_resampler": _count(resamplers(unet)["face"]),
        "body_resampler": _count(resamplers(unet)["body"]),
        "face_kv": sum(_count(p.to_k_ip[0]) + _count(p.to_v_ip[0]) for p in processors),
        "body_kv": sum(_count(p.to_k_ip[1]) + _count(p.to_v_ip[1]) for p in processors),
        "vae": _count(vae),
        "text_encoder": _count(text_encoder),
        "text_encoder_2": _count(text_encoder_2),
    }
    if config.body_encoder is not None:
        with init_empty_weights():
            counts["body_encoder"] = _count(ViTModel(ViTConfig(**config.body_encoder)))
    trainable = sum(p.numel() for p in trainable_parameters(unet, controlnet).values())
    return {
        "config": config.name,
        "cross_attention_layers": len(processors),
        "parameters": counts,
        "trainable": trainable,
        "frozen": sum(counts.values()) - trainable,
    }
