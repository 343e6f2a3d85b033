"""Checkpoints (both adapters + Pose-IdentityNet) and pretrained weights from the models directory.

Everything here reads or writes files; what it builds comes from `architecture`, and the file
layout of the adapters from `convert`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, UNet2DConditionModel
from diffusers.models.model_loading_utils import load_state_dict
from transformers import (
    AutoImageProcessor,
    AutoModel,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from training.model.architecture import (
    attach_adapters,
    build_components,
    build_controlnet,
    set_trainable,
)
from training.model.config import (
    BODY_ENCODER_DIR,
    CHECKPOINT_INFO,
    CONFIGS,
    CONTROLNET_DIR,
    INSTANTID_ADAPTER,
    INSTANTID_CONTROLNET,
    INSTANTID_DIR,
    SDXL,
    SDXL_INPAINT_DIR,
    CheckpointInfo,
    ModelConfig,
)
from training.model.convert import load_adapter_state_dict, load_adapters, save_adapters

# ---------------------------------------------------------------------------------------------
# Checkpoints: both adapters (IP-Adapter files) + the ControlNet (diffusers layout)


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
