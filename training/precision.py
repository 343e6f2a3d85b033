"""The precision policy of training: which parts are stored and computed in which dtype.

`bf16` (the article's GPUs): the frozen base (U-Net, text and body encoders) is stored in
bfloat16, the trainable parts (both identity branches and Pose-IdentityNet) stay float32
master weights for the optimiser, SDXL's VAE stays float32 (it overflows in half precision),
and every forward pass, the in-training evaluation's included, runs under bfloat16 autocast.
`bf16_pure`: the trainable parts are stored in bfloat16 too and no autocast runs, so every op,
the norms included, computes in bfloat16 with no casts between ops; `MasterWeights` keeps their
float32 copies, which the optimiser updates. `no`: float32 everywhere. The policy is the same
on every device, so the CPU tests run the GPU's policy.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.training_utils import cast_training_params

FROZEN_IN_COMPUTE_DTYPE = ("unet", "controlnet", "text_encoder", "text_encoder_2", "body_encoder")


@dataclass(frozen=True)
class PrecisionPolicy:
    compute_dtype: torch.dtype
    pure: bool = False  # the trainables computed in `compute_dtype` too, without autocast

    @classmethod
    def from_setting(cls, mixed_precision: str) -> PrecisionPolicy:
        """`training.mixed_precision`: "bf16", "bf16_pure" or "no"."""
        if mixed_precision == "no":
            return cls(torch.float32)
        return cls(torch.bfloat16, pure=mixed_precision == "bf16_pure")

    @property
    def mixed(self) -> bool:
        return self.compute_dtype != torch.float32

    def apply(self, components: dict[str, Any]) -> None:
        """Cast the model's parts in place (after they are on their device and the trainable
        parameters are marked). The trainables stay float32 here; under `bf16_pure`,
        `master_weights` casts them once it has kept their float32 copies."""
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

    def master_weights(self, named: dict[str, torch.nn.Parameter]) -> MasterWeights:
        """What the optimiser updates: float32 copies of the trainables under `bf16_pure`
        (the model's own are then cast to the compute dtype), the trainables themselves
        otherwise."""
        return MasterWeights(named, self.compute_dtype if self.pure else None)

    def autocast(self, device: torch.device, sampling: bool = False) -> AbstractContextManager:
        """The autocast every forward pass of training and evaluation runs under: none for
        `bf16_pure`'s denoiser, whose weights are all in the compute dtype already. Sampling
        (the pipeline, with its float32 VAE) runs under autocast in both bf16 modes."""
        enabled = self.mixed and (sampling or not self.pure)
        return torch.autocast(device.type, self.compute_dtype, enabled=enabled)


class MasterWeights:
    """Float32 master copies of trainable parameters that the model holds in a lower precision.

    The optimiser, gradient clipping and EMA work on `named`; after each backward pass
    `gradients_to_master` adds the model's gradients to theirs, and after each optimiser step
    `to_model` rounds the updated masters into the model. Checkpoints are written and read
    with the masters in the model (`in_model`), so they hold float32 weights either way.
    Without a `model_dtype` it is the identity: `named` are the model's own parameters.
    """

    def __init__(
        self, named: dict[str, torch.nn.Parameter], model_dtype: torch.dtype | None
    ) -> None:
        self.model = named
        self.named = named
        if model_dtype is not None:
            self.named = {
                name: torch.nn.Parameter(param.detach().float().clone())
                for name, param in named.items()
            }
            for param in named.values():
                param.data = param.data.to(model_dtype)

    @property
    def separate(self) -> bool:
        return self.named is not self.model

    @torch.no_grad()
    def gradients_to_master(self) -> None:
        """After every backward pass: the model's gradients are added to the masters' and
        cleared, so gradients accumulated over micro-steps are summed in float32, not in the
        model's precision."""
        if not self.separate:
            return
        for name, param in self.model.items():
            if param.grad is None:
                continue
            master, grad = self.named[name], param.grad.float()
            master.grad = grad if master.grad is None else master.grad.add_(grad)
            param.grad = None

    @torch.no_grad()
    def gradients_to_model(self) -> None:
        """Before the micro-step whose backward pass DDP all-reduces: the float32 sum so far goes
        back into the model's gradients (rounded once), since DDP reduces the model's
        gradients, not the masters'."""
        if not self.separate:
            return
        for name, param in self.model.items():
            master = self.named[name]
            if master.grad is not None:
                param.grad, master.grad = master.grad.to(param.dtype), None

    @torch.no_grad()
    def to_model(self) -> None:
        if self.separate:
            for name, param in self.model.items():
                param.copy_(self.named[name])

    @contextmanager
    def in_model(self, *modules: torch.nn.Module) -> Iterator[None]:
        """`modules` hold the float32 masters themselves until the block ends (a save reads
        them, a load writes into them); then the model's low-precision copies are refreshed
        from them. The masters take the parameters' places as attributes of their modules, and
        the parameters themselves are left untouched: changing a parameter's dtype in place
        would drop the gradient hooks DDP registered on it, and that rank would stop
        all-reducing."""
        if not self.separate:
            yield
            return
        masters = {id(param): self.named[name] for name, param in self.model.items()}
        places = [
            (owner, attribute, param)
            for module in modules
            for owner in module.modules()
            for attribute, param in owner.named_parameters(recurse=False)
            if id(param) in masters
        ]
        for owner, attribute, param in places:
            setattr(owner, attribute, masters[id(param)])
        try:
            yield
        finally:
            for owner, attribute, param in places:
                setattr(owner, attribute, param)
            self.to_model()
