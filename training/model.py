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

`python -m training.model summary --config sdxl` sizes the full model on the meta device.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0
from diffusers.models.embeddings import IPAdapterPlusImageProjection, MultiIPAdapterImageProjection
from diffusers.models.model_loading_utils import load_state_dict
from safetensors.torch import load_file, save_file
from transformers import (
    AutoImageProcessor,
    AutoModel,
    CLIPImageProcessorPil,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    ViTConfig,
    ViTModel,
)

from training.text import byte_level_tokenizer

BRANCHES = ("face", "body")  # order of the image branches in every processor and projection
LATENT_CHANNELS = 4
FACE_EMBED_DIM = 512  # ArcFace (antelopev2)

ADAPTER_FILES = {branch: f"ip-adapter-{branch}.safetensors" for branch in BRANCHES}
CONTROLNET_DIR = "pose_identitynet"
CHECKPOINT_INFO = "cameo_checkpoint.json"

# Folders under the models directory ($CAMEO_MODELS) that the full loader reads.
SDXL_INPAINT_DIR = "stable-diffusion-xl-1.0-inpainting-0.1"  # diffusers layout
INSTANTID_DIR = "InstantID"  # ControlNetModel/ (IdentityNet) and ip-adapter.bin
BODY_ENCODER_DIR = "InternViT-300M-448px"  # transformers layout
INSTANTID_CONTROLNET = "ControlNetModel"
INSTANTID_ADAPTER = "ip-adapter.bin"


@dataclass(frozen=True)
class ResamplerConfig:
    """Arguments of diffusers' `IPAdapterPlusImageProjection` (the Perceiver-Resampler).

    `load_ip_adapter` rebuilds resamplers with depth 4 and 64-wide heads, inferring the rest
    from the weights; both values are therefore fixed so the saved adapters load there.
    """

    embed_dims: int
    output_dims: int
    hidden_dims: int = 1280
    depth: int = 4
    dim_head: int = 64
    heads: int = 20
    num_queries: int = 16
    ffn_ratio: float = 4.0

    def __post_init__(self) -> None:
        if self.depth != 4 or self.dim_head != 64:
            raise ValueError("load_ip_adapter only reads resamplers of depth 4 with 64-wide heads")


@dataclass(frozen=True)
class ModelConfig:
    """Every size of the model, as plain JSON-able values.

    `unet`, `vae` and `scheduler` are diffusers config dicts, `text_encoder(_2)` and
    `body_encoder` transformers config dicts. `body_encoder` is None where the encoder is
    loaded from the models directory (InternViT ships its own code); `byte_tokenizers` builds
    file-free tokenizers for configs whose text encoders are random.
    """

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    scheduler: dict[str, Any]
    face_resampler: ResamplerConfig
    body_resampler: ResamplerConfig
    controlnet_conditioning_channels: tuple[int, ...]
    body_encoder: dict[str, Any] | None = None
    byte_tokenizers: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# diffusers/stable-diffusion-xl-1.0-inpainting-0.1, its VAE and text encoders (CLIP ViT-L/14
# and OpenCLIP ViT-bigG/14 text towers).
SDXL = ModelConfig(
    name="sdxl",
    unet={
        "in_channels": 9,
        "out_channels": 4,
        "sample_size": 128,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "force_upcast": True,
    },
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    text_encoder_2={
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
    scheduler=SCHEDULER,
    face_resampler=ResamplerConfig(embed_dims=FACE_EMBED_DIM, output_dims=2048),
    body_resampler=ResamplerConfig(embed_dims=1024, output_dims=2048),  # InternViT width
    controlnet_conditioning_channels=(16, 32, 96, 256),
)

# The same architecture at toy sizes, for CPU tests and the offline `tiny` profile.
TINY = ModelConfig(
    name="tiny",
    unet={
        "in_channels": 9,
        "out_channels": 4,
        "sample_size": 32,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2),
        "attention_head_dim": (2, 4),
        "cross_attention_dim": 64,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 80,  # 32 pooled + 6 time ids × 8
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "latent_channels": 4,
        "sample_size": 64,
        "force_upcast": False,
    },
    text_encoder={
        "vocab_size": 514,  # byte_level_tokenizer
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    },
    text_encoder_2={
        "vocab_size": 514,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": 1,
    },
    scheduler=SCHEDULER,
    face_resampler=ResamplerConfig(
        embed_dims=FACE_EMBED_DIM, output_dims=64, hidden_dims=32, heads=1, num_queries=4
    ),
    body_resampler=ResamplerConfig(
        embed_dims=32, output_dims=64, hidden_dims=32, heads=1, num_queries=4
    ),
    controlnet_conditioning_channels=(8, 16),  # one stride-2 step: the tiny VAE downsamples by 2
    body_encoder={
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 37,
        "image_size": 32,
        "patch_size": 8,
    },
    byte_tokenizers=True,
)

CONFIGS = {config.name: config for config in (SDXL, TINY)}


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
# Checkpoints: IP-Adapter files (load_ip_adapter's layout) + the ControlNet

# diffusers' resampler block names → the original IP-Adapter / InstantID `Resampler` names
# (layers.<i>.0 is PerceiverAttention, layers.<i>.1 the FeedForward Sequential). The original
# fuses to_k and to_v into one `to_kv`, keys first.
_RESAMPLER_NAMES = {
    "ln0": "0.norm1",
    "ln1": "0.norm2",
    "attn.to_q": "0.to_q",
    "attn.to_out.0": "0.to_out",
    "ff.0": "1.0",
    "ff.1.net.0.proj": "1.1",
    "ff.1.net.2": "1.3",
}
_RESAMPLER_NAMES_BACK = {original: ours for ours, original in _RESAMPLER_NAMES.items()}


def resampler_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `IPAdapterPlusImageProjection` state dict in IP-Adapter's `Resampler` names."""
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        prefix, param = key.rsplit(".", 1)
        _, block, module = prefix.split(".", 2)
        if module == "attn.to_k":
            to_v = state[f"layers.{block}.attn.to_v.{param}"]
            out[f"layers.{block}.0.to_kv.{param}"] = torch.cat([value, to_v])
        elif module != "attn.to_v":
            out[f"layers.{block}.{_RESAMPLER_NAMES[module]}.{param}"] = value
    return out


def resampler_from_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `resampler_to_original` (what `load_ip_adapter` does on reading)."""
    out = {}
    for key, value in state.items():
        if not key.startswith("layers."):
            out[key] = value
            continue
        prefix, param = key.rsplit(".", 1)
        _, block, module = prefix.split(".", 2)
        if module == "0.to_kv":
            to_k, to_v = value.chunk(2, dim=0)
            out[f"layers.{block}.attn.to_k.{param}"] = to_k
            out[f"layers.{block}.attn.to_v.{param}"] = to_v
        elif module in _RESAMPLER_NAMES_BACK:
            out[f"layers.{block}.{_RESAMPLER_NAMES_BACK[module]}.{param}"] = value
        else:
            raise KeyError(f"unexpected resampler weight {key}")
    return out


def adapter_state_dict(unet: UNet2DConditionModel, branch: str) -> dict[str, dict[str, Any]]:
    """One branch as `{"image_proj": …, "ip_adapter": {"1.to_k_ip.weight", …}}`.

    This is the layout of IP-Adapter / InstantID checkpoints and what `load_ip_adapter` reads:
    `ip_adapter` keys count cross-attention layers as 1, 3, 5, … in `attn_processors` order.
    """
    index = BRANCHES.index(branch)
    ip_adapter = {}
    for layer, processor in enumerate(adapter_processors(unet)):
        key = 2 * layer + 1
        ip_adapter[f"{key}.to_k_ip.weight"] = processor.to_k_ip[index].weight.detach()
        ip_adapter[f"{key}.to_v_ip.weight"] = processor.to_v_ip[index].weight.detach()
    image_proj = resampler_to_original(resamplers(unet)[branch].state_dict())
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def load_adapter_state_dict(
    unet: UNet2DConditionModel, branch: str, state: dict[str, dict[str, torch.Tensor]]
) -> None:
    """Load one branch from IP-Adapter layout; every key must match, none may be left over."""
    index = BRANCHES.index(branch)
    processors = adapter_processors(unet)
    expected = {
        f"{2 * layer + 1}.{name}.weight"
        for layer in range(len(processors))
        for name in ("to_k_ip", "to_v_ip")
    }
    found = set(state["ip_adapter"])
    if found != expected:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise KeyError(
            f"{branch} adapter keys do not match the U-Net's {len(processors)} cross-attention "
            f"layers: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    with torch.no_grad():
        for layer, processor in enumerate(processors):
            key = 2 * layer + 1
            processor.to_k_ip[index].weight.copy_(state["ip_adapter"][f"{key}.to_k_ip.weight"])
            processor.to_v_ip[index].weight.copy_(state["ip_adapter"][f"{key}.to_v_ip.weight"])
    resamplers(unet)[branch].load_state_dict(resampler_from_original(state["image_proj"]))


def save_adapters(unet: UNet2DConditionModel, directory: str | Path) -> list[Path]:
    """Write `ip-adapter-face.safetensors` and `ip-adapter-body.safetensors`.

    Flat safetensors with `image_proj.` / `ip_adapter.` prefixes, which
    `pipeline.load_ip_adapter(directory, subfolder="", weight_name=[face, body],
    image_encoder_folder=None)` reads as two IP-Adapters in branch order.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for branch in BRANCHES:
        state = adapter_state_dict(unet, branch)
        flat = {
            f"{group}.{key}": value.contiguous().clone()
            for group, values in state.items()
            for key, value in values.items()
        }
        path = directory / ADAPTER_FILES[branch]
        tmp = path.with_suffix(".tmp")
        save_file(flat, tmp)
        tmp.replace(path)
        paths.append(path)
    return paths


def load_adapters(unet: UNet2DConditionModel, directory: str | Path) -> None:
    """Load both branches written by `save_adapters` into an adapted U-Net."""
    for branch in BRANCHES:
        flat = load_file(Path(directory) / ADAPTER_FILES[branch])
        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        for key, value in flat.items():
            group, name = key.split(".", 1)
            state[group][name] = value
        load_adapter_state_dict(unet, branch, state)


@dataclass(frozen=True)
class CheckpointInfo:
    """`cameo_checkpoint.json`: what a checkpoint was trained on, enough to rebuild the frozen
    base it belongs to (`components_from_checkpoint`) and to trace it to its run and data."""

    config: str  # a ModelConfig name
    base_seed: int = 0  # configs without pretrained weights (tiny): the seed of the random base
    step: int = 0
    run_id: str | None = None  # the MLflow run that trained it
    dataset_md5: str | None = None  # the DVC md5 of data/triplets it was trained on

    @classmethod
    def read(cls, directory: str | Path) -> CheckpointInfo:
        path = Path(directory) / CHECKPOINT_INFO
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a cameo checkpoint (no {CHECKPOINT_INFO})")
        return cls(**json.loads(path.read_text()))


def save_checkpoint(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    directory: str | Path,
    info: CheckpointInfo | None = None,
) -> None:
    """Everything trained: both adapters, Pose-IdentityNet (diffusers layout) and `info`."""
    save_adapters(unet, directory)
    controlnet.save_pretrained(Path(directory) / CONTROLNET_DIR)
    if info is not None:
        (Path(directory) / CHECKPOINT_INFO).write_text(json.dumps(asdict(info), indent=2))


def load_controlnet_weights(controlnet: ControlNetModel, directory: str | Path) -> None:
    """Strictly load a diffusers-layout ControlNet folder into `controlnet`."""
    directory = Path(directory)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (directory / name).exists():
            controlnet.load_state_dict(load_state_dict(directory / name), strict=True)
            return
    raise FileNotFoundError(f"no diffusion_pytorch_model.safetensors or .bin in {directory}")


def load_checkpoint(
    unet: UNet2DConditionModel, controlnet: ControlNetModel, directory: str | Path
) -> None:
    load_adapters(unet, directory)
    load_controlnet_weights(controlnet, Path(directory) / CONTROLNET_DIR)


def load_instantid(
    unet: UNet2DConditionModel, controlnet: ControlNetModel, directory: str | Path
) -> None:
    """Initialise ICA1 from InstantID's `ip-adapter.bin` and Pose-IdentityNet from IdentityNet.

    `directory` is InstantID's release: `ip-adapter.bin` (`{"image_proj", "ip_adapter"}`) and
    `ControlNetModel/` (diffusers layout). Both load with strict key matching.
    """
    directory = Path(directory)
    state = torch.load(directory / INSTANTID_ADAPTER, map_location="cpu", weights_only=True)
    load_adapter_state_dict(unet, "face", state)
    load_controlnet_weights(controlnet, directory / INSTANTID_CONTROLNET)


# ---------------------------------------------------------------------------------------------
# Pretrained weights from the models directory


def load_body_encoder(
    directory: str | Path, trust_remote_code: bool = False
) -> tuple[torch.nn.Module, Any]:
    """A transformers vision encoder and its image processor.

    InternViT ships its own modelling code; running it is an explicit opt-in
    (`training.trust_remote_code` in params.yaml), never a default."""
    try:
        encoder = AutoModel.from_pretrained(directory, trust_remote_code=trust_remote_code)
        processor = AutoImageProcessor.from_pretrained(
            directory, trust_remote_code=trust_remote_code
        )
    except ValueError as error:
        if trust_remote_code or "trust_remote_code" not in str(error):
            raise
        raise ValueError(
            f"{directory} needs its own modelling code: set training.trust_remote_code: true "
            "in params.yaml to run it"
        ) from error
    return encoder.requires_grad_(False), processor


def load_components(
    models_dir: str | Path,
    config: ModelConfig = SDXL,
    checkpoint: str | Path | None = None,
    instantid: bool = True,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Pipeline components from local weights (`trust_remote_code`: see `load_body_encoder`).

    SDXL inpainting comes from `<models_dir>/stable-diffusion-xl-1.0-inpainting-0.1`, the body
    encoder from `<models_dir>/InternViT-300M-448px`. The trained parts come from `checkpoint`
    (written by `save_checkpoint`), else from InstantID's release in `<models_dir>/InstantID`
    (face branch and ControlNet; the body branch then starts from its initialisation).
    """
    models_dir = Path(models_dir)
    base = models_dir / SDXL_INPAINT_DIR
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    if unet.config.in_channels != config.unet["in_channels"]:
        raise ValueError(f"{base} is not an inpainting U-Net ({unet.config.in_channels} channels)")
    controlnet = build_controlnet(unet, config)
    attach_adapters(unet, config)
    if checkpoint is not None:
        load_checkpoint(unet, controlnet, checkpoint)
    elif instantid:
        load_instantid(unet, controlnet, models_dir / INSTANTID_DIR)
    set_trainable(unet, controlnet)
    body_encoder, body_processor = load_body_encoder(
        models_dir / BODY_ENCODER_DIR, trust_remote_code
    )
    return {
        "unet": unet,
        "controlnet": controlnet,
        "vae": AutoencoderKL.from_pretrained(base, subfolder="vae").requires_grad_(False),
        "text_encoder": CLIPTextModel.from_pretrained(
            base, subfolder="text_encoder"
        ).requires_grad_(False),
        "text_encoder_2": CLIPTextModelWithProjection.from_pretrained(
            base, subfolder="text_encoder_2"
        ).requires_grad_(False),
        "tokenizer": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer"),
        "tokenizer_2": CLIPTokenizer.from_pretrained(base, subfolder="tokenizer_2"),
        "scheduler": EulerDiscreteScheduler.from_pretrained(base, subfolder="scheduler"),
        "body_encoder": body_encoder,
        "body_processor": body_processor,
    }


def base_components(
    config: ModelConfig,
    models_dir: str | Path | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The model training starts from: random for configs that describe every part (`tiny`),
    else SDXL inpainting + InstantID + InternViT from `models_dir` (see `load_components`)."""
    if config.byte_tokenizers:
        return build_components(config, seed=seed)
    if models_dir is None:
        raise ValueError(f"the {config.name} config loads pretrained weights: pass models_dir")
    return load_components(models_dir, config, trust_remote_code=trust_remote_code)


def components_from_checkpoint(
    directory: str | Path, models_dir: str | Path | None = None, trust_remote_code: bool = False
) -> dict[str, Any]:
    """Pipeline components with the trained parts of a checkpoint written by `save_checkpoint`
    (with its `CheckpointInfo`), on the frozen base it was trained from."""
    info = CheckpointInfo.read(directory)
    if info.config not in CONFIGS:
        raise ValueError(f"{directory}: unknown model config {info.config!r}")
    config = CONFIGS[info.config]
    if config.byte_tokenizers:
        components = build_components(config, seed=info.base_seed)
        load_checkpoint(components["unet"], components["controlnet"], directory)
        return components
    if models_dir is None:
        raise ValueError(f"the {config.name} config loads pretrained weights: pass models_dir")
    return load_components(
        models_dir, config, checkpoint=directory, trust_remote_code=trust_remote_code
    )


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.model", description=summary.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    summary_parser = commands.add_parser("summary", help="parameter counts as JSON (meta device)")
    summary_parser.add_argument("--config", choices=sorted(CONFIGS), default="sdxl")
    args = parser.parse_args(argv)
    print(json.dumps(summary(CONFIGS[args.config]), indent=2))


if __name__ == "__main__":
    main()
