"""Consistent characters across a batch of SDXL images, training-free (article section 4.1,
after NVIDIA's ConsiStory, Tewel et al. 2024), on diffusers' attention-processor interface.

Each image of a batch of prompts about one character is denoised together with the others:

- **Subject-driven self-attention**: in the self-attention layers of the U-Net parts named in
  `parts` (the decoder, as ConsiStory does), an image's queries attend to all of its own
  patches and to the *subject* patches of the batch's anchor images (the first `anchors`).
  A subject mask is where the cross-attention to the prompt's subject token is high: the maps
  of the layers at the mask resolution, averaged over heads and layers in each step,
  thresholded with Otsu's method, and used from the next step on. Before any mask exists an
  image attends to itself alone, as plain self-attention.
- **Self-attention dropout**: each step, each subject patch is left out of the shared set
  with probability `mask_dropout`, so images keep layouts of their own.
- **Query blending**: in the first steps the queries are blended with those of a plain
  (vanilla) denoising of the same latents, strength falling from `query_strength[0]` to
  `query_strength[1]`, which keeps the vanilla layouts' variety.
- **Feature injection**: a first generation records each image's U-Net decoder features at
  the step nearest to `dift_timestep` (DIFT, diffusion features as dense correspondences);
  each subject patch of an image is matched to its nearest subject patch of an anchor image
  (cosine). A second generation from the same latents blends, in the steps of
  `inject_steps`, a matched patch's self-attention output with its anchor patch's
  (`inject_alpha`), where the match is closer than Otsu's threshold over the image's matches.

With guidance the U-Net sees [unconditional; conditional] halves: each half shares within
itself, with the masks of the conditional prompts. `shared_attention` is the method's core on
plain tensors, what the unit tests pin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from perception.descriptions import CharacterDescription, setting_prompts
from training.model.config import TINY, ModelConfig
from training.params import ConsistencyParams, SyntheticParams


def shared_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    subject: torch.Tensor,
    anchors: int,
    heads: int,
) -> torch.Tensor:
    """Subject-driven self-attention of one batch: (B, N, C) queries, keys and values of B
    images' N patches, `subject` (B, N) bool. Image i attends to its own N patches and to the
    subject patches of every anchor image j < `anchors`, j != i. Returns (B, N, C)."""
    batch, patches, channels = query.shape
    dim = channels // heads

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, patches, heads, dim).transpose(1, 2)  # (B, h, N, d)

    shared_k = split(key).transpose(0, 1).reshape(1, heads, batch * patches, dim)
    shared_v = split(value).transpose(0, 1).reshape(1, heads, batch * patches, dim)
    allowed = torch.zeros(batch, batch, patches, dtype=torch.bool, device=query.device)
    for i in range(batch):
        for j in range(batch):
            allowed[i, j] = True if i == j else (subject[j] if j < anchors else False)
    out = F.scaled_dot_product_attention(
        split(query),
        shared_k.expand(batch, -1, -1, -1),
        shared_v.expand(batch, -1, -1, -1),
        attn_mask=allowed.reshape(batch, 1, 1, batch * patches),
    )
    return out.transpose(1, 2).reshape(batch, patches, channels)


def otsu_mask(scores: torch.Tensor) -> torch.Tensor:
    """Scores above Otsu's threshold (between-class variance at its maximum); all
    False where the scores are flat."""
    low, high = float(scores.min()), float(scores.max())
    if high - low < 1e-8:
        return torch.zeros_like(scores, dtype=torch.bool)
    from skimage.filters import threshold_otsu

    return scores > float(threshold_otsu(scores.double().cpu().numpy()))


@dataclass
class ConsistencyState:
    """What the processors of one generation share: the step, the subject masks, the cached
    vanilla queries and the injection's matches."""

    settings: ConsistencyParams
    latent_size: tuple[int, int]  # (h, w) of the latents
    subject_tokens: list[list[int]]  # per image, the subject's positions in its prompt
    steps: int
    generator: torch.Generator
    step: int = 0
    masks: dict[int, torch.Tensor] = field(default_factory=dict)  # by N: (B, N) bool, dropped
    full_masks: dict[int, torch.Tensor] = field(default_factory=dict)  # before dropout
    maps: list[torch.Tensor] = field(default_factory=list)  # this step's cross-attention maps
    query_mode: str | None = None  # "cache" (the vanilla pass) or "blend"
    queries: dict[str, torch.Tensor] = field(default_factory=dict)
    matches: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    dift: torch.Tensor | None = None

    def shape_of(self, patches: int) -> tuple[int, int] | None:
        h, w = self.latent_size
        for factor in (1, 2, 4, 8, 16):
            if (h // factor) * (w // factor) == patches:
                return h // factor, w // factor
        return None

    def mask_patches(self) -> int:
        h, w = self.latent_size
        factor = max(max(h, w) // self.settings.mask_resolution, 1)
        return (h // factor) * (w // factor)

    def in_steps(self, span: tuple[float, float]) -> bool:
        return span[0] * self.steps <= self.step <= span[1] * self.steps

    def query_strength(self) -> float | None:
        last = int(self.settings.query_steps * self.steps)
        if self.step > last:
            return None
        first, final = self.settings.query_strength
        return first + (final - first) * (self.step / last if last else 0.0)

    def end_step(self) -> None:
        """Subject masks from this step's cross-attention maps, at every resolution, with the
        step's dropout; then the next step."""
        if self.maps:
            scores = torch.stack(self.maps).mean(0).cpu()  # (B, N) at the mask resolution
            shape = self.shape_of(scores.shape[1])
            grid = scores.reshape(-1, 1, *shape)
            for factor in (1, 2, 4, 8):
                h, w = self.latent_size[0] // factor, self.latent_size[1] // factor
                resized = F.interpolate(grid, size=(h, w), mode="bilinear").flatten(1)
                full = torch.stack([otsu_mask(image) for image in resized])
                keep = torch.rand(full.shape, generator=self.generator)
                self.full_masks[h * w] = full
                self.masks[h * w] = full & (keep >= self.settings.mask_dropout)
        self.maps = []
        self.step += 1


class SubjectCrossAttnProcessor:
    """Cross-attention as diffusers computes it, recording at the mask resolution how much each
    image's patches attend to its subject tokens (conditional half)."""

    def __init__(self, state: ConsistencyState) -> None:
        self.state = state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, None)
        state = self.state
        if state.query_mode != "cache" and hidden_states.shape[1] == state.mask_patches():
            batch = len(state.subject_tokens)
            per_image = probs.reshape(-1, attn.heads, *probs.shape[1:]).mean(1)[-batch:]
            tokens = state.subject_tokens
            state.maps.append(
                torch.stack([per_image[i][:, t].mean(-1) for i, t in enumerate(tokens)]).float()
            )
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


class SharedSelfAttnProcessor:
    """Self-attention of one U-Net layer with ConsiStory's sharing, query blending and feature
    injection (SDXL's transformer blocks: (B, N, C) inputs, no spatial or group norm)."""

    def __init__(self, state: ConsistencyState, name: str) -> None:
        self.state, self.name = state, name
        self.part = name.split(".")[0].removesuffix("_blocks").removesuffix("_block")

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **_):
        if attn.residual_connection or attn.spatial_norm is not None or hidden_states.ndim != 3:
            raise ValueError("ConsiStory's processors take SDXL's transformer self-attention")
        state, settings = self.state, self.state.settings
        query = attn.to_q(hidden_states)
        if state.query_mode == "cache":
            state.queries[self.name] = query
        elif state.query_mode == "blend" and self.name in state.queries:
            strength = state.query_strength()
            if strength is not None:
                query = strength * state.queries[self.name] + (1 - strength) * query
        key, value = attn.to_k(hidden_states), attn.to_v(hidden_states)
        patches = hidden_states.shape[1]
        subject = state.masks.get(patches)
        shares = state.query_mode != "cache" and self.part in settings.parts
        if shares and subject is not None:
            halves = _halves(query, subject)
            out = torch.cat(
                [
                    shared_attention(q, k, v, subject.to(q.device), settings.anchors, attn.heads)
                    for q, k, v in zip(
                        query.chunk(halves), key.chunk(halves), value.chunk(halves), strict=True
                    )
                ]
            )
        else:
            out = plain_attention(query, key, value, attn.heads)
        out = attn.to_out[1](attn.to_out[0](out.to(query.dtype)))
        if (
            state.matches is not None
            and state.query_mode != "cache"
            and self.part in settings.inject_parts
        ):
            out = self.inject(out, patches)
        return out / attn.rescale_output_factor

    def inject(self, out: torch.Tensor, patches: int) -> torch.Tensor:
        """Blend matched subject patches' outputs with their anchor patches' (both halves)."""
        state = self.state
        if patches not in state.matches or not state.in_steps(state.settings.inject_steps):
            return out
        source, index, use = (x.to(out.device) for x in state.matches[patches])
        alpha = state.settings.inject_alpha
        blended = []
        for half in out.chunk(_halves(out, use)):
            anchor = half[source, index]  # (B, N, C): each patch's matched anchor patch
            blended.append(torch.where(use[..., None], alpha * anchor + (1 - alpha) * half, half))
        return torch.cat(blended)


def plain_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, heads: int
) -> torch.Tensor:
    """Multi-head attention of (B, N, C) tensors, each image by itself."""
    batch, _, channels = query.shape

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, -1, heads, channels // heads).transpose(1, 2)

    out = F.scaled_dot_product_attention(split(query), split(key), split(value))
    return out.transpose(1, 2).reshape(batch, -1, channels)


def _halves(x: torch.Tensor, per_image: torch.Tensor) -> int:
    """How many guidance halves a U-Net batch holds (1 without guidance, 2 with)."""
    return x.shape[0] // per_image.shape[0]


def match_subjects(
    features: torch.Tensor, masks: torch.Tensor, anchors: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For features (B, C, h, w) and subject masks (B, h*w): each patch's best-matching anchor
    image and patch (cosine, among the anchors' subject patches other than its own image), and
    whether to inject there (a subject patch whose match beats Otsu's threshold of its
    image's match distances). Returns (source image, source patch, use), each (B, h*w)."""
    batch = features.shape[0]
    flat = F.normalize(features.flatten(2).transpose(1, 2).float(), dim=-1)  # (B, N, C)
    patches = flat.shape[1]
    source = torch.zeros(batch, patches, dtype=torch.long)
    index = torch.zeros(batch, patches, dtype=torch.long)
    use = torch.zeros(batch, patches, dtype=torch.bool)
    for i in range(batch):
        best = torch.full((patches,), -2.0)
        for j in range(min(anchors, batch)):
            if j == i or not masks[j].any():
                continue
            similarity = flat[i] @ flat[j].T  # (N, N)
            similarity[:, ~masks[j]] = -2.0
            value, where = similarity.max(dim=1)
            better = value > best
            best = torch.where(better, value, best)
            source[i] = torch.where(better, j, source[i])
            index[i] = torch.where(better, where, index[i])
        found = masks[i] & (best > -2.0)
        if found.any():
            distance = 1 - best
            close = ~otsu_mask(distance[found])
            use[i, found.nonzero().flatten()] = close
        source[i] = torch.where(use[i], source[i], i)
        index[i] = torch.where(use[i], index[i], torch.arange(patches))
    return source, index, use


def subject_token_positions(tokenizer: Any, prompts: list[str], subject: str) -> list[list[int]]:
    """Each prompt's token positions (BOS counted) that spell `subject`'s first occurrence."""
    word = tokenizer(subject, add_special_tokens=False)["input_ids"]
    positions = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"]
        start = next(
            (k for k in range(len(ids) - len(word) + 1) if ids[k : k + len(word)] == word), None
        )
        if start is None:
            raise ValueError(f"the subject {subject!r} is not in the prompt {prompt!r}")
        positions.append(list(range(start, start + len(word))))
    return positions


def install(unet: Any, state: ConsistencyState) -> dict[str, Any]:
    """ConsiStory's processors on every attention layer of `unet`; returns the ones replaced."""
    before = dict(unet.attn_processors)
    unet.set_attn_processor(
        {
            name: SharedSelfAttnProcessor(state, name)
            if name.endswith("attn1.processor")
            else SubjectCrossAttnProcessor(state)
            for name in before
        }
    )
    return before


def vanilla_queries_hook(state: ConsistencyState) -> Callable:
    """A U-Net forward pre-hook that, while query blending is on, first denoises without
    sharing to cache the vanilla queries, then lets the shared pass blend them."""
    running = {"inner": False}

    def hook(module, args, kwargs):
        if running["inner"]:
            return None
        if state.query_strength() is None:
            state.query_mode = None
            return None
        running["inner"], state.query_mode = True, "cache"
        try:
            module(*args, **kwargs)
        finally:
            running["inner"], state.query_mode = False, "blend"
        return None

    return hook


def dift_hook(state: ConsistencyState, timesteps: torch.Tensor) -> Callable:
    """A decoder-block forward hook keeping its output (conditional half) at the step whose
    timestep is nearest `dift_timestep`."""
    target = int(torch.argmin((timesteps.float() - state.settings.dift_timestep).abs()))

    def hook(module, args, output):
        if state.step == target and state.query_mode != "cache":
            batch = len(state.subject_tokens)
            state.dift = output[-batch:].detach().float().cpu()

    return hook


def generate_consistent(
    pipe: Any,
    prompts: list[str],
    subject: str,
    settings: ConsistencyParams,
    seed: int,
    steps: int,
    guidance_scale: float,
    size: tuple[int, int] | None = None,
    consistent: bool = True,
) -> tuple[list[Any], torch.Tensor | None]:
    """The batch's images from a diffusers SDXL text-to-image pipeline, and the final subject
    masks at the latent resolution (None with `consistent` off: plain, independent images from
    the same latents)."""
    height, width = size or (pipe.default_sample_size * pipe.vae_scale_factor,) * 2
    shape = (len(prompts), pipe.unet.config.in_channels, height // pipe.vae_scale_factor,
             width // pipe.vae_scale_factor)  # fmt: skip
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    call = dict(
        prompt=prompts,
        latents=latents.to(pipe.device, pipe.unet.dtype),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        output_type="pil",
    )
    if not consistent:
        return pipe(**call).images, None
    state = ConsistencyState(
        settings,
        (shape[2], shape[3]),
        subject_token_positions(pipe.tokenizer, prompts, subject),
        steps,
        torch.Generator().manual_seed(seed),
    )
    before = install(pipe.unet, state)
    pipe.scheduler.set_timesteps(steps)
    block = pipe.unet.up_blocks[settings.dift_block]
    hooks = [
        pipe.unet.register_forward_pre_hook(vanilla_queries_hook(state), with_kwargs=True),
        block.register_forward_hook(dift_hook(state, pipe.scheduler.timesteps)),
    ]

    def end_step(pipeline, step, timestep, outputs):
        state.end_step()
        return outputs

    try:
        images = pipe(**call, callback_on_step_end=end_step).images
        masks = state.full_masks.get(shape[2] * shape[3])
        if state.dift is not None and masks is not None:
            h, w = shape[2], shape[3]
            state.matches = {}
            for factor in (1, 2, 4):
                size_f = (h // factor, w // factor)
                features = F.interpolate(state.dift, size=size_f, mode="bilinear")
                state.matches[size_f[0] * size_f[1]] = match_subjects(
                    features, state.full_masks[size_f[0] * size_f[1]], settings.anchors
                )
            state.step, state.masks, state.full_masks = 0, {}, {}
            state.generator.manual_seed(seed)
            images = pipe(**call, callback_on_step_end=end_step).images
            masks = state.full_masks.get(shape[2] * shape[3], masks)
    finally:
        for hook in hooks:
            hook.remove()
        pipe.unet.set_attn_processor(before)
    return images, masks


def draw_batch(
    pipe: Any, character: CharacterDescription, params: SyntheticParams
) -> tuple[list[Any], list[str]]:
    """One character's batch: `synthetic.batch_size` images of it in distinct settings, drawn
    together (ConsiStory unless `synthetic.consistent` is off), and their prompts. The seed of
    the settings and the latents is the character's own, so a batch is redrawn alone."""
    index = int(character.character_id.rsplit("-", 1)[1])
    prompts = setting_prompts(character, params.batch_size, params.seed)
    images, _ = generate_consistent(
        pipe,
        prompts,
        character.subject,
        params.consistency,
        seed=params.seed * 1_000_003 + index,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        size=(params.size, params.size),
        consistent=params.consistent,
    )
    return images, prompts


def load_text_to_image(profile: str, models_dir: str | Path | None, model: str) -> Any:
    """The profile's SDXL text-to-image pipeline: in `full`, the diffusers folder `model` under
    the models directory (bf16 on a GPU), in `tiny` the random wiring model."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    def full() -> Any:
        from diffusers import StableDiffusionXLPipeline

        folder = resolve_models_dir(models_dir) / model
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(
                f"no diffusers pipeline (model_index.json) in {folder}: synthetic.model"
            )
        cuda = torch.cuda.is_available()
        pipe = StableDiffusionXLPipeline.from_pretrained(
            folder, torch_dtype=torch.bfloat16 if cuda else torch.float32
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe.to("cuda" if cuda else "cpu")

    return by_profile(profile, full=full, tiny=tiny_text_to_image)


def random_text_to_image(config: ModelConfig, seed: int = 0) -> Any:
    """An SDXL text-to-image pipeline of `config`'s architecture (its U-Net with 4 input
    channels) with random weights and file-free tokenizers: the `tiny` profile's wiring model,
    and at the `sdxl` config a stand-in whose speed is SDXL's (bench/synthetic_gpu.py)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from training.text import byte_level_tokenizer

    torch.manual_seed(seed)
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL(**config.vae),
        text_encoder=CLIPTextModel(CLIPTextConfig(**config.text_encoder)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**config.text_encoder_2)),
        tokenizer=byte_level_tokenizer(),
        tokenizer_2=byte_level_tokenizer(pad_token="!"),
        unet=UNet2DConditionModel(**{**config.unet, "in_channels": 4}),
        scheduler=EulerDiscreteScheduler(**config.scheduler),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_text_to_image(seed: int = 0) -> Any:
    """The `tiny` profile's generator: the tiny model's architecture, random weights."""
    return random_text_to_image(TINY, seed)
