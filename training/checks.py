"""What training checks before any work, and the errors it stops with: the dataset's version
against dvc.lock, the inputs a run needs, whether a checkpoint may be resumed with these
settings, and which optimiser can run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.layout import DataLayout
from core.versioning import dvc_md5, locked_md5
from training.data import check_buckets, load_manifest, resolve_buckets
from training.features import FeatureDataset, features_id
from training.model import BODY_ENCODER_DIR, CONFIGS, INSTANTID_DIR, SDXL_INPAINT_DIR, ModelConfig
from training.params import TrainingParams


class TrainingError(RuntimeError):
    """A clear reason to stop before or during training."""


def dataset_version(triplets_dir: Path, lock_file: Path | None) -> str:
    """The DVC md5 of the triplets; with a lock file, it must be the locked version."""
    md5 = dvc_md5(triplets_dir)
    if lock_file is None:
        return md5
    locked = locked_md5(triplets_dir, lock_file)
    if locked is None:
        raise TrainingError(
            f"{lock_file} does not version {triplets_dir}: run `dvc repro dataset` and commit "
            "dvc.lock, or train with --unlocked to train on an unversioned dataset"
        )
    if locked != md5:
        raise TrainingError(
            f"{triplets_dir} (md5 {md5}) is not the version in {lock_file} ({locked}): run "
            f"`dvc checkout {triplets_dir.name}` to restore the locked dataset, or "
            "`dvc repro dataset` (then commit dvc.lock) to version this one"
        )
    return md5


def bucket_multiple(config: ModelConfig) -> int:
    """What every bucket side must be a multiple of: the VAE factor × the U-Net downsampling."""
    vae_factor = 2 ** (len(config.vae["block_out_channels"]) - 1)
    return vae_factor * 2 ** (len(config.unet["down_block_types"]) - 1)


def check_inputs(
    params: TrainingParams,
    data_root: str | Path | None,
    models_dir: str | Path | None,
    lock_file: str | Path | None,
    features_required: bool = True,
) -> str:
    """What `train` needs before any work, checked without loading a model: the triplets and
    their version, the buckets, the pretrained weights' folders, the features of that dataset
    version (unless not `features_required`: `train` builds what is missing). Returns the
    dataset md5."""
    layout = DataLayout.from_env(data_root)
    manifest = load_manifest(layout.triplets_dir)
    md5 = dataset_version(layout.triplets_dir, Path(lock_file) if lock_file else None)
    config = CONFIGS[params.config]
    buckets = resolve_buckets(params.buckets)
    check_buckets(buckets, bucket_multiple(config))
    if not config.byte_tokenizers:
        if models_dir is None:
            raise TrainingError(f"the {config.name} config loads pretrained weights: set --models")
        missing = [
            name
            for name in (SDXL_INPAINT_DIR, INSTANTID_DIR, BODY_ENCODER_DIR)
            if not (Path(models_dir) / name).is_dir()
        ]
        if missing:
            raise TrainingError(
                f"not in the models directory {models_dir}: {', '.join(missing)} "
                f"(`cameo weights status --for train --models {models_dir}` lists what is "
                "missing, `cameo weights download --for train` downloads it)"
            )
    if params.features and features_required:
        FeatureDataset(
            manifest, layout.features_dir / features_id(params, models_dir), buckets, md5
        )
    return md5


def check_resumable(
    checkpoint: Path, state: dict[str, Any], params: TrainingParams, world_size: int
) -> None:
    """Refuse to continue `checkpoint` with settings that change the model, the data order or
    the split (`TrainingParams.fingerprint`), or with another number of processes; the message
    names each setting that changed."""
    now = params.fingerprint()
    changed = {
        key: (state["fingerprint"].get(key), value)
        for key, value in now.items()
        if state["fingerprint"].get(key) != value
    }
    if changed:
        said = ", ".join(f"training.{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise TrainingError(
            f"{checkpoint} was trained with other settings ({said}): they decide the model, "
            "the data order or the split; resume with the same ones, or use another output_dir"
        )
    if state["world_size"] != world_size:
        raise TrainingError(
            f"{checkpoint} was written by {state['world_size']} processes, not {world_size}: "
            "the batch order would differ; resume with the same count"
        )


def optimizer_class(use_8bit_adam: bool, device: torch.device) -> type[torch.optim.Optimizer]:
    """AdamW, or bitsandbytes' AdamW8bit where asked for; refused where it cannot run, so the
    run never silently trains with another optimiser than the one configured."""
    if not use_8bit_adam:
        return torch.optim.AdamW
    if device.type != "cuda":
        raise TrainingError(
            f"training.use_8bit_adam: bitsandbytes' AdamW8bit needs CUDA, and this process "
            f"trains on {device.type}: set use_8bit_adam: false"
        )
    try:
        import bitsandbytes
    except ImportError as error:
        raise TrainingError(
            "training.use_8bit_adam: the bitsandbytes package is not installed (it is in "
            "requirements-gpu.lock): install it, or set use_8bit_adam: false"
        ) from error
    return bitsandbytes.optim.AdamW8bit


# ---------------------------------------------------------------------------------------------
# The loop
