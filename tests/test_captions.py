"""Captions: the versioned prompt template, the template checks, the tiny captioner and the
`full` loader on tiny random VLMs saved in transformers layout.

The tiny VLMs are a LLaVA (CLIP vision tower + LLaMA decoder), whose processor loads through
`AutoProcessor`, and an InternVL in the layout of an `-hf` checkpoint, whose processor declares
a video processor that needs torchvision (never installed here), so `VLMCaptioner` assembles it
without one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from perception.captions import (
    BANNED_OPENINGS,
    GENDER_WORDS,
    PROMPT_VERSION,
    TinyCaptioner,
    VLMCaptioner,
    caption_problems,
    caption_prompt,
    caption_words,
    load_captioner,
)

torch.set_num_threads(1)

# The article's Fig. 7 caption (108 words): a caption that follows the template.
VALID = (
    "A young girl with long brown hair sits on the carpeted stairs, wearing a blue dress with a "
    "pattern of small dots. She holds a clear glass in her right hand and looks directly at the "
    "camera with a neutral expression. The stairs have white railings and the carpet is a light "
    "green color. The background features a yellow wall with a leafy pattern and a decorative "
    "fan hanging on the wall. The lighting is soft and natural, coming from the left side of the "
    "image, casting gentle shadows. The style of the image is a photograph. There are no other "
    "characters or text visible in the image."
)
TINY_VLM = "tiny-vlm"
TINY_INTERNVL = "tiny-internvl"


def test_prompt_template_is_the_articles() -> None:
    prompt = caption_prompt()
    lines = prompt.split("\n")
    assert PROMPT_VERSION == "caption_v1"
    assert len(lines) == 8
    assert lines[0] == (
        "Describe the image in detail, STRICTLY keeping it under 100-150 words, "
        "in a single coherent paragraph."
    )
    assert lines[1] == (
        "DO NOT BEGIN WITH 'This image shows', 'In this image', 'The image depicts', etc. "
        "Clearly specify the gender (man, woman, boy, girl, or male/female)."
    )
    assert lines[4] == "Describe the character's expressions and emotions."
    assert lines[6].startswith("Specify the lighting’s direction, intensity, and its effect")
    assert lines[7].endswith(
        "Keep the description strictly factual and focus solely on the observable details "
        "within the image."
    )
    assert caption_prompt("caption_v1") == prompt
    with pytest.raises(FileNotFoundError, match="caption_v0"):
        caption_prompt("caption_v0")


def test_constants_follow_the_template() -> None:
    prompt = caption_prompt()
    for opening in BANNED_OPENINGS[:3]:
        assert f"'{opening}'" in prompt
    for word in ("man", "woman", "boy", "girl", "male", "female"):
        assert word in GENDER_WORDS


def test_valid_caption_has_no_problems() -> None:
    assert len(caption_words(VALID)) == 108
    assert caption_problems(VALID) == []
    assert caption_problems("  " + VALID + "\n") == []


def test_word_count_bounds() -> None:
    assert caption_problems("A man smiles.") == ["3 words, outside 100-150"]
    too_long = VALID + " The man's coat is grey." * 10
    assert caption_problems(too_long) == ["158 words, outside 100-150"]
    assert caption_problems("A man smiles.", min_words=3, max_words=3) == []
    # Apostrophes and hyphens inside a word keep it one word.
    assert caption_words("The man's well-lit face.") == ["The", "man's", "well-lit", "face"]


@pytest.mark.parametrize("opening", BANNED_OPENINGS)
def test_each_banned_opening_is_named(opening: str) -> None:
    problems = caption_problems(f"{opening} {VALID}")
    assert problems == [f"begins with banned opening {opening!r}"]


def test_banned_openings_are_case_insensitive_whole_words() -> None:
    assert caption_problems("IN THIS IMAGE " + VALID) == [
        "begins with banned opening 'In this image'"
    ]
    assert caption_problems("In the imagery of the film, " + VALID) == []
    assert caption_problems("Later, in this image " + VALID) == []


def test_missing_gender_word() -> None:
    # "human", "manner" and "Germany" contain gender words only as parts of other words.
    no_gender = (
        VALID.replace("young girl", "human")
        .replace("She", "The human")
        .replace("brown hair", "brown hair in a Germany-style manner")
    )
    problems = caption_problems(no_gender)
    assert len(problems) == 1 and problems[0].startswith("no gender word")
    assert caption_problems(no_gender.replace("human", "WOMAN", 1)) == []


def test_several_paragraphs_and_several_problems() -> None:
    half = len(VALID) // 2
    assert caption_problems(VALID[:half] + "\n\n" + VALID[half:]) == ["more than one paragraph"]
    assert caption_problems("This image shows a cat.") == [
        "5 words, outside 100-150",
        "begins with banned opening 'This image shows'",
        "no gender word (man, woman, boy, girl, male, female)",
    ]


def two_tone(
    top: tuple[int, int, int],
    bottom: tuple[int, int, int],
    light: str | None = None,
    size: tuple[int, int] = (96, 64),
) -> np.ndarray:
    """Top half one colour, bottom half another, darkened away from `light` (left/right/above)."""
    height, width = size
    image = np.empty((height, width, 3), np.float32)
    image[: height // 2] = top
    image[height // 2 :] = bottom
    ramp = np.linspace(1.0, 0.3, width, dtype=np.float32)
    if light == "left":
        image *= ramp[None, :, None]
    elif light == "right":
        image *= ramp[None, ::-1, None]
    elif light == "above":
        image *= np.linspace(1.0, 0.3, height, dtype=np.float32)[:, None, None]
    return image.round().astype(np.uint8)


def muted_photo(seed: int, size: tuple[int, int] = (80, 120)) -> np.ndarray:
    """Low-saturation noise around a grey-beige tone: colourfulness of a film frame."""
    rng = np.random.default_rng(seed)
    base = np.array([150, 140, 125], np.float32)
    return (base + rng.normal(0, 12, (*size, 3))).clip(0, 255).astype(np.uint8)


# Pairs of equal luminance, so that only the added ramp reads as directional light.
RED, GREEN = (220, 30, 30), (0, 128, 0)
TEAL, GREY = (0, 150, 150), (105, 105, 105)
BLUE = (30, 60, 220)


def test_tiny_captioner_follows_the_template_and_measures_the_image() -> None:
    images = {
        "red/green lit left": two_tone(RED, GREEN, "left"),
        "red/green lit right": two_tone(RED, GREEN, "right"),
        "teal/grey even": two_tone(TEAL, GREY, size=(64, 64)),
        "blue/blue lit above": two_tone(BLUE, BLUE, "above"),
        "muted photo wide": muted_photo(0),
        "muted photo tall": muted_photo(1, size=(120, 60)),
    }
    captioner = TinyCaptioner()
    captions = dict(zip(images, captioner.caption_batch(list(images.values())), strict=True))
    for name, caption in captions.items():
        assert caption_problems(caption) == [], name
        assert caption == TinyCaptioner().caption(images[name]), name
    assert len(set(captions.values())) == len(captions)

    assert "red top and green trousers" in captions["red/green lit left"]
    assert "from the left side of the image" in captions["red/green lit left"]
    assert "shadows on the right side" in captions["red/green lit left"]
    assert "from the right side of the image" in captions["red/green lit right"]
    assert "teal top and grey trousers" in captions["teal/grey even"]
    assert "coming from the front" in captions["teal/grey even"]
    assert "square frame" in captions["teal/grey even"]
    assert "comes from above" in captions["blue/blue lit above"]
    assert "shadows across the lower part" in captions["blue/blue lit above"]
    assert "image is a cartoon" in captions["red/green lit left"]
    assert "image is a photograph" in captions["muted photo wide"]
    assert "wide landscape frame" in captions["muted photo wide"]
    assert "tall portrait frame" in captions["muted photo tall"]


def test_tiny_captioner_on_arbitrary_images() -> None:
    rng = np.random.default_rng(7)
    captioner = TinyCaptioner()
    for _ in range(40):
        height, width = rng.integers(1, 160, size=2)
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        assert caption_problems(captioner.caption(image)) == [], image.shape
    with pytest.raises(ValueError, match="RGB"):
        captioner.caption(np.zeros((8, 8), np.uint8))


def test_load_captioner_profiles(tmp_path: Path) -> None:
    assert isinstance(load_captioner("tiny"), TinyCaptioner)
    with pytest.raises(ValueError, match="unknown profile"):
        load_captioner("medium")
    missing = tmp_path / "models" / "InternVL2-26B"
    with pytest.raises(FileNotFoundError) as error:
        load_captioner("full", tmp_path / "models")
    assert str(missing) in str(error.value)
    assert "config.json" in str(error.value)


# One small transformer size for every tiny vision and text tower below.
TINY_LAYERS = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


@pytest.fixture(scope="module")
def tiny_vlm_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding a tiny random LLaVA with an offline word-level tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
    words = ["USER:", "ASSISTANT:", "a", "man", "woman", "in", "red", "coat", "light", "left"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    chat_template = (
        "{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by "default"
        chat_template=chat_template,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            **TINY_LAYERS,
            image_size=28,
            patch_size=14,
            projection_dim=16,
        ),
        text_config=LlamaConfig(
            vocab_size=len(vocab),
            **TINY_LAYERS,
            num_key_value_heads=1,
            max_position_embeddings=512,
            bos_token_id=vocab["<s>"],
            eos_token_id=vocab["</s>"],
            pad_token_id=vocab["<pad>"],
        ),
        image_token_index=vocab["<image>"],
        vision_feature_layer=-1,
    )
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    LlavaForConditionalGeneration(config).save_pretrained(root / TINY_VLM)
    processor.save_pretrained(root / TINY_VLM)
    return root


def test_full_loader_on_a_tiny_vlm(tiny_vlm_models: Path) -> None:
    max_new_tokens = 6
    captioner = load_captioner(
        "full", tiny_vlm_models, model=TINY_VLM, max_new_tokens=max_new_tokens
    )
    assert isinstance(captioner, VLMCaptioner)
    assert captioner.device == "cpu"
    # The chat template wraps the image placeholder and the verbatim prompt template.
    assert captioner.prompt.startswith("USER: <image> Describe the image in detail")
    assert caption_prompt() in captioner.prompt
    assert captioner.prompt.endswith("ASSISTANT:")

    image = two_tone(RED, GREEN, "left")
    caption = captioner.caption(image)
    assert isinstance(caption, str)
    # The word-level tokenizer decodes one word per generated token.
    assert len(caption.split()) <= max_new_tokens
    assert captioner.caption(image) == caption  # greedy decoding


def test_full_caption_batch_in_chunks(tiny_vlm_models: Path) -> None:
    captioner = VLMCaptioner(tiny_vlm_models / TINY_VLM, max_new_tokens=4, batch_size=2)
    images = [two_tone(RED, GREEN, "left"), muted_photo(0), two_tone(TEAL, GREY)]
    captions = captioner.caption_batch(images)
    assert len(captions) == 3
    assert all(isinstance(c, str) and len(c.split()) <= 4 for c in captions)
    assert captioner.caption_batch([]) == []


def test_batched_generation_matches_one_image_at_a_time(
    tiny_vlm_models: Path, tiny_internvl_models: Path
) -> None:
    """Greedy captions of a batch are the captions of each image alone, token for token (the
    stated tolerance: none). InternVL tiles a tall image into two patches and a thumbnail, a
    square one into one patch, so its prompts differ in length and the batch is left-padded."""
    images = [two_tone(RED, GREEN, "left"), muted_photo(0, (64, 64)), two_tone(TEAL, GREY)]
    for folder in (tiny_vlm_models / TINY_VLM, tiny_internvl_models / TINY_INTERNVL):
        batched = VLMCaptioner(folder, max_new_tokens=6, batch_size=3)
        single = VLMCaptioner(folder, max_new_tokens=6, batch_size=1)
        assert batched.caption_batch(images) == [single.caption(image) for image in images]


def test_priors_pass_the_batch_size(tiny_vlm_models: Path) -> None:
    from perception.params import CaptionsParams
    from perception.priors import Priors

    params = CaptionsParams(model=TINY_VLM, batch_size=3)
    captioner = Priors("full", captions=params, models_dir=tiny_vlm_models).captioner()
    assert captioner.batch_size == 3


@pytest.fixture(scope="module")
def tiny_internvl_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding a tiny random InternVL laid out as an InternVL `-hf` checkpoint:
    model, tokenizer, image and video processor configs, processor_config.json, chat template.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLVisionConfig,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    image_tokens = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    specials = ["<unk>", "<|im_start|>", "<|im_end|>", "<pad>", *image_tokens.values()]
    words = ["user", "assistant", "a", "man", "woman", "in", "red", "coat", "light", "left"]
    vocab = {token: i for i, token in enumerate(specials + words)}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # InternVL's template: the processor expands <IMG_CONTEXT> to <img>, the tiles' tokens, </img>.
    chat_template = (
        "{% for m in messages %}<|im_start|> {{ m['role'] }} {% for c in m['content'] %}"
        "{% if c['type'] == 'image' %}<IMG_CONTEXT> {% else %}{{ c['text'] }} {% endif %}"
        "{% endfor %}<|im_end|> {% endfor %}"
        "{% if add_generation_prompt %}<|im_start|> assistant{% endif %}"
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        extra_special_tokens=image_tokens,
    )
    # 28-pixel tiles of 14-pixel patches: 2×2 patches, pixel-shuffled by 0.5 into one token.
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": 28, "width": 28}, crop_to_patches=True, max_patches=2
    )
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            **TINY_LAYERS,
            image_size=28,
            patch_size=14,
        ),
        text_config=Qwen2Config(
            vocab_size=len(vocab),
            **TINY_LAYERS,
            num_key_value_heads=1,
            max_position_embeddings=512,
            eos_token_id=vocab["<|im_end|>"],
            pad_token_id=vocab["<pad>"],
        ),
        image_token_id=vocab["<IMG_CONTEXT>"],
        image_seq_length=1,
        downsample_ratio=0.5,
    )
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("models")
    folder = root / TINY_INTERNVL
    InternVLForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    image_processor.save_pretrained(folder)
    # The processor itself cannot be built to save it without torchvision: its files are written.
    processor_config = {"image_seq_length": 1, "processor_class": "InternVLProcessor"}
    (folder / "processor_config.json").write_text(json.dumps(processor_config))
    video_config = {
        "video_processor_type": "InternVLVideoProcessor",
        "processor_class": "InternVLProcessor",
        "size": {"height": 28, "width": 28},
    }
    (folder / "video_preprocessor_config.json").write_text(json.dumps(video_config))
    (folder / "chat_template.jinja").write_text(chat_template)
    return root


def test_full_loader_on_a_tiny_internvl(tiny_internvl_models: Path) -> None:
    from transformers import InternVLProcessor

    max_new_tokens = 5
    captioner = load_captioner(
        "full", tiny_internvl_models, model=TINY_INTERNVL, max_new_tokens=max_new_tokens
    )
    assert isinstance(captioner, VLMCaptioner)
    processor = captioner._processor
    assert isinstance(processor, InternVLProcessor)
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"
    assert processor.video_processor is None
    assert processor.image_seq_length == 1
    assert captioner.prompt.startswith("<|im_start|> user <IMG_CONTEXT> Describe the image")
    assert caption_prompt() in captioner.prompt
    assert captioner.prompt.endswith("<|im_start|> assistant")

    image = two_tone(RED, GREEN, "left")
    caption = captioner.caption(image)
    assert isinstance(caption, str)
    assert len(caption.split()) <= max_new_tokens
    assert captioner.caption(image) == caption  # greedy decoding
    captions = captioner.caption_batch([image, muted_photo(0)])
    assert len(captions) == 2
    assert all(isinstance(c, str) and len(c.split()) <= max_new_tokens for c in captions)


def test_full_loader_on_an_internvl_without_processor_class(
    tiny_internvl_models: Path, tmp_path: Path
) -> None:
    """Without a video processor config transformers fails differently, and without a processor
    class the model type names the processor."""
    from transformers import InternVLProcessor

    folder = tmp_path / TINY_INTERNVL
    shutil.copytree(tiny_internvl_models / TINY_INTERNVL, folder)
    (folder / "video_preprocessor_config.json").unlink()
    (folder / "processor_config.json").write_text(json.dumps({"image_seq_length": 1}))
    captioner = VLMCaptioner(folder, max_new_tokens=3)
    assert isinstance(captioner._processor, InternVLProcessor)
    assert captioner._processor.image_seq_length == 1
    assert isinstance(captioner.caption(muted_photo(1)), str)
