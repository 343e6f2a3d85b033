"""Precomputed conditioning features: what the frozen encoders make of each triplet, computed
once and read by training instead of re-encoding every step.

Per triplet, in its aspect-ratio bucket: the VAE latents of the target and of the masked
target, the mask at latent size, both text encoders' 154-token hidden states and the pooled
embedding, the body tokens, the raw-scale face embedding, the pose drawing (uint8) and SDXL's
time ids. They are stored as safetensors shards, memory-mapped when read:

    <features>/<encoders id>/index.json          triplet id → key, shard, bucket
    <features>/<encoders id>/shard-<n>.safetensors   tensors `<key>/<name>`

The folder is named by the encoders' identity (model config, seed of random weights, or the
pretrained weights' files), and each triplet's key by the md5 of its files and its bucket,
so a changed image, bucket list or encoder gets new features, and an unchanged triplet is
never encoded twice (`build_features` adds only what is missing).
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from core.io import atomic_path, write_json
from core.versioning import dvc_md5
from training.data import BucketBatchSampler, TripletDataset, collate, resolve_buckets
from training.denoising import ENCODED, FrozenEncoders
from training.distributed import Distributed
from training.model import BODY_ENCODER_DIR, CONFIGS, SDXL_INPAINT_DIR
from training.params import TrainingParams

INDEX = "index.json"
IMAGE_COLUMNS = ("reference_crop", "target", "target_mask", "target_pose")


def features_id(params: TrainingParams, models_dir: str | Path | None) -> str:
    """The feature store's folder name: what the encoders' outputs are a function of. The
    model config and its precision, and the seed of random weights (the tiny config) or each
    pretrained encoder folder's files (relative name and size)."""
    config = CONFIGS[params.config]
    # bf16 and bf16_pure encode alike: the same stored features.
    parts = [config.name, params.mixed_precision.removesuffix("_pure")]
    if config.byte_tokenizers:  # random weights from the seed, nothing loaded
        parts.append(f"seed={params.seed}")
    else:
        for folder in (SDXL_INPAINT_DIR, BODY_ENCODER_DIR):
            root = Path(models_dir or "") / folder
            files = sorted(p for p in root.rglob("*") if p.is_file())
            parts += [f"{p.relative_to(root)}:{p.stat().st_size}" for p in files]
    return f"{config.name}-{hashlib.sha256(chr(0).join(parts).encode()).hexdigest()[:12]}"


def triplet_keys(
    manifest: pd.DataFrame, triplets_dir: Path, buckets: Sequence[tuple[int, int]]
) -> list[str]:
    """Each triplet's content key: the md5 of everything its features are made of (its image
    files, prompt, face embedding and whether it is dropped) and of the bucket list."""
    keys = []
    for row in manifest.itertuples(index=False):
        digest = hashlib.md5(repr([list(b) for b in buckets]).encode())
        digest.update(row.prompt.encode())
        digest.update(np.asarray(row.face_embedding, dtype=np.float32).tobytes())
        digest.update(np.float32(row.face_embedding_raw_norm).tobytes())
        if row.face_dropped:  # kept out otherwise: the keys of datasets before the flag hold
            digest.update(b"face dropped")
        for column in IMAGE_COLUMNS:
            digest.update((triplets_dir / getattr(row, column)).read_bytes())
        keys.append(digest.hexdigest())
    return keys


def sample_features(
    batch: dict[str, Any], encoded: dict[str, torch.Tensor], row: int
) -> dict[str, torch.Tensor]:
    """One sample's stored tensors: the encoders' outputs and what the dataset gives as is."""
    stored = {name: encoded[name][row].contiguous().cpu() for name in ENCODED}
    stored["face_embedding"] = batch["face_embedding"][row].contiguous()
    stored["pose"] = (batch["pose"][row] * 255).round().to(torch.uint8).contiguous()
    stored["time_ids"] = batch["time_ids"][row].contiguous()
    return stored


def build_features(
    manifest: pd.DataFrame,
    triplets_dir: Path,
    store: Path,
    components: dict[str, Any],
    buckets: Sequence[tuple[int, int]],
    dtype: torch.dtype,
    device: torch.device,
    dataset_md5: str,
    batch_size: int = 8,
    shard_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Encode every triplet of `manifest` that `store` lacks; write the new shards and the
    index atomically. Returns the index (`{"samples": {triplet id: {...}}, ...}`)."""
    keys = triplet_keys(manifest, triplets_dir, buckets)
    index_path = store / INDEX
    previous = json.loads(index_path.read_text()) if index_path.is_file() else {"samples": {}}
    stored = {entry["key"]: entry for entry in previous["samples"].values()}
    missing = [i for i, key in enumerate(keys) if key not in stored]
    if missing:
        encoders = FrozenEncoders(components, dtype)
        dataset = TripletDataset(
            manifest.iloc[missing], triplets_dir, buckets, components["body_processor"]
        )
        sampler = BucketBatchSampler(dataset.bucket_ids, batch_size)
        shard_number = 1 + max((int(e["shard"][6:11]) for e in stored.values()), default=-1)
        pending: dict[str, torch.Tensor] = {}
        entries: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal shard_number, pending, entries
            shard = f"shard-{shard_number:05d}.safetensors"
            with atomic_path(store / shard) as tmp:
                save_file(pending, str(tmp))
            for entry in entries:
                stored[entry["key"]] = {**entry, "shard": shard}
            shard_number, pending, entries = shard_number + 1, {}, []

        for batch_indices in sampler:
            batch = collate([dataset[i] for i in batch_indices])
            encoded = encoders(batch, device)
            for row, i in enumerate(batch_indices):
                key = keys[missing[i]]
                for name, tensor in sample_features(batch, encoded, row).items():
                    pending[f"{key}/{name}"] = tensor
                entries.append({"key": key, "bucket": list(dataset.placements[i].bucket)})
                if len(entries) >= shard_size:
                    flush()
                if progress is not None:
                    progress(1)
        if entries:
            flush()
    index = {
        "dataset_md5": dataset_md5,
        "buckets": [list(b) for b in buckets],
        "dtype": str(dtype).removeprefix("torch."),
        "samples": {
            tid: stored[key] for tid, key in zip(manifest["triplet_id"], keys, strict=True)
        },
    }
    write_json(index, index_path)
    used = {entry["shard"] for entry in index["samples"].values()}
    for shard in store.glob("shard-*.safetensors"):
        if shard.name not in used:
            shard.unlink()  # only triplets no longer in the dataset were in it
    return index


def why_unusable(store: Path, buckets: Sequence[tuple[int, int]], dataset_md5: str) -> str | None:
    """Why `store` does not hold the features of dataset `dataset_md5` in `buckets` (missing,
    of another dataset version, of other buckets); None when it does."""
    if not (store / INDEX).is_file():
        return f"no features at {store}"
    built = json.loads((store / INDEX).read_text())
    if built["dataset_md5"] != dataset_md5:
        return f"{store} holds the features of dataset {built['dataset_md5']}, not of {dataset_md5}"
    if built["buckets"] != [list(b) for b in buckets]:
        return f"{store} was built for other buckets"
    return None


class FeatureDataset(torch.utils.data.Dataset):
    """Samples of a manifest (or a split of it) read from a feature store, memory-mapped.

    Items hold the encoders' outputs (`training.denoising.ENCODED`) next to the face
    embedding, the pose drawing in [0, 1] and the time ids, as `TripletDataset`'s do."""

    def __init__(
        self,
        manifest: pd.DataFrame,
        store: Path,
        buckets: Sequence[tuple[int, int]],
        dataset_md5: str,
    ) -> None:
        unusable = why_unusable(store, buckets, dataset_md5)
        if unusable is not None:
            raise FileNotFoundError(
                f"{unusable}: run `dvc repro features` (or `cameo features build`)"
            )
        index = json.loads((store / INDEX).read_text())["samples"]
        self.store = store
        self.triplet_ids = list(manifest["triplet_id"])
        self.entries = [index[t] for t in self.triplet_ids]
        self.buckets = [tuple(b) for b in buckets]
        self._shards: dict[str, Any] = {}  # opened lazily: once per DataLoader worker

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def bucket_ids(self) -> list[int]:
        return [self.buckets.index(tuple(e["bucket"])) for e in self.entries]

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        if entry["shard"] not in self._shards:
            self._shards[entry["shard"]] = safe_open(str(self.store / entry["shard"]), "pt")
        shard = self._shards[entry["shard"]]
        item = {
            name: shard.get_tensor(f"{entry['key']}/{name}")
            for name in (*ENCODED, "face_embedding", "time_ids")
        }
        item["pose"] = shard.get_tensor(f"{entry['key']}/pose").to(torch.float32) / 255.0
        return {"triplet_id": self.triplet_ids[index], "index": index, **item}


class StoredFeatures:
    """The encoders' side of a step when the batch comes from a `FeatureDataset`: the stored
    outputs, on the device, in the compute dtype (what `FrozenEncoders` would return)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        return {name: batch[name].to(device, self.dtype) for name in ENCODED}


def bytes_per_triplet(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> int:
    """The stored size of one triplet's features: `shapes` of the encoded tensors in `dtype`,
    the pose as uint8 and the face embedding and time ids as float32."""
    size = torch.empty((), dtype=dtype).element_size()
    encoded = sum(int(np.prod(shapes[name])) for name in ENCODED) * size
    return encoded + int(np.prod(shapes["pose"])) + 4 * (int(np.prod(shapes["face_embedding"])) + 6)


def precompute(
    params: TrainingParams,
    data_root: str | Path | None = None,
    models_dir: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """The features stage: every triplet of `data/triplets` encoded once by the frozen
    encoders of `params.config` under its precision policy, on the GPU where there is one.
    Returns the store and its index."""
    from tqdm import tqdm

    from core.layout import DataLayout
    from training.data import load_manifest
    from training.model import base_components
    from training.precision import PrecisionPolicy

    layout = DataLayout.from_env(data_root)
    manifest = load_manifest(layout.triplets_dir)
    config = CONFIGS[params.config]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    components = base_components(config, models_dir, params.seed, params.trust_remote_code)
    for name in ("vae", "text_encoder", "text_encoder_2", "body_encoder"):
        components[name].to(device)
    precision = PrecisionPolicy.from_setting(params.mixed_precision)
    precision.apply(components)
    store = layout.features_dir / features_id(params, models_dir)
    dataset_md5 = dvc_md5(layout.triplets_dir)
    with tqdm(
        total=len(manifest), unit="triplet", desc="features", disable=not show_progress
    ) as bar:
        index = build_features(
            manifest,
            layout.triplets_dir,
            store,
            components,
            resolve_buckets(params.buckets),
            precision.compute_dtype,
            device,
            dataset_md5,
            batch_size=params.batch_size,
            progress=bar.update,
        )
    return store, index


def ensure_features(
    params: TrainingParams,
    data_root: str | Path | None,
    models_dir: str | Path | None,
    dataset_md5: str,
    env: Distributed,
    show_progress: bool = False,
) -> None:
    """Where the feature store of `params` does not hold dataset `dataset_md5`'s features
    (missing, stale), build it as `cameo features build` does (`precompute`): rank 0 builds
    while the other ranks wait."""
    from core.layout import DataLayout

    if env.is_main:
        store = DataLayout.from_env(data_root).features_dir / features_id(params, models_dir)
        unusable = why_unusable(store, resolve_buckets(params.buckets), dataset_md5)
        if unusable is not None:
            print(f"{unusable}: building them", file=sys.stderr, flush=True)
            precompute(params, data_root, models_dir, show_progress)
    env.barrier()
