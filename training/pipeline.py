"""`CharacterInpaintPipeline`: paint a reference character into the masked region of a base image.

The sampling loop is SDXL inpainting's (it reuses `StableDiffusionXLInpaintPipeline`'s latent,
mask and time-id helpers, so with every identity scale at 0 it reproduces that pipeline), with
the denoiser replaced by `training.model.predict_noise`: Pose-IdentityNet on the face tokens and
the pose image, then the 9-channel U-Net with the face (ICA1) and body (ICA2) branches. Like
diffusers' SDXL pipelines it takes `callback_on_step_end` and stops early when its `interrupt`
is set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DiffusionPipeline,
    StableDiffusionXLInpaintPipeline,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion_xl.pipeline_output import StableDiffusionXLPipelineOutput
from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_inpaint import (
    retrieve_timesteps,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from training.acceleration import accelerate, attention
from training.model import predict_noise, set_adapter_scales
from training.params import Acceleration, AttentionBackend
from training.text import encode_prompt

if TYPE_CHECKING:
    from perception.faces import FaceAnalyzer

# Takes the base image with everything but the target character blanked (RGB uint8, H×W×3) and
# returns the drawing of its 133 whole-body keypoints (RGB, same size).
PoseExtractor = Callable[[np.ndarray], "np.ndarray | PIL.Image.Image"]

# diffusers' `callback_on_step_end`: called as (pipeline, step index, timestep, the tensors named
# in `callback_on_step_end_tensor_inputs`) after each denoising step; returns the tensors to go
# on with.
StepEndCallback = (
    Callable[[DiffusionPipeline, int, torch.Tensor, dict[str, torch.Tensor]], dict[str, Any]]
    | PipelineCallback
    | MultiPipelineCallbacks
)


def _to_pil(image: PIL.Image.Image | np.ndarray, mode: str) -> PIL.Image.Image:
    if isinstance(image, np.ndarray):
        image = PIL.Image.fromarray(image)
    return image.convert(mode)


@dataclass(frozen=True)
class PaintSettings:
    """The knobs of one painting: identity and pose scales, guidance, steps and seed."""

    face_scale: float = 1.0
    body_scale: float = 1.0
    controlnet_scale: float = 1.0
    guidance_scale: float = 5.0
    num_inference_steps: int = 30
    seed: int = 0


class CharacterInpaintPipeline(StableDiffusionXLInpaintPipeline):
    """Identity-consistent character inpainting (SDXL inpainting + ICA1/ICA2 + Pose-IdentityNet).

    Components are those of `StableDiffusionXLInpaintPipeline` (its U-Net carrying the two image
    branches, see `training.model.attach_adapters`) plus `controlnet` (Pose-IdentityNet) and the
    body encoder with its image processor. `face_analyzer` (a `perception.faces.FaceAnalyzer`)
    and `pose_extractor` (a `PoseExtractor`, e.g. `perception.pose.MaskedPoseExtractor`, which
    draws poses exactly as the dataset's poses stage) turn a reference image into a face
    embedding and a masked base image into a pose drawing; either may be omitted when callers
    pass `face_embedding` / `pose_image` themselves.

    Trained adapters can also be loaded the diffusers way:
    `pipe.load_ip_adapter(dir, subfolder="", weight_name=[face_file, body_file],
    image_encoder_folder=None)` with the files written by `training.model.save_adapters`.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->body_encoder->controlnet->unet->vae"
    _optional_components: ClassVar[list[str]] = [
        "tokenizer",
        "tokenizer_2",
        "text_encoder",
        "text_encoder_2",
        "body_encoder",
        "body_processor",
    ]
    attention_backend: AttentionBackend = "default"  # see `enable_acceleration`

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        controlnet: ControlNetModel,
        scheduler: KarrasDiffusionSchedulers,
        body_encoder: torch.nn.Module | None = None,
        body_processor: Any = None,
        face_analyzer: FaceAnalyzer | None = None,
        pose_extractor: PoseExtractor | None = None,
        force_zeros_for_empty_prompt: bool = True,
        requires_aesthetics_score: bool = False,
    ) -> None:
        # The parent's __init__ would register an IP-Adapter CLIP image encoder; this pipeline
        # has its own encoders, so it registers its components itself.
        DiffusionPipeline.__init__(self)
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            controlnet=controlnet,
            scheduler=scheduler,
            body_encoder=body_encoder,
            body_processor=body_processor,
        )
        self.register_to_config(
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
            requires_aesthetics_score=requires_aesthetics_score,
        )
        self.face_analyzer = face_analyzer
        self.pose_extractor = pose_extractor
        self.watermark = None
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor,
            do_normalize=False,
            do_binarize=True,
            do_convert_grayscale=True,
        )
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=self.vae_scale_factor, do_convert_rgb=True, do_normalize=False
        )

    def enable_acceleration(self, acceleration: Acceleration) -> None:
        """The speed levers of `training.acceleration` on the U-Net and the ControlNet (call
        after moving the pipeline to its device and dtype). With `acceleration.compile`, the
        first call at each new size pays the compile time."""
        accelerate(acceleration, self.unet, self.controlnet)
        self.attention_backend = acceleration.attention_backend

    # -----------------------------------------------------------------------------------------
    # Conditions

    def encode_long_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, 154, 2048) hidden states and (1, 1280) pooled embedding, see `training.text`."""
        return encode_prompt(
            [prompt], (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2)
        )

    def encode_face(self, reference_image: PIL.Image.Image) -> np.ndarray:
        """The raw-scale ArcFace embedding (`embedding * raw_norm`) of the largest face in the
        reference image: InstantID's resampler and IdentityNet were trained on insightface's
        raw `face.embedding`, not the unit `normed_embedding`."""
        if self.face_analyzer is None:
            raise ValueError(
                "no face_analyzer configured: pass face_embedding, or build the pipeline with "
                "face_analyzer=perception.faces.<analyzer>"
            )
        faces = self.face_analyzer.detect(np.asarray(reference_image.convert("RGB")))
        if not faces:
            raise ValueError("no face found in the reference image")
        face = max(faces, key=lambda face: face.area)
        return (face.embedding * face.raw_norm).astype(np.float32)

    def encode_body(self, reference_image: PIL.Image.Image) -> torch.Tensor:
        """Body-encoder hidden states (1, S, D) of the (segmented) reference character."""
        if self.body_encoder is None or self.body_processor is None:
            raise ValueError("no body_encoder/body_processor configured: pass body_features")
        pixels = self.body_processor(images=reference_image.convert("RGB"), return_tensors="pt")
        pixel_values = pixels["pixel_values"].to(self.body_encoder.device, self.body_encoder.dtype)
        return self.body_encoder(pixel_values=pixel_values).last_hidden_state

    def extract_pose(self, base: PIL.Image.Image, inside: np.ndarray) -> np.ndarray:
        """Pose drawing of the masked character: the extractor sees only the masked pixels."""
        if self.pose_extractor is None:
            raise ValueError(
                "no pose_image given and no pose_extractor configured: pass pose_image, build "
                "the pipeline with pose_extractor=..., or set controlnet_scale=0"
            )
        masked = np.asarray(base) * inside[..., None]
        return np.asarray(_to_pil(self.pose_extractor(masked.astype(np.uint8)), "RGB"))

    # -----------------------------------------------------------------------------------------
    # Sampling

    @torch.no_grad()
    def __call__(
        self,
        image: PIL.Image.Image | np.ndarray,
        mask_image: PIL.Image.Image | np.ndarray,
        prompt: str,
        reference_image: PIL.Image.Image | np.ndarray | None = None,
        negative_prompt: str | None = None,
        face_embedding: torch.Tensor | np.ndarray | None = None,
        body_features: torch.Tensor | np.ndarray | None = None,
        pose_image: PIL.Image.Image | np.ndarray | None = None,
        face_scale: float = 1.0,
        body_scale: float = 1.0,
        controlnet_scale: float = 1.0,
        guidance_scale: float = 5.0,
        num_inference_steps: int = 30,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StableDiffusionXLPipelineOutput | tuple:
        """Inpaint the character of `reference_image` into the white region of `mask_image`.

        `image` is the base image, `mask_image` its mask (white = repaint). The reference gives
        the face embedding (through `face_analyzer`) and the body features (through the body
        encoder) unless `face_embedding` (512,) and `body_features` (S, D) are given;
        `face_embedding` is on the recogniser's raw scale (unit embedding × raw norm, the
        manifest's `face_embedding * face_embedding_raw_norm`), as `encode_face` returns it. Without
        `pose_image` the pose comes from `pose_extractor` on the masked base image.
        `face_scale`, `body_scale` and `controlnet_scale` weigh ICA1, ICA2 and Pose-IdentityNet.
        `seed` seeds a CPU generator (same result on every device); `generator` overrides it.

        The base image's size is kept (any SDXL bucket works; other sizes are generated at
        the nearest smaller multiple of the VAE factor and resized back). Pixels outside the
        mask are the base image's, unchanged. `output_type` is "pil", "np" (uint8 H×W×3) or
        "latent" (the final latents, before decoding and compositing).

        `callback_on_step_end` runs after each denoising step, as in diffusers' SDXL pipelines,
        with the tensors named in `callback_on_step_end_tensor_inputs` (any of
        `_callback_tensor_inputs`); what it returns replaces them. Setting `pipe._interrupt =
        True` there skips the remaining steps, and the latents so far are decoded.
        """
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', not {output_type!r}")
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: {sorted(unknown)} are not among "
                f"{self._callback_tensor_inputs}"
            )
        base = _to_pil(image, "RGB")
        mask = _to_pil(mask_image, "L")
        if base.size != mask.size:
            raise ValueError(f"image {base.size} and mask_image {mask.size} differ in size")
        inside = np.asarray(mask) >= 128  # the mask processor binarises at 0.5
        height, width = self.image_processor.get_default_height_width(base)
        device = self._execution_device
        dtype = self.unet.dtype
        do_cfg = guidance_scale > 1.0
        if generator is None:
            generator = torch.Generator("cpu").manual_seed(0 if seed is None else seed)

        # Identity: ArcFace embedding and body features, zeros for the unconditional branch.
        if face_embedding is None:
            if reference_image is None:
                raise ValueError("pass reference_image or face_embedding")
            face_embedding = self.encode_face(_to_pil(reference_image, "RGB"))
        if body_features is None:
            if reference_image is None:
                raise ValueError("pass reference_image or body_features")
            body_features = self.encode_body(_to_pil(reference_image, "RGB"))
        face = torch.as_tensor(face_embedding).reshape(1, -1).to(device, dtype)
        body = torch.as_tensor(body_features).to(device, dtype)
        body = body[None] if body.ndim == 2 else body

        prompt_embeds, pooled = self.encode_long_prompt(prompt)
        if do_cfg:
            if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
                negative_embeds, negative_pooled = (
                    torch.zeros_like(prompt_embeds),
                    torch.zeros_like(pooled),
                )
            else:
                negative_embeds, negative_pooled = self.encode_long_prompt(negative_prompt or "")
            prompt_embeds = torch.cat([negative_embeds, prompt_embeds])
            pooled = torch.cat([negative_pooled, pooled])
            face = torch.cat([torch.zeros_like(face), face])
            body = torch.cat([torch.zeros_like(body), body])
        prompt_embeds, pooled = prompt_embeds.to(device, dtype), pooled.to(device, dtype)

        pose = None
        if controlnet_scale != 0:
            if pose_image is None:
                pose_image = self.extract_pose(base, inside)
            pose = self.control_image_processor.preprocess(
                _to_pil(pose_image, "RGB"), height=height, width=width
            ).to(device, dtype)
            pose = torch.cat([pose] * 2) if do_cfg else pose

        # From here on, step for step what StableDiffusionXLInpaintPipeline does at strength 1.
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device
        )
        timesteps, num_inference_steps = self.get_timesteps(num_inference_steps, 1.0, device)
        init_image = self.image_processor.preprocess(base, height=height, width=width)
        init_image = init_image.to(dtype=torch.float32)
        mask_tensor = self.mask_processor.preprocess(mask, height=height, width=width)
        masked_image = init_image * (mask_tensor < 0.5)
        (latents,) = self.prepare_latents(
            1,
            self.vae.config.latent_channels,
            height,
            width,
            dtype,
            device,
            generator,
            image=init_image,
            timestep=timesteps[:1],
            is_strength_max=True,
        )
        mask_latents, masked_image_latents = self.prepare_mask_latents(
            mask_tensor, masked_image, 1, height, width, dtype, device, generator, do_cfg
        )
        size = (height, width)
        time_ids, negative_time_ids = self._get_add_time_ids(
            original_size=size,
            crops_coords_top_left=(0, 0),
            target_size=size,
            aesthetic_score=6.0,  # read only by refiner-style U-Nets (requires_aesthetics_score)
            negative_aesthetic_score=2.5,
            negative_original_size=size,
            negative_crops_coords_top_left=(0, 0),
            negative_target_size=size,
            dtype=dtype,
            text_encoder_projection_dim=self.text_encoder_2.config.projection_dim,
        )
        time_ids = torch.cat([negative_time_ids, time_ids]) if do_cfg else time_ids
        time_ids = time_ids.to(device)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, 0.0)

        set_adapter_scales(self.unet, face_scale, body_scale)
        self._num_timesteps = len(timesteps)
        self._interrupt = False
        with (
            attention(self.attention_backend),
            self.progress_bar(total=num_inference_steps) as progress_bar,
        ):
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                model_input = torch.cat([latents] * 2) if do_cfg else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                noise_pred = predict_noise(
                    self.unet,
                    self.controlnet,
                    model_input,
                    t,
                    mask_latents,
                    masked_image_latents,
                    prompt_embeds,
                    pooled,
                    time_ids,
                    face,
                    body,
                    pose,
                    controlnet_scale,
                )
                if do_cfg:
                    uncond, cond = noise_pred.chunk(2)
                    noise_pred = uncond + guidance_scale * (cond - uncond)
                latents = self.scheduler.step(
                    noise_pred, t, latents, **extra_step_kwargs, return_dict=False
                )[0]
                if callback_on_step_end is not None:
                    # The names are those of StableDiffusionXLInpaintPipeline's loop.
                    step_tensors = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "add_text_embeds": pooled,
                        "add_time_ids": time_ids,
                        "mask": mask_latents,
                        "masked_image_latents": masked_image_latents,
                    }
                    outputs = callback_on_step_end(
                        self,
                        i,
                        t,
                        {name: step_tensors[name] for name in callback_on_step_end_tensor_inputs},
                    )
                    latents = outputs.pop("latents", latents)
                    prompt_embeds = outputs.pop("prompt_embeds", prompt_embeds)
                    pooled = outputs.pop("add_text_embeds", pooled)
                    time_ids = outputs.pop("add_time_ids", time_ids)
                    mask_latents = outputs.pop("mask", mask_latents)
                    masked_image_latents = outputs.pop("masked_image_latents", masked_image_latents)
                progress_bar.update()

        if output_type == "latent":
            self.maybe_free_model_hooks()
            return StableDiffusionXLPipelineOutput(images=latents) if return_dict else (latents,)

        decoded = self.decode(latents)
        generated = self.image_processor.postprocess(decoded, output_type="pil")[0]
        if generated.size != base.size:
            generated = generated.resize(base.size, PIL.Image.Resampling.LANCZOS)
        result = np.where(inside[..., None], np.asarray(generated), np.asarray(base))
        self.maybe_free_model_hooks()
        images: Any = [PIL.Image.fromarray(result)] if output_type == "pil" else result[None]
        return StableDiffusionXLPipelineOutput(images=images) if return_dict else (images,)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode in [-1, 1], upcasting a float16 VAE as SDXL's VAE needs."""
        needs_upcasting = self.vae.dtype == torch.float16 and self.vae.config.force_upcast
        vae_dtype = self.vae.dtype
        if needs_upcasting:
            self.vae.to(dtype=torch.float32)
        try:
            latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
            return self.vae.decode(latents, return_dict=False)[0]
        finally:  # also when a stopped call raises inside the VAE: the next call needs float16
            if needs_upcasting:
                self.vae.to(dtype=vae_dtype)

    def paint(
        self,
        base: PIL.Image.Image,
        mask: PIL.Image.Image,
        prompt: str,
        reference: PIL.Image.Image,
        face_embedding: np.ndarray | None,
        pose: PIL.Image.Image | None,
        settings: PaintSettings,
        negative_prompt: str | None = None,
        callback_on_step_end: StepEndCallback | None = None,
    ) -> PIL.Image.Image:
        """One output image: the call the served model and the evaluation both make;
        `callback_on_step_end` as in `__call__` (with the latents)."""
        return self(
            image=base,
            mask_image=mask,
            prompt=prompt,
            reference_image=reference,
            negative_prompt=negative_prompt,
            face_embedding=face_embedding,
            pose_image=pose,
            callback_on_step_end=callback_on_step_end,
            **asdict(settings),
        ).images[0]
