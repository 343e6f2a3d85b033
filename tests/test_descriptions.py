"""Character descriptions for synthetic data (issue 36, article section 4.1): unique,
versioned, the same from a seed on every machine; the template path and a local language
model saved in transformers' format and loaded by the same code as `full`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from perception.descriptions import (
    DESCRIPTIONS_VERSION,
    LLMDescriber,
    TemplateDescriber,
    describe_characters,
    load_describer,
    names_subject,
    setting_prompts,
)


def test_characters_are_unique_and_follow_the_seed():
    characters = describe_characters(7, 40, ("photo", "anime"), TemplateDescriber())
    attributes = {(c.gender, c.age, c.hair, c.clothing, c.style) for c in characters}
    assert len(attributes) == 40 and DESCRIPTIONS_VERSION == "descriptions_v1"
    assert describe_characters(7, 40, ("photo", "anime"), TemplateDescriber()) == characters
    assert describe_characters(8, 40, ("photo", "anime"), TemplateDescriber()) != characters
    first = characters[0]
    assert names_subject(first.text, first.subject) and first.character_id == "synthetic-7-00000"
    assert names_subject("A Woman, walking", "woman") and not names_subject("a womanly", "woman")
    assert {c.style for c in describe_characters(0, 10, ("anime",), TemplateDescriber())} == {
        "anime"
    }
    with pytest.raises(ValueError, match="distinct ones exist"):
        describe_characters(0, 10**6, ("photo",), TemplateDescriber())


def test_a_characters_settings_differ_and_name_it():
    character = describe_characters(0, 1, ("photo",), TemplateDescriber())[0]
    prompts = setting_prompts(character, 4, seed=3)
    assert len(set(prompts)) == 4 and all(p.startswith(character.text) for p in prompts)
    assert setting_prompts(character, 4, seed=3) == prompts


def write_tiny_language_model(folder: Path) -> Path:
    """A random GPT-2 and a word-level tokenizer over the template's words, saved as a
    language model folder is published."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = ["<unk>", "<eos>", "a", "woman", "man", "with", "hair", "wearing", "red", "coat"]
    words += ["Describe", "in", "one", "sentence", "how", "this", "character", "looks:"]
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, "<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", eos_token="<eos>", pad_token="<eos>"
    )
    config = GPT2Config(vocab_size=len(words), n_positions=128, n_embd=16, n_layer=1, n_head=2)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_language_model_path_loads_a_saved_model_and_keeps_the_subject(tmp_path: Path):
    folder = write_tiny_language_model(tmp_path / "describer")
    describer = load_describer("full", tmp_path, "describer")
    assert isinstance(describer, LLMDescriber)
    characters = describe_characters(0, 3, ("photo",), describer)
    for character in characters:
        assert names_subject(character.text, character.subject), character.text
    assert isinstance(load_describer("full", tmp_path, None), TemplateDescriber)
    assert isinstance(load_describer("tiny", tmp_path, "describer"), TemplateDescriber)
    with pytest.raises(FileNotFoundError, match="no language model"):
        LLMDescriber(folder.parent / "missing")
