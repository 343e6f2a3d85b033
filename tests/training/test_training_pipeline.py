"""CharacterInpaintPipeline on the tiny config."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch
from tiny_scene import Scene, randomize_controlnet_outputs, sdxl_inpaint_pipeline

from perception.pose import MaskedPoseExtractor, RTMPoseEstimator
from training.model import TINY
from training.pipeline import CharacterInpaintPipeline
from training.text import encode_prompt

PROMPT = "a man playing a piano"
NEGATIVE = "blurry, low quality"


def _pipeline(tiny, **kwargs) -> CharacterInpaintPipeline:
    pipe = CharacterInpaintPipeline(**tiny, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe, scene: Scene, **kwargs):
    arguments = {
        "image": scene.base,
        "mask_image": scene.mask,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "face_embedding": scene.face,
        "body_features": scene.body,
        "pose_image": scene.pose,
        "num_inference_steps": 3,
        "seed": 7,
    }
    return pipe(**{**arguments, **kwargs}).images


def test_zero_scales_reproduce_sdxl_inpainting(tiny, scene):
    ours = _pipeline(tiny)
    reference = sdxl_inpaint_pipeline(tiny)
    tokenizers = (tiny["tokenizer"], tiny["tokenizer_2"])
    encoders = tokenizers, (tiny["text_encoder"], tiny["text_encoder_2"])
    prompt_embeds, pooled = encode_prompt(PROMPT, *encoders)
    negative_embeds, negative_pooled = encode_prompt(NEGATIVE, *encoders)
    width, height = scene.base.size

    def diffusers(output_type):
        return reference(
            image=scene.base,
            mask_image=scene.mask,
            prompt_embeds=prompt_embeds,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=negative_embeds,
            negative_pooled_prompt_embeds=negative_pooled,
            height=height,
            width=width,
            strength=1.0,
            guidance_scale=5.0,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(7),
            output_type=output_type,
        ).images

    zero = {"face_scale": 0.0, "body_scale": 0.0, "controlnet_scale": 0.0}
    randomize_controlnet_outputs(tiny["controlnet"])  # at scale 0 it must not matter
    latents = _run(ours, scene, output_type="latent", **zero)
    torch.testing.assert_close(latents, diffusers("latent"), rtol=0, atol=0)

    image = np.asarray(_run(ours, scene, **zero)[0])
    expected = np.asarray(reference.image_processor.numpy_to_pil(diffusers("np"))[0])
    expected = np.where(scene.inside[..., None], expected, np.asarray(scene.base))
    np.testing.assert_array_equal(image, expected)


@pytest.mark.parametrize(
    "scales",
    [
        {"face_scale": 1.0, "body_scale": 0.0, "controlnet_scale": 0.0},
        {"face_scale": 0.0, "body_scale": 1.0, "controlnet_scale": 0.0},
        {"face_scale": 0.0, "body_scale": 0.0, "controlnet_scale": 1.0},
    ],
    ids=["face", "body", "controlnet"],
)
def test_each_branch_changes_the_output(tiny, scene, scales):
    randomize_controlnet_outputs(tiny["controlnet"])
    pipe = _pipeline(tiny)
    zero = {"face_scale": 0.0, "body_scale": 0.0, "controlnet_scale": 0.0}
    baseline = _run(pipe, scene, output_type="latent", **zero)
    changed = _run(pipe, scene, output_type="latent", **scales)
    assert (changed - baseline).abs().max() > 1e-4


def test_identity_reaches_the_output(tiny, scene):
    pipe = _pipeline(tiny)
    a = _run(pipe, scene, output_type="latent")
    b = _run(pipe, scene, output_type="latent", face_embedding=-scene.face)
    c = _run(pipe, scene, output_type="latent", body_features=-scene.body)
    assert not torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, _run(pipe, scene, output_type="latent"))  # seeded: reproducible


# SDXL's aspect-ratio buckets, scaled by 1/16 for the tiny model, plus a size off every grid.
SIZES = [(64, 64), (56, 72), (72, 56), (48, 84), (84, 48), (40, 96), (37, 50)]


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_any_bucket_works_and_pixels_outside_the_mask_are_unchanged(tiny, height, width):
    randomize_controlnet_outputs(tiny["controlnet"])
    scene = Scene(height, width, seed=height * width)
    image = np.asarray(_run(_pipeline(tiny), scene, num_inference_steps=2)[0])
    base = np.asarray(scene.base)
    assert image.shape == base.shape
    np.testing.assert_array_equal(image[~scene.inside], base[~scene.inside])
    assert (image[scene.inside] != base[scene.inside]).any()


def test_step_end_callback_sees_each_step_and_interrupt_stops_the_loop(tiny, scene):
    pipe = _pipeline(tiny)
    seen = []

    def stop_after_first(pipe, step, timestep, tensors):
        seen.append((step, tensors["latents"].clone()))
        pipe._interrupt = True
        return tensors

    latents = _run(pipe, scene, output_type="latent", callback_on_step_end=stop_after_first)
    assert [step for step, _ in seen] == [0] and pipe.interrupt and pipe.num_timesteps == 3
    torch.testing.assert_close(latents, seen[0][1], rtol=0, atol=0)

    def replace_latents(pipe, step, timestep, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])}

    zeros = _run(pipe, scene, output_type="latent", callback_on_step_end=replace_latents)
    assert not pipe.interrupt and not zeros.any()
    with pytest.raises(ValueError, match="pooled"):
        _run(
            pipe,
            scene,
            callback_on_step_end=replace_latents,
            callback_on_step_end_tensor_inputs=["pooled"],
        )


def test_np_output_is_uint8(tiny, scene):
    images = _run(_pipeline(tiny), scene, output_type="np", num_inference_steps=1)
    assert images.dtype == np.uint8 and images.shape == (1, *np.asarray(scene.base).shape)


class _RecordingPoseExtractor(MaskedPoseExtractor):
    """The dataset's pose extractor (tiny RTMPose), remembering what it was shown."""

    def __init__(self) -> None:
        super().__init__(RTMPoseEstimator.tiny(), min_keypoints=1)
        self.seen: list[np.ndarray] = []

    def __call__(self, masked: np.ndarray) -> np.ndarray:
        self.seen.append(masked)
        return super().__call__(masked)


def test_pose_is_extracted_from_the_masked_base_image(tiny, scene):
    drawer = _RecordingPoseExtractor()
    _run(_pipeline(tiny, pose_extractor=drawer), scene, pose_image=None, num_inference_steps=1)
    (seen,) = drawer.seen
    base = np.asarray(scene.base)
    np.testing.assert_array_equal(seen[scene.inside], base[scene.inside])
    assert not seen[~scene.inside].any()


def test_missing_pose_extractor_is_a_clear_error(tiny, scene):
    with pytest.raises(ValueError, match="pose_extractor"):
        _run(_pipeline(tiny), scene, pose_image=None)
    # Without the ControlNet no pose is needed.
    _run(_pipeline(tiny), scene, pose_image=None, controlnet_scale=0.0, num_inference_steps=1)


def test_reference_image_goes_through_face_analyzer_and_body_encoder(tiny, scene):
    from skimage import data

    from perception.faces import TinyFaceAnalyzer

    analyzer = TinyFaceAnalyzer()
    reference = PIL.Image.fromarray(data.astronaut())
    pipe = _pipeline(tiny, face_analyzer=analyzer)
    detected = max(analyzer.detect(data.astronaut()), key=lambda f: f.area)
    face = pipe.encode_face(reference)
    # Raw scale: what InstantID's resampler was trained on, not the unit vector.
    np.testing.assert_allclose(face, detected.embedding * detected.raw_norm, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(face), detected.raw_norm, rtol=1e-5)
    assert abs(detected.raw_norm - 1.0) > 1e-3
    body = pipe.encode_body(reference)
    assert body.shape == (1, 17, TINY.body_resampler.embed_dims)

    from_reference = _run(
        pipe,
        scene,
        reference_image=reference,
        face_embedding=None,
        body_features=None,
        output_type="latent",
        num_inference_steps=1,
    )
    precomputed = _run(
        pipe,
        scene,
        face_embedding=face,
        body_features=body[0],
        output_type="latent",
        num_inference_steps=1,
    )
    assert torch.equal(from_reference, precomputed)


def test_missing_identity_inputs_are_clear_errors(tiny, scene):
    pipe = _pipeline(tiny)
    with pytest.raises(ValueError, match="reference_image or face_embedding"):
        _run(pipe, scene, face_embedding=None)
    with pytest.raises(ValueError, match="face_analyzer"):
        _run(pipe, scene, face_embedding=None, reference_image=scene.base)
