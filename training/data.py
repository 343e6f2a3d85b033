"""The triplet dataset for training: identity split, aspect-ratio buckets, batches, CFG dropout.

Reads the DVC-versioned `data/triplets` (its `manifest.parquet` and images), never the
per-movie tables. One sample is what one training step sees of a triplet:

- the target image, its character mask and its pose drawing, resized to cover the sample's
  aspect-ratio bucket and centre-cropped to it (the article follows PixArt-Σ's bucketing);
- SDXL's micro-conditioning from that resize and crop (original size, crop top-left, target
  size);
- the segmented reference crop as the body encoder's pixel values;
- the reference's face embedding on the recogniser's raw scale (unit × raw norm: what
  InstantID's resampler was trained on, and what `CharacterInpaintPipeline.encode_face` gives),
  zeros where the triplet's face is dropped (an anime face, `faces.anime.identity`);
- the prompt (encoded later, 154 tokens, `training.text`).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers.training_utils import find_nearest_bucket, parse_buckets_string
from PIL import Image

MANIFEST = "manifest.parquet"
MANIFEST_COLUMNS = (
    "triplet_id",
    "source",
    "movie",
    "character_id",
    "prompt",
    "face_embedding",
    "face_embedding_raw_norm",
    "face_dropped",
    "style",
    "reference_crop",
    "target",
    "target_mask",
    "target_pose",
)
PIXART_1024 = "pixart_1024"  # PixArt-α/Σ's 33 aspect-ratio bins at 1024², as diffusers ships them


# ---------------------------------------------------------------------------------------------
# The manifest and its identity split


def load_manifest(triplets_dir: str | Path) -> pd.DataFrame:
    """The dataset's manifest, with a clear error when it is missing, incomplete or empty."""
    path = Path(triplets_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no dataset at {triplets_dir} ({MANIFEST} missing): build it with `dvc repro "
            "dataset` (or `cameo dataset build`), or fetch it with `dvc pull`"
        )
    manifest = pd.read_parquet(path)
    missing = [column for column in MANIFEST_COLUMNS if column not in manifest]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: rebuild the dataset")
    if manifest.empty:
        raise ValueError(f"{path} holds no triplets: nothing to train on")
    return manifest


def conditioning_face(embedding: Sequence[float], raw_norm: float, dropped: bool) -> np.ndarray:
    """The raw-scale face embedding a triplet conditions on: its unit embedding times its raw
    norm, or zeros (the unconditional face input, as CFG dropout makes it) where the triplet's
    face is dropped."""
    return np.asarray(embedding, dtype=np.float32) * np.float32(0.0 if dropped else raw_norm)


def identity_keys(manifest: pd.DataFrame) -> pd.Series:
    """One key per character: movie (or synthetic character) + character id, or the single
    image's own triplet id."""
    from_movie = manifest["source"].isin(["movie", "synthetic"])
    movie_keys = manifest["movie"].astype(str) + "/" + manifest["character_id"].astype(str)
    return movie_keys.where(from_movie, "single/" + manifest["triplet_id"].astype(str))


def person_keys(manifest: pd.DataFrame, same_person_similarity: float | None) -> pd.Series:
    """`identity_keys` joined into persons: identities whose mean reference face embeddings
    have at least `same_person_similarity` cosine are one person (transitively), keyed by
    their smallest identity key. None: every identity is its own person."""
    keys = identity_keys(manifest)
    if same_person_similarity is None:
        return keys
    unique = sorted(set(keys))
    embeddings = np.stack(manifest["face_embedding"].to_numpy()).astype(np.float64)
    means = np.stack([embeddings[(keys == key).to_numpy()].mean(axis=0) for key in unique])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    similar = means @ means.T >= same_person_similarity
    person = list(range(len(unique)))  # union-find over the identities

    def root(i: int) -> int:
        while person[i] != i:
            person[i] = person[person[i]]
            i = person[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(similar, 1)), strict=True):
        person[max(root(i), root(j))] = min(root(i), root(j))
    return keys.map({key: unique[root(i)] for i, key in enumerate(unique)})


def split_by_identity(
    manifest: pd.DataFrame,
    validation_fraction: float,
    seed: int,
    same_person_similarity: float | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A deterministic (train, validation) split in which no person is on both sides: no
    character, and, with `same_person_similarity`, no two identities of one person
    (`person_keys`: a movie character and a single image of them).

    Each person's side depends only on its key and the seed (a stable hash), so adding
    movies moves no one across the split, except a person a new identity joins to another.
    At least one person stays in training; with a positive fraction and two or more persons,
    at least one is held out.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    keys = person_keys(manifest, same_person_similarity)
    unique = sorted(set(keys))
    score = {key: zlib.crc32(f"{seed}:{key}".encode()) / 2**32 for key in unique}
    held_out = {key for key in unique if score[key] < validation_fraction}
    if validation_fraction > 0 and not held_out and len(unique) > 1:
        held_out = {min(unique, key=score.__getitem__)}
    if len(held_out) == len(unique):
        held_out.discard(max(unique, key=score.__getitem__))
    validation = keys.isin(held_out)
    return manifest[~validation].reset_index(drop=True), manifest[validation].reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Aspect-ratio buckets


def resolve_buckets(spec: str | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """(height, width) buckets: `pixart_1024`, a "h,w;h,w" string, or a list of pairs."""
    if isinstance(spec, str):
        if spec == PIXART_1024:
            from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
                ASPECT_RATIO_1024_BIN,
            )

            return [(int(h), int(w)) for h, w in ASPECT_RATIO_1024_BIN.values()]
        return parse_buckets_string(spec)
    return [(int(h), int(w)) for h, w in spec]


def check_buckets(buckets: Sequence[tuple[int, int]], multiple: int) -> None:
    """Every side must be a positive multiple of what the VAE and U-Net downsample by."""
    bad = [(h, w) for h, w in buckets if h <= 0 or w <= 0 or h % multiple or w % multiple]
    if bad:
        raise ValueError(
            f"buckets {bad[:4]} cannot be used: every side must be a positive multiple of "
            f"{multiple} (VAE factor × U-Net downsampling) for this model"
        )


@dataclass(frozen=True)
class Placement:
    """How one image goes into its bucket, and SDXL's micro-conditioning for it."""

    bucket: tuple[int, int]  # (height, width)
    resized: tuple[int, int]  # (height, width) after the covering resize
    crop_top_left: tuple[int, int]  # (top, left) of the centre crop in the resized image
    original_size: tuple[int, int]  # (height, width)

    @property
    def time_ids(self) -> list[int]:
        """SDXL's add_time_ids: original size, crop top-left, target size."""
        return [*self.original_size, *self.crop_top_left, *self.bucket]


def place(height: int, width: int, buckets: Sequence[tuple[int, int]]) -> Placement:
    """The nearest bucket by aspect ratio; resize to cover it, then centre-crop."""
    bucket = buckets[find_nearest_bucket(height, width, buckets)]
    scale = max(bucket[0] / height, bucket[1] / width)
    resized = (max(bucket[0], round(height * scale)), max(bucket[1], round(width * scale)))
    top = (resized[0] - bucket[0]) // 2
    left = (resized[1] - bucket[1]) // 2
    return Placement(bucket, resized, (top, left), (height, width))


def fit_to_bucket(
    image: Image.Image, placement: Placement, resample: Image.Resampling
) -> Image.Image:
    """Resize to cover the bucket, then centre-crop to it (`place` decides both)."""
    top, left = placement.crop_top_left
    height, width = placement.bucket
    resized = image.resize(placement.resized[::-1], resample)
    return resized.crop((left, top, left + width, top + height))


# ---------------------------------------------------------------------------------------------
# The dataset


class TripletDataset(torch.utils.data.Dataset):
    """Samples of a manifest (or a split of it), each placed in its aspect-ratio bucket.

    `body_processor` turns the reference crop into the body encoder's `pixel_values`. Items are
    dicts of tensors plus the prompt and triplet id; `collate` stacks them.
    """

    def __init__(
        self,
        manifest: pd.DataFrame,
        root: str | Path,
        buckets: Sequence[tuple[int, int]],
        body_processor: Any,
    ) -> None:
        self.manifest = manifest.reset_index(drop=True)
        self.root = Path(root)
        self.buckets = list(buckets)
        self.body_processor = body_processor
        # Only the headers are read here: a sample's bucket is fixed before any decoding.
        self.placements = []
        for relative in self.manifest["target"]:
            with Image.open(self.root / relative) as image:
                width, height = image.size
            self.placements.append(place(height, width, self.buckets))

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def bucket_ids(self) -> list[int]:
        return [self.buckets.index(p.bucket) for p in self.placements]

    def _image(self, column: str, index: int, mode: str) -> Image.Image:
        with Image.open(self.root / self.manifest.at[index, column]) as image:
            return image.convert(mode)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.manifest.iloc[index]
        placement = self.placements[index]
        bicubic, nearest = Image.Resampling.BICUBIC, Image.Resampling.NEAREST
        target = fit_to_bucket(self._image("target", index, "RGB"), placement, bicubic)
        mask = fit_to_bucket(self._image("target_mask", index, "L"), placement, nearest)
        pose = fit_to_bucket(self._image("target_pose", index, "RGB"), placement, bicubic)
        crop = self._image("reference_crop", index, "RGB")
        body = self.body_processor(images=crop, return_tensors="pt")["pixel_values"][0]
        return {
            "triplet_id": row["triplet_id"],
            "prompt": row["prompt"],
            "index": index,
            # [-1, 1] like the VAE's input; mask 1 = repaint; pose in [0, 1] like the pipeline's
            "target": torch.from_numpy(np.asarray(target, dtype=np.float32) / 127.5 - 1.0)
            .permute(2, 0, 1)
            .contiguous(),
            "mask": torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None],
            "pose": torch.from_numpy(np.asarray(pose, dtype=np.float32) / 255.0)
            .permute(2, 0, 1)
            .contiguous(),
            "body_pixels": body,
            "face_embedding": torch.from_numpy(
                conditioning_face(
                    row["face_embedding"], row["face_embedding_raw_norm"], row["face_dropped"]
                )
            ),
            "time_ids": torch.tensor(placement.time_ids, dtype=torch.float32),
        }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


# ---------------------------------------------------------------------------------------------
# Batches: one bucket each, disjoint across ranks, resumable


def weighted_draws(indices: list[int], weights: Sequence[float], seed: list[int]) -> list[int]:
    """`indices` drawn by weight: of the n indices of weight w, round(w × n) draws: each index
    ⌊·/n⌋ times, the rest a seeded choice without repeats."""
    by_weight: dict[float, list[int]] = defaultdict(list)
    for index in indices:
        by_weight[weights[index]].append(index)
    rng = np.random.default_rng(seed)
    drawn = []
    for weight, group in sorted(by_weight.items()):
        rounds, rest = divmod(round(weight * len(group)), len(group))
        drawn += group * rounds + [group[i] for i in rng.permutation(len(group))[:rest]]
    return drawn


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of indices that share one bucket, the same number on every rank.

    Per epoch (seeded by `seed` and the epoch): each bucket's indices are shuffled and cut into
    batches of `batch_size` (a bucket's last batch may be smaller); all batches are shuffled
    together, truncated to a multiple of `num_replicas`, and rank r takes every
    `num_replicas`-th batch from r. So no index appears twice in an epoch and the ranks'
    batches are disjoint. With `weights` (one per index: its source's `training.source_weights`),
    each bucket holds round(w × n) draws of its n indices of weight w: whole rounds of them, then
    a part drawn anew each epoch (`weighted_draws`); the count per bucket, hence the epoch's
    length, is the same every epoch. `set_epoch(epoch, start)` resumes in the middle of an
    epoch; the sampler itself keeps no position, because a DataLoader draws batches ahead of
    training.
    """

    def __init__(
        self,
        bucket_ids: Sequence[int],
        batch_size: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        weights: Sequence[float] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        self.bucket_ids = list(bucket_ids)
        # All ones: the unweighted epochs (and their random draws) exactly.
        uniform = weights is None or all(w == 1 for w in weights)
        self.weights = None if uniform else list(weights)
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.epoch = 0
        self.start = 0  # this rank's batches of the epoch to skip (already trained on)
        if len(self) == 0:
            raise ValueError(
                f"{len(self.bucket_ids)} samples make fewer than {num_replicas} batches of "
                f"{batch_size}: nothing for every rank to train on"
            )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of `epoch`, in order (this rank's are every n-th from rank)."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        by_bucket: dict[int, list[int]] = defaultdict(list)
        for index, bucket in enumerate(self.bucket_ids):
            by_bucket[bucket].append(index)
        batches = []
        for bucket in sorted(by_bucket):
            indices = by_bucket[bucket]
            if self.weights is not None:
                indices = weighted_draws(indices, self.weights, [self.seed, epoch, bucket])
            order = torch.randperm(len(indices), generator=generator).tolist()
            shuffled = [indices[i] for i in order]
            batches += [
                shuffled[i : i + self.batch_size] for i in range(0, len(shuffled), self.batch_size)
            ]
        order = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in order]
        return batches[: len(batches) - len(batches) % self.num_replicas]

    def __len__(self) -> int:
        counts: dict[int, int] = defaultdict(int)
        for bucket in self.bucket_ids:
            counts[bucket] += 1
        if self.weights is not None:  # round(w × n) draws of each bucket's n of weight w
            groups = Counter(zip(self.bucket_ids, self.weights, strict=True))
            counts = defaultdict(int)
            for (bucket, weight), n in groups.items():
                counts[bucket] += round(weight * n)
        total = sum(math.ceil(n / self.batch_size) for n in counts.values())
        return total // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.rank :: self.num_replicas][self.start :]

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start


# ---------------------------------------------------------------------------------------------
# Classifier-free-guidance dropout

CFG_CONDITIONS = ("text", "face", "body")


def draw_condition_dropout(
    batch_size: int, probabilities: Mapping[str, float], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Per condition, a (batch,) bool tensor: True where that condition is dropped.

    With probability `all` a sample drops every condition together (the unconditional input
    of classifier-free guidance); otherwise each condition is dropped with its own probability.
    """
    unknown = set(probabilities) - {*CFG_CONDITIONS, "all"}
    if unknown:
        raise ValueError(f"unknown CFG dropout conditions {sorted(unknown)}")
    together = torch.rand(batch_size, generator=generator) < probabilities.get("all", 0.0)
    alone = {
        name: torch.rand(batch_size, generator=generator) < probabilities.get(name, 0.0)
        for name in CFG_CONDITIONS
    }
    return {name: together | dropped for name, dropped in alone.items()}


def drop_condition(embeds: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """Replace dropped rows by zeros: exactly the pipeline's unconditional input for text
    (zeros for an empty negative prompt), face and body."""
    dropped = dropped.to(embeds.device).reshape(-1, *([1] * (embeds.ndim - 1)))
    return torch.where(dropped, torch.zeros_like(embeds), embeds)
