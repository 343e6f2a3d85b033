"""ConsiStory's consistent batches (issue 36, article section 4.1) on tiny shapes: what an
image's self-attention reads of the others, the subject masks and correspondences, and one
tiny SDXL generation through diffusers' pipeline with the processors installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training import consistory
from training.consistory import (
    generate_consistent,
    match_subjects,
    otsu_mask,
    plain_attention,
    shared_attention,
    subject_token_positions,
    tiny_text_to_image,
)
from training.params import ConsistencyParams

HEADS = 2


def batch(seed: int = 0, images: int = 2, patches: int = 6, channels: int = 8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(images, patches, channels, generator=g) for _ in range(3)]


def test_an_image_reads_the_anchors_subject_patches_and_not_their_background():
    query, key, value = batch()
    subject = torch.tensor([[False] * 6, [True, True, False, False, False, False]])
    first = shared_attention(query, key, value, subject, anchors=2, heads=HEADS)[0]

    def first_after(patch: int) -> torch.Tensor:
        k, v = key.clone(), value.clone()
        k[1, patch] += 3.0
        v[1, patch] += 3.0
        return shared_attention(query, k, v, subject, anchors=2, heads=HEADS)[0]

    assert not torch.allclose(first_after(0), first)  # image 1's subject patch
    assert torch.equal(first_after(4), first)  # image 1's background patch
    # Image 1 is no anchor: image 0 reads none of it, and image 1 still reads image 0's subject.
    both = subject | torch.tensor([[True] + [False] * 5, [False] * 6])
    alone = shared_attention(query, key, value, both, anchors=1, heads=HEADS)
    k = key.clone()
    k[1, 0] += 3.0
    assert torch.equal(shared_attention(query, k, value, both, anchors=1, heads=HEADS)[0], alone[0])
    k = key.clone()
    k[0, 0] += 3.0
    assert not torch.allclose(shared_attention(query, k, value, both, 1, HEADS)[1], alone[1])


def test_with_the_method_off_or_no_subject_the_images_are_independent():
    query, key, value = batch()
    plain = plain_attention(query, key, value, HEADS)
    k = key.clone()
    k[1] += 3.0
    assert torch.equal(plain_attention(query, k, value, HEADS)[0], plain[0])
    nothing = torch.zeros(2, 6, dtype=torch.bool)
    torch.testing.assert_close(shared_attention(query, key, value, nothing, 2, HEADS), plain)


def test_subject_masks_and_correspondences():
    scores = torch.tensor([0.1, 0.12, 0.9, 0.95, 0.11, 0.88])
    assert otsu_mask(scores).tolist() == [False, False, True, True, False, True]
    assert not otsu_mask(torch.ones(4)).any()
    # Image 1's subject patches 0 and 1 look like the anchor's subject patches 3 and 2.
    features = torch.randn(2, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    flat = features.flatten(2)
    flat[1, :, 0], flat[1, :, 1] = flat[0, :, 3], flat[0, :, 2]
    features = flat.reshape(2, 4, 2, 2)
    masks = torch.tensor([[False, False, True, True], [True, True, False, False]])
    source, index, use = match_subjects(features, masks, anchors=1)
    assert use[1].tolist()[2:] == [False, False] and not use[0].any()  # the anchor: none
    for patch in np.nonzero(use[1].numpy())[0]:
        assert (source[1, patch], index[1, patch]) == (0, 3 - patch)


def test_a_tiny_sdxl_batch_is_generated_consistently_and_deterministically(monkeypatch):
    calls = {"shared": 0, "injected": 0}

    def counted_shared(*args, **kwargs):
        calls["shared"] += 1
        return shared_attention(*args, **kwargs)

    inject = consistory.SharedSelfAttnProcessor.inject

    def counted_inject(self, out, patches):
        blended = inject(self, out, patches)
        calls["injected"] += not torch.equal(blended, out)
        return blended

    monkeypatch.setattr(consistory, "shared_attention", counted_shared)
    monkeypatch.setattr(consistory.SharedSelfAttnProcessor, "inject", counted_inject)
    pipe = tiny_text_to_image()
    prompts = ["a woman walking in a forest", "a woman reading in a library", "a woman running"]
    assert subject_token_positions(pipe.tokenizer, prompts, "woman")[0] == [
        2,
        3,
        4,
        5,
        6,
    ]  # BOS, "a", then w-o-m-a-n
    with pytest.raises(ValueError, match="'woman' is not in the prompt 'a man'"):
        subject_token_positions(pipe.tokenizer, ["a man"], "woman")
    settings = ConsistencyParams(mask_resolution=8, dift_timestep=500)
    call = dict(subject="woman", settings=settings, seed=0, steps=4, guidance_scale=2.0)
    images, masks = generate_consistent(pipe, prompts, size=(128, 128), **call)
    again, _ = generate_consistent(pipe, prompts, size=(128, 128), **call)
    plain, none = generate_consistent(pipe, prompts, size=(128, 128), consistent=False, **call)
    assert len(images) == 3 and images[0].size == (128, 128) and none is None
    assert masks.shape == (3, 256) and masks.dtype == torch.bool and masks.any()
    assert calls["shared"] > 0 and calls["injected"] > 0  # both passes did their part
    pixels = [np.asarray(image, np.int16) for image in (images[2], again[2], plain[2])]
    assert np.array_equal(pixels[0], pixels[1])  # the same seed, the same batch
    assert np.abs(pixels[0] - pixels[2]).max() > 0  # sharing changed the non-anchor image
    # The processors are the pipeline's own again afterwards.
    assert not any("Shared" in type(p).__name__ for p in pipe.unet.attn_processors.values())
