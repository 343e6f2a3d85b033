"""Character masks (SAM) and whole-body person boxes (Grounding-DINO).

Article 2.2: SAM is prompted with the midpoint of the character's face box and returns
several masks; the one with the largest area is kept. Note 1: a whole-body box from a
zero-shot detector, the person box overlapping the face box most, is added to the prompt.

`full`: transformers `SamModel`/`SamProcessor` and `AutoModelForZeroShotObjectDetection`
(Grounding-DINO) from local folders in transformers' layout. `tiny`: the same classes with
tiny random weights built from configs, offline on CPU; a wiring profile, not a segmenter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Token ids that Grounding-DINO hard-codes as phrase delimiters (BERT's [CLS], [SEP], ".", "?");
# the tiny tokenizer gives its special tokens these ids so phrase masking behaves as with BERT.
_BERT_IDS = {
    "[PAD]": 0,
    "[UNK]": 100,
    "[CLS]": 101,
    "[SEP]": 102,
    "[MASK]": 103,
    ".": 1012,
    "?": 1029,
}


@dataclass(frozen=True)
class SegmentationResult:
    """The kept mask at image size, SAM's predicted IoU for it, and its share of the image."""

    mask: np.ndarray
    score: float
    area_fraction: float


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _require_model_dir(model_dir: str | Path, what: str) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no model in {model_dir}: {what}")
    return model_dir


def largest_mask(masks: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, float]:
    """The mask of (K, H, W) bool `masks` with the most pixels (first on ties) and its score."""
    index = int(np.argmax(masks.reshape(len(masks), -1).sum(axis=1)))
    return masks[index], float(scores[index])


class SamSegmenter:
    """SAM prompted with one foreground point and optionally a box; keeps the largest mask.

    `dtype` is the model's precision: "float32", or "bfloat16" for a GPU's tensor-core rate
    (its masks differ from float32's in a few edge pixels; tests state the tolerance).
    """

    def __init__(
        self, model_dir: str | Path, device: str | None = None, dtype: str = "float32"
    ) -> None:
        from transformers import SamModel, SamProcessor

        model_dir = _require_model_dir(
            model_dir,
            "save SAM there in transformers layout (e.g. facebook/sam-vit-huge: config.json, "
            "model.safetensors, the processor config)",
        )
        self._bind(
            SamModel.from_pretrained(model_dir),
            SamProcessor.from_pretrained(model_dir),
            device or _default_device(),
            dtype,
        )

    def _bind(self, model, processor, device: str, dtype: str = "float32") -> None:
        import torch

        self.device = device
        self.dtype = getattr(torch, dtype)
        self.model = model.to(device, self.dtype).eval()
        self.processor = processor

    @classmethod
    def tiny(cls, seed: int = 0, dtype: str = "float32") -> SamSegmenter:
        """A tiny random SAM (64 px input), deterministic for a seed, on CPU."""
        import torch
        from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

        side, patch = 64, 8
        config = SamConfig(
            vision_config={
                "hidden_size": 16,
                "output_channels": 16,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": side,
                "patch_size": patch,
                "window_size": 4,
                "global_attn_indexes": [1],
                "num_pos_feats": 8,
                "mlp_dim": 32,
                # SAM's default (1e-10) leaves random encoder weights near zero, making
                # the masks independent of the image.
                "initializer_range": 0.02,
            },
            prompt_encoder_config={
                "hidden_size": 16,
                "image_size": side,
                "patch_size": patch,
                "mask_input_channels": 4,
            },
            mask_decoder_config={
                "hidden_size": 16,
                "mlp_dim": 32,
                "num_attention_heads": 2,
                "iou_head_hidden_dim": 16,
            },
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SamModel(config)
        mask_side = side // 4
        processor = SamProcessor(
            image_processor=SamImageProcessorPil(
                size={"longest_edge": side},
                pad_size={"height": side, "width": side},
                mask_size={"longest_edge": mask_side},
                mask_pad_size={"height": mask_side, "width": mask_side},
            )
        )
        segmenter = cls.__new__(cls)
        segmenter._bind(model, processor, "cpu", dtype)
        return segmenter

    def segment(
        self,
        image: np.ndarray,
        point: tuple[float, float],
        box: tuple[float, float, float, float] | None = None,
    ) -> SegmentationResult:
        """Mask the object at pixel `point` (x, y) of an RGB uint8 image, inside `box` if given."""
        return self.segment_batch([image], [point], [box])[0]

    def segment_batch(
        self,
        images: list[np.ndarray],
        points: list[tuple[float, float]],
        boxes: list[tuple[float, float, float, float] | None] | None = None,
    ) -> list[SegmentationResult]:
        """`segment` for each image with its own point (and box): the image encoder, SAM's
        cost, runs once over the whole batch; each prompt is decoded against its image's
        embedding."""
        import torch

        boxes = boxes or [None] * len(images)
        if not len(images) == len(points) == len(boxes):
            raise ValueError(f"{len(images)} images, {len(points)} points, {len(boxes)} boxes")
        if not images:
            return []
        inputs = [
            self.processor(
                images=image,
                input_points=[[[float(point[0]), float(point[1])]]],
                input_labels=[[1]],
                input_boxes=None if box is None else [[[float(v) for v in box]]],
                return_tensors="pt",
            )
            for image, point, box in zip(images, points, boxes, strict=True)
        ]
        pixel_values = torch.cat([x["pixel_values"] for x in inputs]).to(self.device, self.dtype)
        prompt_keys = ("input_points", "input_labels", "input_boxes")
        results = []
        with torch.inference_mode():
            embeddings = self.model.get_image_embeddings(pixel_values)
            for embedding, x in zip(embeddings, inputs, strict=True):
                prompts = {k: x[k].to(self.device) for k in prompt_keys if k in x}
                if self.dtype != torch.float32:  # coordinates at the model's half precision
                    prompts = {
                        k: v.to(self.dtype) if v.is_floating_point() else v
                        for k, v in prompts.items()
                    }
                outputs = self.model(
                    image_embeddings=embedding[None], **prompts, multimask_output=True
                )
                masks = self.processor.post_process_masks(
                    outputs.pred_masks.float().cpu(), x["original_sizes"], x["reshaped_input_sizes"]
                )[0][0]
                mask, score = largest_mask(
                    masks.numpy(), outputs.iou_scores[0, 0].float().cpu().numpy()
                )
                results.append(
                    SegmentationResult(
                        mask=mask, score=score, area_fraction=float(mask.sum()) / mask.size
                    )
                )
        return results


class GroundingDinoPersonDetector:
    """Zero-shot whole-body person boxes from Grounding-DINO and a text prompt."""

    def __init__(
        self,
        model_dir: str | Path,
        prompt: str = "a person.",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
        device: str | None = None,
    ) -> None:
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        model_dir = _require_model_dir(
            model_dir,
            "save Grounding-DINO there in transformers layout (e.g. "
            "IDEA-Research/grounding-dino-base: config.json, model.safetensors, the processor "
            "and tokenizer files)",
        )
        self._bind(
            AutoModelForZeroShotObjectDetection.from_pretrained(model_dir),
            AutoProcessor.from_pretrained(model_dir),
            prompt,
            box_threshold,
            text_threshold,
            device or _default_device(),
        )

    def _bind(
        self,
        model,
        processor,
        prompt: str,
        box_threshold: float,
        text_threshold: float,
        device: str,
    ) -> None:
        self.device = device
        self.model = model.to(device).eval()
        self.processor = processor
        self.prompt = prompt
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold

    @classmethod
    def tiny(
        cls,
        seed: int = 0,
        prompt: str = "a person.",
        box_threshold: float = 0.35,
        text_threshold: float = 0.25,
    ) -> GroundingDinoPersonDetector:
        """A tiny random Grounding-DINO (Swin + BERT), deterministic for a seed, on CPU."""
        import torch
        from transformers import (
            BertTokenizer,
            GroundingDinoConfig,
            GroundingDinoForObjectDetection,
            GroundingDinoImageProcessorPil,
            GroundingDinoProcessor,
        )

        tokens = [f"[unused{i}]" for i in range(max(_BERT_IDS.values()) + 1)]
        for token, index in _BERT_IDS.items():
            tokens[index] = token
        tokens += ["a", "person", "people", "human", "man", "woman", "child"]
        vocab = {token: index for index, token in enumerate(tokens)}
        config = GroundingDinoConfig(
            backbone_config={
                "model_type": "swin",
                "image_size": 64,
                "patch_size": 4,
                "embed_dim": 8,
                "depths": [1, 1, 1, 1],
                "num_heads": [1, 1, 1, 1],
                "window_size": 2,
                "out_indices": [2, 3, 4],
            },
            text_config={
                "model_type": "bert",
                "vocab_size": len(vocab),
                "hidden_size": 32,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "intermediate_size": 32,
                "max_position_embeddings": 64,
            },
            # d_model must be a multiple of 32 (GroupNorm(32, d_model)); two decoder layers
            # because the box heads of layers 1.. are tied to layer 0's.
            d_model=32,
            num_queries=10,
            encoder_layers=1,
            decoder_layers=2,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_n_points=1,
            decoder_n_points=1,
            max_text_len=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GroundingDinoForObjectDetection(config)
        processor = GroundingDinoProcessor(
            image_processor=GroundingDinoImageProcessorPil(
                size={"shortest_edge": 64, "longest_edge": 96}
            ),
            tokenizer=BertTokenizer(vocab=vocab),
        )
        detector = cls.__new__(cls)
        detector._bind(model, processor, prompt, box_threshold, text_threshold, "cpu")
        return detector

    def detect(self, image: np.ndarray) -> np.ndarray:
        """(N, 4) float32 person boxes (x1, y1, x2, y2) in pixels of an RGB uint8 image."""
        import torch

        height, width = image.shape[:2]
        inputs = self.processor(images=image, text=self.prompt, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            outputs = self.model(**inputs)
        result = self.processor.post_process_grounded_object_detection(
            outputs,
            inputs["input_ids"],
            threshold=self.box_threshold,
            text_threshold=self.text_threshold,
            target_sizes=[(height, width)],
        )[0]
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        # Predicted boxes may reach past the frame; SAM box prompts must lie inside it.
        return np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)


def best_person_box(person_boxes: np.ndarray, face_box: np.ndarray) -> np.ndarray | None:
    """The person box sharing the largest area with the face box (first on ties), or None."""
    boxes = np.asarray(person_boxes, dtype=np.float32).reshape(-1, 4)
    if len(boxes) == 0:
        return None
    fx1, fy1, fx2, fy2 = np.asarray(face_box, dtype=np.float32)
    widths = np.clip(np.minimum(boxes[:, 2], fx2) - np.maximum(boxes[:, 0], fx1), 0, None)
    heights = np.clip(np.minimum(boxes[:, 3], fy2) - np.maximum(boxes[:, 1], fy1), 0, None)
    overlap = widths * heights
    best = int(np.argmax(overlap))
    return boxes[best] if overlap[best] > 0 else None


def load_segmenter(
    profile: str, models_dir: str | Path | None = None, model: str = "sam", dtype: str = "float32"
) -> SamSegmenter:
    """The segmenter of a profile: SAM from `<models_dir>/<model>` or the tiny one, at `dtype`."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    return by_profile(
        profile,
        full=lambda: SamSegmenter(resolve_models_dir(models_dir) / model, dtype=dtype),
        tiny=lambda: SamSegmenter.tiny(dtype=dtype),
    )


def load_person_detector(
    profile: str, models_dir: str | Path | None = None, model: str = "grounding-dino"
) -> GroundingDinoPersonDetector:
    """The person detector of a profile: Grounding-DINO from `<models_dir>/<model>` or tiny."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    return by_profile(
        profile,
        full=lambda: GroundingDinoPersonDetector(resolve_models_dir(models_dir) / model),
        tiny=GroundingDinoPersonDetector.tiny,
    )
