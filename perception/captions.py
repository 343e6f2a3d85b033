"""Captions of target images, following the article's versioned prompt template.

`full`: a local image-text-to-text VLM (the article uses InternVL2-26B) in transformers layout,
greedy decoding; batches go through vLLM's offline engine where vLLM and a GPU are present.
`tiny`: an offline captioner that fills the template's points from measurable image
properties. `caption_problems` checks any caption against the template's rules.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

PROMPT_VERSION = "caption_v1"

# The template's forbidden openings, then close variants that break the same rule.
BANNED_OPENINGS = (
    "This image shows",
    "In this image",
    "The image depicts",
    "This image",
    "The image shows",
    "In the image",
)

# The template's gender words ("man, woman, boy, girl, or male/female") and their plurals.
GENDER_WORDS = (
    "man",
    "woman",
    "boy",
    "girl",
    "male",
    "female",
    "men",
    "women",
    "boys",
    "girls",
    "males",
    "females",
)

_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
_GENDER = re.compile(r"\b(?:" + "|".join(GENDER_WORDS) + r")\b", re.IGNORECASE)


def caption_prompt(version: str = PROMPT_VERSION) -> str:
    """The prompt template `perception/prompts/<version>.txt`, without its final newline."""
    path = resources.files("perception").joinpath("prompts", f"{version}.txt")
    if not path.is_file():
        raise FileNotFoundError(f"no caption prompt template {version!r} in perception/prompts")
    return path.read_text(encoding="utf-8").rstrip("\n")


def caption_words(text: str) -> list[str]:
    """The words of a text; apostrophes and hyphens inside a word keep it whole."""
    return _WORD.findall(text)


def caption_problems(text: str, min_words: int = 100, max_words: int = 150) -> list[str]:
    """Every way a caption breaks the template; an empty list when it follows it."""
    problems = []
    n_words = len(caption_words(text))
    if not min_words <= n_words <= max_words:
        problems.append(f"{n_words} words, outside {min_words}-{max_words}")
    stripped = text.strip()
    # Longest first, so "This image shows" is named rather than its prefix "This image".
    for opening in sorted(BANNED_OPENINGS, key=len, reverse=True):
        if re.match(re.escape(opening) + r"\b", stripped, re.IGNORECASE):
            problems.append(f"begins with banned opening {opening!r}")
            break
    if "\n" in stripped:
        problems.append("more than one paragraph")
    if not _GENDER.search(text):
        problems.append("no gender word (" + ", ".join(GENDER_WORDS[:6]) + ")")
    return problems


class Captioner(Protocol):
    def caption(self, image: np.ndarray) -> str:
        """The caption of an RGB uint8 image of shape (H, W, 3)."""

    def caption_batch(self, images: list[np.ndarray]) -> list[str]:
        """One caption per image, in order."""


def _vllm_engine(model_dir: Path) -> Any | None:
    """vLLM's offline engine on the model when vLLM is installed, else None."""
    try:
        import vllm
    except ImportError:
        return None
    return vllm.LLM(model=str(model_dir))


def _processor_without_video(model_dir: Path) -> Any:
    """The checkpoint's processor assembled from its image processor, tokenizer and stored
    settings (processor_config.json, chat template), with no video processor."""
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import (
        PROCESSOR_MAPPING_NAMES,
        processor_class_from_name,
    )
    from transformers.processing_utils import ProcessorMixin

    settings, _ = ProcessorMixin.get_processor_dict(model_dir)
    name = settings.get("processor_class")
    name = name or PROCESSOR_MAPPING_NAMES[AutoConfig.from_pretrained(model_dir).model_type]

    class Processor(processor_class_from_name(name)):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            # transformers rejects a None sub-processor, and without torchvision it cannot
            # even resolve the video processor base class it would check against.
            if argument is not None:
                return super().check_argument_for_proper_class(argument_name, argument)
            return None

    parts = {
        "image_processor": AutoImageProcessor.from_pretrained(model_dir),
        "tokenizer": AutoTokenizer.from_pretrained(model_dir),
    }
    return Processor.from_args_and_dict(
        [parts.get(attribute) for attribute in Processor.get_attributes()], settings
    )


class VLMCaptioner:
    """A local image-text-to-text VLM prompted with the caption template, greedy decoding.

    The folder holds a transformers-layout checkpoint (config, processor with a chat
    template, tokenizer, weights), e.g. an InternVL `-hf` checkpoint. On a GPU with vLLM
    installed, generation runs on vLLM's offline engine (the transformers model is then not
    loaded); otherwise on transformers, `batch_size` images per `generate` call. `prompt` is
    the chat-formatted text sent with every image.
    """

    def __init__(
        self,
        model_dir: str | Path,
        max_new_tokens: int = 256,
        device: str | None = None,
        batch_size: int = 8,
        prompt_version: str = PROMPT_VERSION,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no captioning VLM in {model_dir}: put a transformers-layout image-text-to-text "
                "checkpoint there (config.json, processor and tokenizer files, weights), "
                "e.g. InternVL2-26B"
            )
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self._processor = AutoProcessor.from_pretrained(model_dir)
        except (ImportError, ValueError) as error:
            # The checkpoint's video processor (InternVL's) needs torchvision; still images do not.
            if "torchvision" not in str(error).lower():
                raise
            self._processor = _processor_without_video(model_dir)
        # Batched generation appends new tokens on the right, so prompts are padded on the left.
        self._processor.tokenizer.padding_side = "left"
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image"},
                    {"type": "text", "text": caption_prompt(prompt_version)},
                ],
            }
        ]
        self.prompt = self._processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        on_gpu = self.device.startswith("cuda") and torch.cuda.is_available()
        self._vllm = _vllm_engine(model_dir) if on_gpu else None
        self._model = None
        if self._vllm is None:
            dtype = torch.bfloat16 if on_gpu else torch.float32
            model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
            self._model = model.to(self.device).eval()

    def caption(self, image: np.ndarray) -> str:
        return self.caption_batch([image])[0]

    def caption_batch(self, images: list[np.ndarray]) -> list[str]:
        from PIL import Image

        pil_images = [Image.fromarray(np.asarray(image, dtype=np.uint8)) for image in images]
        if self._vllm is not None:
            return self._caption_vllm(pil_images)
        captions: list[str] = []
        for start in range(0, len(pil_images), self.batch_size):
            captions += self._caption_transformers(pil_images[start : start + self.batch_size])
        return captions

    def _caption_vllm(self, images: list[Any]) -> list[str]:
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens)
        requests = [{"prompt": self.prompt, "multi_modal_data": {"image": im}} for im in images]
        return [out.outputs[0].text.strip() for out in self._vllm.generate(requests, params)]

    def _caption_transformers(self, images: list[Any]) -> list[str]:
        import torch

        inputs = self._processor(
            images=images, text=[self.prompt] * len(images), padding=True, return_tensors="pt"
        ).to(device=self._model.device, dtype=self._model.dtype)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1
            )
        new_tokens = output[:, inputs["input_ids"].shape[1] :]
        return [
            text.strip()
            for text in self._processor.batch_decode(new_tokens, skip_special_tokens=True)
        ]


# Named colours by hue range (degrees); low saturation or value map to neutrals instead.
_HUE_NAMES = (
    (15, "red"),
    (40, "orange"),
    (70, "yellow"),
    (160, "green"),
    (195, "teal"),
    (255, "blue"),
    (315, "purple"),
    (345, "pink"),
    (360, "red"),
)
_GENDERS = (
    ("man", "He", "His"),
    ("woman", "She", "Her"),
    ("boy", "He", "His"),
    ("girl", "She", "Her"),
)
# Hasler-Süsstrunk colourfulness above which an image reads as a flat, saturated drawing;
# film frames mostly stay below it.
_CARTOON_COLOURFULNESS = 70.0
# Difference in mean luminance (0-1) between opposite thirds that reads as directional light.
_DIRECTIONAL_GRADIENT = 0.05


def _colour_names(pixels: np.ndarray) -> np.ndarray:
    """A colour name per RGB pixel (N, 3) from its hue, saturation and value."""
    rgb = pixels.astype(np.float32) / 255.0
    value = rgb.max(axis=1)
    chroma = value - rgb.min(axis=1)
    saturation = np.where(value > 0, chroma / np.maximum(value, 1e-6), 0.0)
    r, g, b = rgb.T
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.select(
            [value == r, value == g],
            [((g - b) / safe) % 6, (b - r) / safe + 2],
            (r - g) / safe + 4,
        )
        * 60.0
    )
    names = np.array([name for _, name in _HUE_NAMES])[
        np.searchsorted([limit for limit, _ in _HUE_NAMES], hue, side="right").clip(0, 8)
    ]
    names = np.where((names == "orange") & (value < 0.6), "brown", names)
    neutral = np.where(value > 0.8, "white", np.where(value > 0.35, "grey", "black"))
    names = np.where(saturation < 0.2, neutral, names)
    return np.where(value < 0.2, "black", names)


def _dominant_colour(region: np.ndarray) -> str:
    """The most frequent colour name of an (H, W, 3) region, sampled on a ≤64×64 grid."""
    step_y, step_x = max(region.shape[0] // 64, 1), max(region.shape[1] // 64, 1)
    names, counts = np.unique(
        _colour_names(region[::step_y, ::step_x].reshape(-1, 3)), return_counts=True
    )
    return str(names[np.argmax(counts)])


def _colourfulness(image: np.ndarray) -> float:
    """Hasler and Süsstrunk's colourfulness metric on 0-255 RGB."""
    r, g, b = np.moveaxis(image.astype(np.float32), -1, 0)
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


class TinyCaptioner:
    """Offline stand-in: a template-following caption from measured image properties.

    Clothing colours are the dominant colours of the upper and lower halves, the background
    colour that of the side strips, light direction and intensity come from the luminance
    gradient and mean, the style from colourfulness, the framing from the aspect ratio and
    the gender word from a hash of the pixels. It is a wiring component, not a VLM: the
    expression, pose and text statements are fixed.
    """

    def caption(self, image: np.ndarray) -> str:
        image = np.asarray(image, dtype=np.uint8)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB image of shape (H, W, 3), got {image.shape}")
        height, width = image.shape[:2]
        digest = hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).digest()
        gender, pronoun, possessive = _GENDERS[digest[0] % len(_GENDERS)]
        top = _dominant_colour(image[: max(height // 2, 1)])
        bottom = _dominant_colour(image[height // 2 :] if height > 1 else image)
        side = max(width // 6, 1)
        background = _dominant_colour(np.concatenate([image[:, :side], image[:, -side:]], axis=1))
        lighting = self._lighting(image, gender)
        style = "cartoon" if _colourfulness(image) > _CARTOON_COLOURFULNESS else "photograph"
        aspect = width / height
        if aspect > 1.15:
            framing = "wide landscape frame, shown from the waist up"
        elif aspect < 0.87:
            framing = "tall portrait frame, shown at full length"
        else:
            framing = "square frame, shown from the knees up"
        return (
            f"A {gender} wearing a {top} top and {bottom} trousers stands at the centre of a "
            f"{framing}. {pronoun} faces the viewer in an upright, relaxed pose, with both arms "
            f"hanging loosely at the sides. The upper garment is "
            f"mostly {top} and the lower garment mostly {bottom}, with no visible "
            f"accessories. {pronoun} holds no objects and does not "
            f"interact with the background, which is dominated by {background} tones. "
            f"{possessive} expression is neutral and calm, with a steady gaze. "
            f"No text, logos, patterns or labels are visible on the clothing or on any object. "
            f"{lighting} The style of the image is a {style}."
        )

    def caption_batch(self, images: list[np.ndarray]) -> list[str]:
        return [self.caption(image) for image in images]

    @staticmethod
    def _lighting(image: np.ndarray, gender: str) -> str:
        """Direction, intensity and effect of the light, from the luminance gradient."""
        luminance = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255
        height, width = luminance.shape
        cols, rows = max(width // 3, 1), max(height // 3, 1)
        horizontal = float(luminance[:, :cols].mean() - luminance[:, -cols:].mean())
        vertical = float(luminance[:rows].mean() - luminance[-rows:].mean())
        mean = float(luminance.mean())
        intensity = "dim" if mean < 0.3 else "soft" if mean < 0.6 else "bright"
        if max(abs(horizontal), abs(vertical)) < _DIRECTIONAL_GRADIENT:
            return (
                f"The lighting is {intensity} and even, coming from the front, with few "
                f"shadows and gentle highlights on the {gender}'s clothing."
            )
        if abs(horizontal) >= abs(vertical):
            lit, shaded = ("left", "right") if horizontal > 0 else ("right", "left")
            return (
                f"The lighting is {intensity} and comes from the {lit} side of the image, "
                f"casting shadows on the {shaded} side of the {gender}'s body and clothing."
            )
        lit, shaded = ("above", "lower") if vertical > 0 else ("below", "upper")
        return (
            f"The lighting is {intensity} and comes from {lit}, casting "
            f"shadows across the {shaded} part of the {gender}'s body and clothing."
        )


def load_captioner(
    profile: str,
    models_dir: str | Path | None = None,
    model: str = "InternVL2-26B",
    max_new_tokens: int = 256,
    batch_size: int = 8,
) -> VLMCaptioner | TinyCaptioner:
    """The captioner of a profile: the VLM in `<models_dir>/<model>` (`batch_size` images per
    `generate` call) or the tiny one."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    return by_profile(
        profile,
        full=lambda: VLMCaptioner(
            resolve_models_dir(models_dir) / model,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        ),
        tiny=TinyCaptioner,
    )
