"""The precision policy of training: which parts are stored and computed in which dtype.

`bf16` (the article's GPUs): the frozen base (U-Net, text and body encoders) is stored in
bfloat16, the trainable parts (both identity branches and Pose-IdentityNet) stay float32
master weights for the optimiser, SDXL's VAE stays float32 (it overflows in half precision),
and every forward pass, the in-training evaluation's included, runs under bfloat16 autocast.
`no`: float32 everywhere. The policy is the same on every device, so the CPU tests run the
GPU's policy.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.training_utils import cast_training_params

FROZEN_IN_COMPUTE_DTYPE = ("unet", "controlnet", "text_encoder", "text_encoder_2", "body_encoder")


@dataclass(frozen=True)
class PrecisionPolicy:
    compute_dtype: torch.dtype

    @classmethod
    def from_setting(cls, mixed_precision: str) -> PrecisionPolicy:
        """`training.mixed_precision`: "bf16" or "no"."""
        return cls(torch.bfloat16 if mixed_precision == "bf16" else torch.float32)

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32

    def apply(self, components: dict[str, Any]) -> None:
        """Cast the model's parts in place (after they are on their device and the trainable
        parameters are marked)."""
        if not self.mixed:
            return
        for name in FROZEN_IN_COMPUTE_DTYPE:
            components[name].to(dtype=self.compute_dtype)
        components["vae"].to(dtype=torch.float32)
        self.keep_master_weights(components["unet"], components["controlnet"])

    def keep_master_weights(self, *modules: torch.nn.Module) -> None:
        """Trainable parameters back to float32 (after a cast or a checkpoint load)."""
        if self.mixed:
            cast_training_params(list(modules), dtype=torch.float32)

    def autocast(self, device: torch.device) -> AbstractContextManager:
        """The autocast every forward pass of training and evaluation runs under."""
        return torch.autocast(device.type, self.compute_dtype, enabled=self.mixed)
