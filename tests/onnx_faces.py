"""Tiny random ONNX stand-ins for insightface's antelopev2 pack, built with `onnx.helper`.

The detector has SCRFD's interface (input `input.1`, 9 batched outputs: scores, box distances
and keypoint distances for strides 8/16/32, 2 anchors per location), so insightface routes it
to `SCRFD`; its score is the patch brightness, so a bright square on a dark image is a face.
The recogniser has ArcFace's interface (112x112 input, one 512-d output), so it routes to
`ArcFaceONNX`. Weights are random from a fixed seed: deterministic, not trained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # old enough for any onnxruntime build that runs opset 17
STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
EMBEDDING_DIM = 512
RECOGNIZER_SIZE = 112

# Score = sigmoid(gain * (patch mean - offset)) on SCRFD's input scale (pixel - 127.5) / 128:
# a near-white patch (~0.8) scores ~0.9, a dark one (~-0.9) ~0.
SCORE_GAIN = 8.0
SCORE_OFFSET = 0.5
# Box distances ~1.7 strides on every side; softplus keeps them positive so x2 > x1, y2 > y1.
BOX_BIAS = 1.5
# Five points (eyes, nose, mouth corners) in strides from the anchor: a face-like layout keeps
# the similarity transform of ArcFace's alignment well posed.
KPS_TEMPLATE = np.array(
    [[-0.5, -0.4], [0.5, -0.4], [0.0, 0.1], [-0.4, 0.6], [0.4, 0.6]], dtype=np.float32
)
# Random parts of the box and keypoint heads stay small next to the biases above.
HEAD_SCALE = 0.1


class _Graph:
    """Collects nodes and initializers of one graph; tensor names double as node names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def random(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        return self.const(name, (self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, output: str, weight: str, bias: str, stride: int = 1) -> str:
        return self.op("Conv", [x, weight, bias], output, strides=[stride, stride])

    def model(
        self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto]
    ) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.initializers)
        return helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
        )


def _he(fan_in: int) -> float:
    return float(np.sqrt(2.0 / fan_in))


def scrfd_model(seed: int = 0, features: int = 8, batch: int | str = 1) -> onnx.ModelProto:
    """SCRFD-shaped detector with keypoints and a batch dim; H and W are dynamic. `batch`: the
    batch axis, 1 (fixed) or a name (free: one call detects in many images)."""
    g = _Graph(seed)
    image = "input.1"
    # SCRFD reads each level as [batch, h * w * anchors, C] in (row, column, anchor) order: move
    # the NCHW head output to NHWC and flatten it, as the exported SCRFD does (0: keep the batch).
    rows_shape = {c: g.const(f"rows_{c}", np.array([0, -1, c], np.int64)) for c in (1, 4, 10)}
    outputs: dict[str, list[onnx.ValueInfoProto]] = {"score": [], "bbox": [], "kps": []}
    for s in STRIDES:
        # One s x s patch per anchor location; the score kernel averages it (brightness).
        logit = g.conv(
            image,
            f"score_logit_{s}",
            g.const(
                f"score_w_{s}",
                np.full((NUM_ANCHORS, 3, s, s), SCORE_GAIN / (3 * s * s), np.float32),
            ),
            g.const(f"score_b_{s}", np.full(NUM_ANCHORS, -SCORE_GAIN * SCORE_OFFSET, np.float32)),
            stride=s,
        )
        stem = g.conv(
            image,
            f"stem_{s}",
            g.random(f"stem_w_{s}", (features, 3, s, s), _he(3 * s * s)),
            g.const(f"stem_b_{s}", np.zeros(features, np.float32)),
            stride=s,
        )
        feat = g.op("Relu", [stem], f"feat_{s}")
        box_logit = g.conv(
            feat,
            f"bbox_logit_{s}",
            g.random(f"bbox_w_{s}", (NUM_ANCHORS * 4, features, 1, 1), HEAD_SCALE),
            g.const(f"bbox_b_{s}", np.full(NUM_ANCHORS * 4, BOX_BIAS, np.float32)),
        )
        heads = {
            "score": g.op("Sigmoid", [logit], f"score_map_{s}"),
            "bbox": g.op("Softplus", [box_logit], f"bbox_map_{s}"),
            "kps": g.conv(
                feat,
                f"kps_map_{s}",
                g.random(f"kps_w_{s}", (NUM_ANCHORS * 10, features, 1, 1), HEAD_SCALE),
                g.const(f"kps_b_{s}", np.tile(KPS_TEMPLATE.ravel(), NUM_ANCHORS)),
            ),
        }
        for kind, head in heads.items():
            channels = {"score": 1, "bbox": 4, "kps": 10}[kind]
            nhwc = g.op("Transpose", [head], f"{kind}_nhwc_{s}", perm=[0, 2, 3, 1])
            name = g.op("Reshape", [nhwc, rows_shape[channels]], f"{kind}_{s}")
            outputs[kind].append(
                helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, None, channels])
            )
    return g.model(
        "tiny_scrfd",
        [helper.make_tensor_value_info(image, TensorProto.FLOAT, [batch, 3, "?", "?"])],
        outputs["score"] + outputs["bbox"] + outputs["kps"],  # SCRFD's output order
    )


def arcface_model(
    seed: int = 1, channels: tuple[int, int] = (16, 32), batch: int | str = "None"
) -> onnx.ModelProto:
    """ArcFace-shaped recogniser: two strided convs, global average pool, linear to 512.
    `batch`: the batch axis, free (named, as glintr100's) or fixed at 1."""
    g = _Graph(seed)
    image = "input.1"
    c1, c2 = channels
    x = g.conv(
        image,
        "conv_1",
        g.random("conv_1_w", (c1, 3, 4, 4), _he(3 * 16)),
        g.const("conv_1_b", np.zeros(c1, np.float32)),
        stride=4,
    )
    x = g.op("Relu", [x], "relu_1")
    x = g.conv(
        x,
        "conv_2",
        g.random("conv_2_w", (c2, c1, 4, 4), _he(c1 * 16)),
        g.const("conv_2_b", np.zeros(c2, np.float32)),
        stride=4,
    )
    # No ReLU here: signed pooled features spread the embeddings of different crops further.
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x], "pool")], "flat")
    g.op(
        "Gemm",
        [
            x,
            g.random("fc_w", (EMBEDDING_DIM, c2), _he(c2)),
            g.const("fc_b", np.zeros(EMBEDDING_DIM, np.float32)),
        ],
        "embedding",
        transB=1,
    )
    shape = [batch, 3, RECOGNIZER_SIZE, RECOGNIZER_SIZE]
    return g.model(
        "tiny_arcface",
        [helper.make_tensor_value_info(image, TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, EMBEDDING_DIM])],
    )


def save_model_pack(
    models_dir: Path,
    name: str = "antelopev2",
    detector: bool = True,
    recognizer: bool = True,
    detector_batch: int | str = 1,
    recognizer_batch: int | str = "None",
) -> Path:
    """Write the chosen models to `<models_dir>/<name>/` (insightface's layout); return it."""
    folder = models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    if detector:
        onnx.save(scrfd_model(batch=detector_batch), folder / DETECTOR_FILE)
    if recognizer:
        onnx.save(arcface_model(batch=recognizer_batch), folder / RECOGNIZER_FILE)
    return folder
