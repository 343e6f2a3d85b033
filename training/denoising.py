"""The training objective: frozen encoders turn a batch into the denoiser's inputs, the
denoiser (U-Net with both identity branches and Pose-IdentityNet) predicts the noise, and the
loss compares (min-SNR weighted where set)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from training.acceleration import attention
from training.data import draw_condition_dropout, drop_condition
from training.distributed import Distributed
from training.model import predict_noise
from training.params import AttentionBackend
from training.precision import PrecisionPolicy
from training.text import encode_prompt

# What the frozen encoders make of a batch: the denoiser's inputs besides the face embedding,
# the pose drawing and the time ids, which the dataset gives as they are.
ENCODED = ("latents", "masked_latents", "mask", "prompt_embeds", "pooled", "body")


class FrozenEncoders:
    """VAE, both text encoders and the body encoder turn a batch into the denoiser's inputs
    (`ENCODED`), in the compute dtype. `training.features` runs them once per triplet and
    stores the result; training with `training.features: false` runs them every step."""

    def __init__(self, components: dict[str, Any], dtype: torch.dtype) -> None:
        self.vae = components["vae"]
        self.tokenizers = (components["tokenizer"], components["tokenizer_2"])
        self.text_encoders = (components["text_encoder"], components["text_encoder_2"])
        self.body_encoder = components["body_encoder"]
        self.dtype = dtype

    @torch.no_grad()
    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        vae = self.vae
        target = batch["target"].to(device, vae.dtype)
        mask = batch["mask"].to(device, vae.dtype)
        # The latent mean, not a sample: deterministic, so stored features equal online ones.
        latents = vae.encode(target).latent_dist.mode() * vae.config.scaling_factor
        masked = target * (mask < 0.5)
        masked_latents = vae.encode(masked).latent_dist.mode() * vae.config.scaling_factor
        prompt_embeds, pooled = encode_prompt(batch["prompt"], self.tokenizers, self.text_encoders)
        pixels = batch["body_pixels"].to(device, self.body_encoder.dtype)
        body = self.body_encoder(pixel_values=pixels).last_hidden_state
        encoded = {
            "latents": latents,
            "masked_latents": masked_latents,
            "mask": F.interpolate(mask, size=latents.shape[-2:]),  # as the inpaint pipeline
            "prompt_embeds": prompt_embeds,
            "pooled": pooled,
            "body": body,
        }
        return {k: v.to(self.dtype) for k, v in encoded.items()}


class Denoiser(torch.nn.Module):
    """U-Net (with both identity branches) and Pose-IdentityNet as one module for DDP, its
    attention computed by `attention_backend` (`training.acceleration.attention`)."""

    def __init__(
        self,
        unet: torch.nn.Module,
        controlnet: torch.nn.Module,
        attention_backend: AttentionBackend = "default",
    ) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.attention_backend = attention_backend

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with attention(self.attention_backend):
            return predict_noise(self.unet, self.controlnet, *args, **kwargs)


def denoising_loss(
    denoiser: torch.nn.Module,
    scheduler: DDPMScheduler,
    encoded: dict[str, torch.Tensor],
    batch: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    cfg_dropout: dict[str, float],
    snr_gamma: float,
) -> torch.Tensor:
    """The denoising loss of one batch: noise, CFG dropout, the denoiser, (min-SNR) MSE."""
    latents = encoded["latents"]
    batch_size = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator
    ).to(device)
    dropped = draw_condition_dropout(batch_size, cfg_dropout, generator)
    prompt_embeds = drop_condition(encoded["prompt_embeds"], dropped["text"])
    pooled = drop_condition(encoded["pooled"], dropped["text"])
    face = drop_condition(batch["face_embedding"].to(device, dtype), dropped["face"])
    body = drop_condition(encoded["body"], dropped["body"])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = denoiser(
        noisy,
        timesteps,
        encoded["mask"],
        encoded["masked_latents"],
        prompt_embeds,
        pooled,
        batch["time_ids"].to(device, dtype),
        face,
        body,
        batch["pose"].to(device, dtype),
    )
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        snr = compute_snr(scheduler, timesteps)
        weights = torch.minimum(snr, torch.full_like(snr, snr_gamma)) / snr
        if scheduler.config.prediction_type == "v_prediction":
            weights = weights * snr / (snr + 1)  # min-SNR's form for v-targets
        per_sample = per_sample * weights
    return per_sample.mean()


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    encoders: Callable[[dict[str, Any], torch.device], dict[str, torch.Tensor]],
    loader: Iterable[dict[str, Any]],
    env: Distributed,
    precision: PrecisionPolicy,
    seed: int,
) -> tuple[float, int]:
    """Mean denoising loss, and the samples it averages, over every rank's shard of the
    validation subset, with the same
    noise every time (seeded per rank) and no CFG dropout, so the numbers of one run are
    comparable step to step. Each rank computes only its shard; one all-reduce sums them."""
    model.eval()
    generator = torch.Generator().manual_seed(seed * 1000 + env.rank)
    total = torch.zeros(2, dtype=torch.float64, device=env.device)  # loss sum, samples
    for batch in loader:
        with precision.autocast(env.device):
            loss = denoising_loss(
                model,
                scheduler,
                encoders(batch, env.device),
                batch,
                generator,
                env.device,
                precision.compute_dtype,
                {},
                0.0,
            )
        count = len(batch["triplet_id"])
        total += torch.stack(
            [loss.detach().double() * count, torch.tensor(count, device=env.device)]
        )
    loss_sum, samples = env.all_sum(total).tolist()
    return loss_sum / samples, int(samples)
