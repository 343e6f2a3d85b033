"""Long-prompt (154-token) encoding for SDXL's two CLIP text encoders.

CLIP reads 77 positions: a BOS, 75 tokens and an EOS. Prompts longer than that (the article
trains on descriptive prompts up to 154 tokens, following kohya's sd-scripts) are split into
two 75-token windows, each wrapped in its own BOS/EOS and padded to 77, encoded separately and
concatenated along the sequence: 2 × 77 = 154 hidden states. The pooled embedding (SDXL's
`text_embeds`) is the second encoder's projection of the first window, as in sd-scripts.

For a prompt of at most 75 tokens the first window is exactly what diffusers'
`StableDiffusionXLPipeline.encode_prompt` computes. Training and inference both call
`encode_prompt` below, so the model sees the same layout in both.
"""

from __future__ import annotations

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MAX_PROMPT_TOKENS = 154
WINDOW = 77  # CLIP's context: BOS + 75 tokens + EOS
WINDOW_TOKENS = WINDOW - 2
NUM_WINDOWS = MAX_PROMPT_TOKENS // WINDOW


def byte_level_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """A CLIP tokenizer that needs no files: one token per byte, no merges (514 ids).

    It stands in for CLIP's 49408-token BPE vocabulary where no tokenizer files exist (the
    `tiny` profile); windows, padding and pooling behave exactly as with the real one.
    """
    specials = ["<|startoftext|>", "<|endoftext|>"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = specials + alphabet + [f"{char}</w>" for char in alphabet]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token=pad_token, model_max_length=WINDOW)


def tokenize_windows(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids of shape (batch, NUM_WINDOWS, 77); text past 150 tokens is dropped.

    Each window is BOS + up to 75 tokens + EOS + the tokenizer's pad token, so every window,
    empty ones included, has an EOS for the pooled projection to read.
    """
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = []
    for prompt in prompts:
        encoded = tokenizer(prompt, add_special_tokens=False, truncation=False, verbose=False)
        ids = encoded["input_ids"][: NUM_WINDOWS * WINDOW_TOKENS]
        windows = []
        for start in range(0, NUM_WINDOWS * WINDOW_TOKENS, WINDOW_TOKENS):
            chunk = [bos, *ids[start : start + WINDOW_TOKENS], eos]
            windows.append(chunk + [pad] * (WINDOW - len(chunk)))
        batch.append(windows)
    return torch.tensor(batch, dtype=torch.long)


@torch.no_grad()
def encode_prompt(
    prompts: str | list[str],
    tokenizers: tuple[CLIPTokenizer, CLIPTokenizer],
    text_encoders: tuple[CLIPTextModel, CLIPTextModelWithProjection],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts for SDXL with up to 154 tokens.

    Returns `prompt_embeds` (batch, 154, dim_1 + dim_2), the penultimate hidden states of both
    encoders side by side as SDXL expects, and `pooled_prompt_embeds` (batch, projection_dim).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    hidden, pooled = [], None
    for tokenizer, encoder in zip(tokenizers, text_encoders, strict=True):
        ids = tokenize_windows(tokenizer, prompts).to(encoder.device)
        batch = ids.shape[0]
        out = encoder(ids.flatten(0, 1), output_hidden_states=True)
        hidden.append(out.hidden_states[-2].reshape(batch, NUM_WINDOWS * WINDOW, -1))
        if isinstance(encoder, CLIPTextModelWithProjection):
            pooled = out.text_embeds.reshape(batch, NUM_WINDOWS, -1)[:, 0]
    if pooled is None:
        raise ValueError("the second text encoder must be a CLIPTextModelWithProjection")
    return torch.cat(hidden, dim=-1), pooled
