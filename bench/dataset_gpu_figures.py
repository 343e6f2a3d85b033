"""The figures of the dataset's GPU networks: what `bench/dataset_gpu.py` counts and measures
(or reads back from a `--figures` file), and what `bench/capacity.py` plans the article's
corpus from."""

from __future__ import annotations

from dataclasses import dataclass

PROMPT_TOKENS = 320  # the caption template (perception/prompts/caption_v1.txt) in InternLM2 tokens


@dataclass
class Figure:
    """One network's counted size and cost, and its measured throughput (None: not measured)."""

    key: str  # detector, recogniser, sam, sam_encoder, pose, caption, vision
    stage: str
    network: str
    unit: str  # what one item is: frame, face, crop, image, tile
    batch: int
    params: int
    weight_bytes: int
    gflop_per_item: float
    per_second: float | None = None
    dtype: str = "float16"  # what the row runs in on CUDA
    # Captions: the language tower's parameters, tokens generated and tiles per caption.
    language_params: int = 0
    new_tokens: int = 0
    tiles: int = 0
