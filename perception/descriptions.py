"""Character descriptions for synthetic training data (article section 4.1): unique characters
(gender, age, hair, clothing, style: photo or anime, as the article's figure captions describe
people) and the settings each is drawn in (an action, a place, a lighting).

The attributes of `count` characters are drawn without repetition from their product space by
a seeded permutation, so the same seed and count give the same characters on every machine
and no two characters share all attributes. The words come from the template
(`TemplateDescriber`, every profile) or, with `synthetic.describer` naming a local causal
language model folder in `full`, from that model phrasing the same attributes
(`LLMDescriber`, loaded as the captioner's VLM is). `DESCRIPTIONS_VERSION` names the
vocabularies and the template: a change to either is a new version.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

DESCRIPTIONS_VERSION = "descriptions_v1"

GENDERS = {"woman": "woman", "man": "man"}  # the subject word of each
AGES = ("young", "middle-aged", "elderly", "teenage")
HAIR = (
    "short black hair",
    "long red hair",
    "curly brown hair",
    "a blond ponytail",
    "silver hair in a bun",
    "a shaved head",
    "shoulder-length blue hair",
    "braided dark hair",
)
CLOTHING = (
    "a green hooded cloak",
    "a white lab coat",
    "a red leather jacket",
    "a navy school uniform",
    "a yellow raincoat",
    "silver armour",
    "a striped sailor shirt",
    "a black suit and tie",
)
STYLES = {"photo": "a photograph", "anime": "an anime illustration"}
ACTIONS = (
    "walking",
    "reading a book",
    "running",
    "sitting on a bench",
    "waving",
    "drinking coffee",
    "looking over the shoulder",
    "laughing",
)
PLACES = (
    "in a busy street",
    "in a forest",
    "on a beach",
    "in a library",
    "in a kitchen",
    "on a rooftop",
    "in a train station",
    "in a snowy park",
)
LIGHTING = ("at golden hour", "under neon lights", "on an overcast day", "at night")


@dataclass(frozen=True)
class CharacterDescription:
    """One synthetic character: its attributes, its subject word (the prompt token whose
    cross-attention locates the character) and its description."""

    character_id: str
    gender: str
    age: str
    hair: str
    clothing: str
    style: str
    text: str

    @property
    def subject(self) -> str:
        return GENDERS[self.gender]


def attributes(seed: int, count: int, styles: tuple[str, ...]) -> list[dict[str, str]]:
    """`count` distinct attribute sets drawn by a seeded permutation of their product space."""
    space = list(itertools.product(GENDERS, AGES, HAIR, CLOTHING, styles))
    if count > len(space):
        raise ValueError(f"{count} characters asked, {len(space)} distinct ones exist")
    order = np.random.default_rng(seed).permutation(len(space))[:count]
    keys = ("gender", "age", "hair", "clothing", "style")
    return [dict(zip(keys, space[int(i)], strict=True)) for i in order]


def template_text(values: dict[str, str]) -> str:
    return (
        f"{STYLES[values['style']]} of a {values['age']} {GENDERS[values['gender']]} with "
        f"{values['hair']}, wearing {values['clothing']}"
    )


def names_subject(text: str, subject: str) -> bool:
    """Whether `text` has the subject word as a word of its own."""
    return re.search(rf"\b{re.escape(subject)}\b", text, re.IGNORECASE) is not None


class Describer(Protocol):
    def describe(self, values: dict[str, str]) -> str:
        """A one-sentence description of a character with these attributes."""


class TemplateDescriber:
    """The deterministic template: the attributes in one fixed sentence."""

    def describe(self, values: dict[str, str]) -> str:
        return template_text(values)


class LLMDescriber:
    """A local causal language model (transformers' layout) phrasing the attributes: greedy
    decoding from an instruction, its first line kept, led by the subject word where it lacks
    it; the template's sentence where the model says nothing."""

    def __init__(self, model_dir: str | Path, max_new_tokens: int = 48) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"no language model (config.json) in {model_dir}")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.max_new_tokens = max_new_tokens

    def describe(self, values: dict[str, str]) -> str:
        import torch

        instruction = (
            "Describe in one sentence how this character looks: "
            f"{template_text(values)}. Description:"
        )
        inputs = self.tokenizer(instruction, return_tensors="pt")
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        new = out[0, inputs["input_ids"].shape[1] :]
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip().split("\n")[0]
        if not text:
            return template_text(values)
        # The subject word locates the character in the generator's cross-attention.
        subject = GENDERS[values["gender"]]
        return text if names_subject(text, subject) else f"a {subject}, {text}"


def describe_characters(
    seed: int, count: int, styles: tuple[str, ...], describer: Describer
) -> list[CharacterDescription]:
    """`count` unique characters, each described by `describer`."""
    return [
        CharacterDescription(
            character_id=f"synthetic-{seed}-{i:05d}", **values, text=describer.describe(values)
        )
        for i, values in enumerate(attributes(seed, count, styles))
    ]


def setting_prompts(character: CharacterDescription, count: int, seed: int) -> list[str]:
    """`count` prompts of one character in distinct settings (action, place, lighting), drawn
    by a seeded permutation; each names the character's subject word once, in its
    description."""
    space = list(itertools.product(ACTIONS, PLACES, LIGHTING))
    if count > len(space):
        raise ValueError(f"{count} settings asked, {len(space)} distinct ones exist")
    rng = np.random.default_rng([seed, int(character.character_id.rsplit("-", 1)[1])])
    return [
        f"{character.text}, {action} {place} {light}"
        for action, place, light in (space[int(i)] for i in rng.permutation(len(space))[:count])
    ]


def load_describer(profile: str, models_dir: str | Path | None, model: str | None) -> Describer:
    """The template, or in `full` with a model folder named, the language model."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    if model is None:
        return TemplateDescriber()
    return by_profile(
        profile,
        full=lambda: LLMDescriber(resolve_models_dir(models_dir) / model),
        tiny=TemplateDescriber,
    )
