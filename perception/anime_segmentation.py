"""Anime character masks. Article Note 2: general-purpose segmenters such as SAM give poor
masks on anime; specialised models are used there.

`full`: SkyTNT's anime-segmentation ISNet (`isnetis.onnx` of the Hugging Face repo
`skytnt/anime-seg`, Apache-2.0) run by onnxruntime: the image letterboxed into a square of
`masks.anime.size` pixels (RGB in [0, 1], zero padding, as its authors run it), one foreground
probability per pixel. `tiny`: a random network with the same ONNX interface (input `img`
(1, 3, S, S), one (1, 1, S, S) output in (0, 1)), written once like the tiny pose model; a
wiring profile, not a segmenter.

The model masks every character in the picture: `AnimeSegmenter` keeps the connected part
under the prompt point (the character's face centre), so it answers as SAM does
(`SegmentationResult`) and the masks code takes either.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from perception.params import AnimeMasksParams
from perception.segmentation import SegmentationResult

MODEL_FILE = "isnetis.onnx"
INPUT = "img"


class AnimeSegmenter:
    """Foreground masks of anime characters from an ISNet-style ONNX model."""

    def __init__(self, onnx_path: str | Path, params: AnimeMasksParams) -> None:
        import onnxruntime as ort

        from perception.models import onnx_providers

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(
                f"no anime segmentation model at {onnx_path}: `cameo weights download "
                f"{onnx_path.parent.name}` puts SkyTNT's {MODEL_FILE} there"
            )
        self.onnx_path, self.params = onnx_path, params
        self.session = ort.InferenceSession(str(onnx_path), providers=onnx_providers())

    @classmethod
    def tiny(cls, params: AnimeMasksParams, cache_dir: str | Path | None = None) -> AnimeSegmenter:
        """The offline stand-in: a random network of the same interface, on CPU."""
        from perception.models import tiny_model_file

        data = tiny_anime_segmentation_model().SerializeToString()
        path = tiny_model_file(data, "tiny-isnet", cache_dir)
        return cls(path, params)

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """The (H, W) foreground probability of every pixel of an RGB uint8 image."""
        side = self.params.size
        height, width = image.shape[:2]
        scale = side / max(height, width)
        h, w = max(round(height * scale), 1), max(round(width * scale), 1)
        top, left = (side - h) // 2, (side - w) // 2
        square = np.zeros((side, side, 3), np.float32)
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        square[top : top + h, left : left + w] = resized.astype(np.float32) / 255.0
        batch = np.ascontiguousarray(square.transpose(2, 0, 1)[None])
        probability = self.session.run(None, {INPUT: batch})[0][0, 0]
        inside = probability[top : top + h, left : left + w]
        return cv2.resize(inside, (width, height), interpolation=cv2.INTER_LINEAR)

    def segment_batch(
        self,
        images: list[np.ndarray],
        points: list[tuple[float, float]],
        boxes: list[tuple[float, float, float, float] | None] | None = None,
    ) -> list[SegmentationResult]:
        """The character under each point (x, y px): the connected foreground part there, or
        an empty mask where the point is background. Boxes are not used (SAM's Note 1 prompt)."""
        results = []
        for image, point in zip(images, points, strict=True):
            probability = self.foreground(image)
            foreground = (probability >= self.params.threshold).astype(np.uint8)
            _, labels = cv2.connectedComponents(foreground, connectivity=8)
            height, width = foreground.shape
            x = min(max(int(point[0]), 0), width - 1)
            y = min(max(int(point[1]), 0), height - 1)
            mask = labels == labels[y, x] if foreground[y, x] else np.zeros_like(foreground, bool)
            score = float(probability[mask].mean()) if mask.any() else 0.0
            results.append(SegmentationResult(mask, score, float(mask.sum()) / mask.size))
        return results


def tiny_anime_segmentation_model(seed: int = 0):
    """A random network with the ISNet ONNX interface, deterministic in `seed`, any square
    size: random 3x3 features of the image's difference from white, squared and summed, into a
    sigmoid. Its one designed property is that a blank page is background (no features, the
    probability `sigmoid(-offset)`), so what is drawn on one comes out as foreground: a wiring
    stand-in that makes masks on sprites, not a segmenter."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    hidden, gain, offset = 4, 20.0, 1.0
    weights = {
        "white": np.ones((1, 3, 1, 1), np.float32),
        "w": (rng.standard_normal((hidden, 3, 3, 3)) * 0.5).astype(np.float32),
        "sum": np.ones((1, hidden, 1, 1), np.float32),
        "gain": np.float32([gain]),
        "offset": np.float32([offset]),
    }
    nodes = [
        helper.make_node("Sub", [INPUT, "white"], ["ink"]),
        helper.make_node("Conv", ["ink", "w"], ["features"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["features"], ["bounded"]),
        helper.make_node("Mul", ["bounded", "bounded"], ["energy"]),
        helper.make_node("Conv", ["energy", "sum"], ["total"]),
        helper.make_node("Mul", ["total", "gain"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "offset"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_isnet",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, "side", "side"])],
        [helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "side", "side"])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    # IR 8 / opset 17, as the tiny pose model: any onnxruntime build runs it.
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def load_anime_segmenter(
    profile: str, models_dir: str | Path | None, params: AnimeMasksParams
) -> AnimeSegmenter:
    """The anime segmenter of a profile: `<models_dir>/<masks.anime.model>/isnetis.onnx`, or
    the tiny one."""
    from perception.models import by_profile
    from perception.models import models_dir as resolve_models_dir

    return by_profile(
        profile,
        full=lambda: AnimeSegmenter(
            resolve_models_dir(models_dir) / params.model / MODEL_FILE, params
        ),
        tiny=lambda: AnimeSegmenter.tiny(params),
    )
