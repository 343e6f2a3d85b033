"""Sizes and names of the model: the `sdxl` and `tiny` presets, and the file layout of its weights.

Plain data only, so that serving, the orchestration and the tests can read names and sizes
without importing torch-heavy code paths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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

# The same architecture at toy sizes, for CPU tests and the offline `tiny` profile. Its VAE
# downsamples by 8, as SDXL's: latents of an image, and so the U-Net's attention, have SDXL's
# sizes (a 640x360 frame: 80x45 latents; at a factor of 2 the VAE's and U-Net's attention
# over 320x180 latents took 100 s on two cores).
TINY = ModelConfig(
    name="tiny",
    unet={
        "in_channels": 9,
        "out_channels": 4,
        "sample_size": 8,  # 64 px
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
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (32, 32, 64, 64),
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
    controlnet_conditioning_channels=(8, 16, 32, 32),  # three stride-2 steps: the VAE's 8
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
