"""Long-prompt (154-token) encoding."""

from __future__ import annotations

import torch
from tiny_scene import sdxl_inpaint_pipeline

from training.model import SDXL, TINY
from training.text import MAX_PROMPT_TOKENS, WINDOW, encode_prompt, tokenize_windows


def _encoders(tiny):
    return (tiny["tokenizer"], tiny["tokenizer_2"]), (tiny["text_encoder"], tiny["text_encoder_2"])


def test_windows_wrap_each_chunk_in_bos_eos(tiny):
    tokenizer = tiny["tokenizer_2"]
    long_prompt = "x" * 100  # one byte-level token per character
    ids = tokenize_windows(tokenizer, ["hi", long_prompt])
    assert ids.shape == (2, 2, WINDOW)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert (ids[:, :, 0] == bos).all()
    short = ids[0]
    assert short[0, 3] == eos and (short[0, 4:] == pad).all()
    assert short[1, 1] == eos and (short[1, 2:] == pad).all()  # an empty window still has EOS
    long = ids[1]
    assert long[0, 76] == eos and long[1, 26] == eos  # 75 + 25 tokens


def test_text_past_150_tokens_is_dropped(tiny):
    tokenizer = tiny["tokenizer"]
    ids = tokenize_windows(tokenizer, ["y " * 150, "y " * 400])
    assert torch.equal(ids[0], ids[1])


def test_154_token_prompts_encode_to_sdxl_shapes(tiny):
    prompts = ["a man playing a piano", "a very long description " * 12]
    embeds, pooled = encode_prompt(prompts, *_encoders(tiny))
    width = TINY.text_encoder["hidden_size"] + TINY.text_encoder_2["hidden_size"]
    assert width == TINY.unet["cross_attention_dim"]
    assert embeds.shape == (2, MAX_PROMPT_TOKENS, width)
    assert pooled.shape == (2, TINY.text_encoder_2["projection_dim"])
    # The same arithmetic at full size: 768 + 1280 = SDXL's 2048-wide cross-attention.
    sdxl_width = SDXL.text_encoder["hidden_size"] + SDXL.text_encoder_2["hidden_size"]
    assert sdxl_width == SDXL.unet["cross_attention_dim"]


def test_first_window_equals_diffusers_encoding(tiny):
    pipe = sdxl_inpaint_pipeline(tiny, tiny["unet"])
    prompt = "a boy in a green t-shirt holding a pen"
    expected, _, expected_pooled, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False)
    embeds, pooled = encode_prompt(prompt, *_encoders(tiny))
    # Equal up to float rounding: both windows go through the encoder as one batch.
    torch.testing.assert_close(embeds[:, :WINDOW], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled, expected_pooled, rtol=1e-5, atol=1e-6)


def test_second_window_carries_the_tail_of_long_prompts(tiny):
    head = "a " * 70
    a, _ = encode_prompt(head + "red hat", *_encoders(tiny))
    b, _ = encode_prompt(head + "blue coat", *_encoders(tiny))
    assert not torch.equal(a[:, WINDOW:], b[:, WINDOW:])
