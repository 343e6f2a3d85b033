"""Training (article section 3.2.5): frozen SDXL inpainting, trainable identity branches and
Pose-IdentityNet, on the DVC-versioned triplets, logged to MLflow, resumable.

One launcher line for every scale (plain torch.distributed, DDP; gloo on CPU, NCCL on GPU):

    python -m training.train --steps 6                             # one process
    torchrun --nproc-per-node 8 -m training.train                  # one node, 8 GPUs
    torchrun --nnodes N --node-rank R --rdzv-endpoint HOST:29500 --nproc-per-node 8 \\
        -m training.train                                          # N nodes

Every tunable is the `training` section of params.yaml (`TrainingParams`). Read `train` top to
bottom: data, model, optimiser, resume, MLflow, the loop, checkpoints, the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, cast_training_params, compute_snr

from assets.layout import DataLayout, dvc_md5
from assets.params import ParamsError, param, params_section, validate_section
from training.data import (
    CFG_CONDITIONS,
    BucketBatchSampler,
    TripletDataset,
    check_buckets,
    collate,
    draw_condition_dropout,
    drop_condition,
    load_manifest,
    resolve_buckets,
    split_by_identity,
)
from training.evaluate import FULL, Evaluator, ValidationSample, log_evaluation
from training.model import (
    BODY_ENCODER_DIR,
    CONFIGS,
    INSTANTID_DIR,
    SDXL_INPAINT_DIR,
    CheckpointInfo,
    ModelConfig,
    base_components,
    load_checkpoint,
    predict_noise,
    save_checkpoint,
    set_adapter_scales,
    trainable_parameters,
)
from training.pipeline import CharacterInpaintPipeline
from training.text import encode_prompt

STATE_FILE = "training_state.pt"
CHECKPOINT_PREFIX = "checkpoint-"
FINAL_DIR = "final"
METRICS_FILE = "metrics.json"  # DVC metrics of the train stage
RUN_FILE = "run.json"  # the MLflow run that made `final/`


@params_section("training")
@dataclass(frozen=True)
class TrainingParams:
    """The `training` section of params.yaml (validated with the rest of the file)."""

    config: str = "sdxl"  # training.model.CONFIGS
    seed: int = 0
    validation_fraction: float = param(0.1, ge=0, lt=1)  # of the identities, held out
    buckets: str | list = "pixart_1024"  # or "h,w;h,w;…"
    batch_size: int = param(1, ge=1)  # per process (the article: one sample per GPU, 8 H100s)
    gradient_accumulation_steps: int = param(1, ge=1)
    max_steps: int = param(100_000, ge=1)  # optimiser steps
    learning_rate: float = param(1.0e-5, gt=0)
    lr_scheduler: str = "constant_with_warmup"  # diffusers.optimization.get_scheduler names
    lr_warmup_steps: int = param(500, ge=0)
    adam_beta1: float = param(0.9, ge=0, lt=1)
    adam_beta2: float = param(0.999, ge=0, lt=1)
    adam_epsilon: float = param(1.0e-8, gt=0)
    weight_decay: float = param(1.0e-2, ge=0)
    use_8bit_adam: bool = True  # where bitsandbytes and CUDA are present
    max_grad_norm: float = param(1.0, ge=0)  # 0: no clipping (the norm is still logged)
    mixed_precision: str = "bf16"  # "bf16" or "no"; CPU always trains in float32
    gradient_checkpointing: bool = False  # on: less memory, about 2x the step (BENCHMARKS.md)
    ema_decay: float = param(0.0, ge=0, lt=1)  # 0: no EMA of the trainable weights
    snr_gamma: float = param(0.0, ge=0)  # 0: plain MSE; else min-SNR-γ weighting
    cfg_dropout: dict = field(default_factory=lambda: {"text": 0.05, "face": 0.05, "body": 0.05})
    cache_latents: bool = False  # keep each sample's frozen-encoder outputs after first use
    num_workers: int = param(4, ge=0)
    checkpoint_every: int = param(1000, ge=1)
    keep_checkpoints: int = param(3, ge=1)
    validate_every: int = param(1000, ge=1)
    validation_samples: int = param(4, ge=0)  # triplets drawn as 5-panel grids
    validation_inference_steps: int = param(30, ge=1)
    log_every: int = param(10, ge=1)
    output_dir: str = "checkpoints"
    trust_remote_code: bool = False  # run the body encoder's own code (InternViT needs it)

    def problems(self) -> list[str]:
        found = []
        if self.config not in CONFIGS:
            found.append(f"config must be one of {sorted(CONFIGS)}, got {self.config!r}")
        if self.mixed_precision not in ("bf16", "no"):
            found.append(f"mixed_precision must be 'bf16' or 'no', got {self.mixed_precision!r}")
        for name, p in self.cfg_dropout.items():
            if name not in CFG_CONDITIONS:
                found.append(f"cfg_dropout.{name}: unknown; known: {', '.join(CFG_CONDITIONS)}")
            elif not isinstance(p, int | float) or not 0 <= p <= 1:
                found.append(f"cfg_dropout.{name} must be in [0, 1], got {p!r}")
        return found

    @classmethod
    def from_params(cls, params: dict[str, Any], **overrides: Any) -> TrainingParams:
        """The section of loaded params, with overrides (e.g. from the command line)."""
        instance, problems = validate_section(
            "training", {**params.get("training", {}), **overrides}, cls
        )
        if instance is None:
            raise ParamsError("training parameters: " + "; ".join(problems))
        return instance

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint it continues (model and data
        layout; not the step budget or logging cadence)."""
        return {"config": self.config, "buckets": self.buckets, "seed": self.seed}


class TrainingError(RuntimeError):
    """A clear reason to stop before or during training."""


# ---------------------------------------------------------------------------------------------
# Distributed set-up (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK)


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is True on any rank."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def init_distributed() -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank, device)


# ---------------------------------------------------------------------------------------------
# The dataset version


def locked_dataset_md5(triplets_dir: Path, lock_file: Path) -> str | None:
    """The md5 `dvc.lock` records for `triplets_dir`, None when the lock does not list it."""
    import yaml

    if not lock_file.is_file():
        return None
    lock = yaml.safe_load(lock_file.read_text()) or {}
    for stage in lock.get("stages", {}).values():
        for out in stage.get("outs", []):
            if (lock_file.parent / out["path"]).resolve() == triplets_dir.resolve():
                return out.get("md5")
    return None


def dataset_version(triplets_dir: Path, lock_file: Path | None) -> str:
    """The DVC md5 of the triplets; with a lock file, it must be the locked version."""
    md5 = dvc_md5(triplets_dir)
    if lock_file is None:
        return md5
    locked = locked_dataset_md5(triplets_dir, lock_file)
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
) -> str:
    """What `train` needs before any work, checked without loading a model: the triplets and
    their version, the buckets, the pretrained weights' folders. Returns the dataset md5."""
    layout = DataLayout.from_env(data_root)
    load_manifest(layout.triplets_dir)
    md5 = dataset_version(layout.triplets_dir, Path(lock_file) if lock_file else None)
    config = CONFIGS[params.config]
    check_buckets(resolve_buckets(params.buckets), bucket_multiple(config))
    if not config.byte_tokenizers:
        if models_dir is None:
            raise TrainingError(f"the {config.name} config loads pretrained weights: set --models")
        missing = [
            name
            for name in (SDXL_INPAINT_DIR, INSTANTID_DIR, BODY_ENCODER_DIR)
            if not (Path(models_dir) / name).is_dir()
        ]
        if missing:
            raise TrainingError(f"not in the models directory {models_dir}: {', '.join(missing)}")
    return md5


# ---------------------------------------------------------------------------------------------
# Frozen encoders: what caching keeps


class FrozenEncoders:
    """VAE, both text encoders and the body encoder turn a batch into the denoiser's inputs.

    With `cache` on, each sample's outputs are kept (on CPU) after their first computation:
    every encoder is frozen and the dataset's crops are deterministic, so later epochs
    recompute exactly the same tensors.
    """

    def __init__(self, components: dict[str, Any], dtype: torch.dtype, cache: bool) -> None:
        self.vae = components["vae"]
        self.tokenizers = (components["tokenizer"], components["tokenizer_2"])
        self.text_encoders = (components["text_encoder"], components["text_encoder_2"])
        self.body_encoder = components["body_encoder"]
        self.dtype = dtype
        self.cache: dict[str, dict[str, torch.Tensor]] | None = {} if cache else None

    @torch.no_grad()
    def _encode(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        vae = self.vae
        target = batch["target"].to(device, vae.dtype)
        mask = batch["mask"].to(device, vae.dtype)
        # The latent mean, not a sample: deterministic, so caching changes nothing.
        latents = vae.encode(target).latent_dist.mode() * vae.config.scaling_factor
        masked = target * (mask < 0.5)
        masked_latents = vae.encode(masked).latent_dist.mode() * vae.config.scaling_factor
        prompt_embeds, pooled = encode_prompt(batch["prompt"], self.tokenizers, self.text_encoders)
        pixels = batch["body_pixels"].to(device, self.body_encoder.dtype)
        body = self.body_encoder(pixel_values=pixels).last_hidden_state
        return {
            "latents": latents,
            "masked_latents": masked_latents,
            "mask": F.interpolate(mask, size=latents.shape[-2:]),  # as the inpaint pipeline
            "prompt_embeds": prompt_embeds,
            "pooled": pooled,
            "body": body,
        }

    def __call__(self, batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        if self.cache is None:
            encoded = self._encode(batch, device)
        else:
            missing = [i for i, t in enumerate(batch["triplet_id"]) if t not in self.cache]
            if missing:
                fresh = self._encode(_select(batch, missing), device)
                for row, i in enumerate(missing):
                    self.cache[batch["triplet_id"][i]] = {k: v[row].cpu() for k, v in fresh.items()}
            rows = [self.cache[t] for t in batch["triplet_id"]]
            encoded = {k: torch.stack([r[k] for r in rows]).to(device) for k in rows[0]}
        return {k: v.to(self.dtype) for k, v in encoded.items()}


def _select(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    return {
        k: v[rows] if isinstance(v, torch.Tensor) else [v[i] for i in rows]
        for k, v in batch.items()
    }


class Denoiser(torch.nn.Module):
    """U-Net (with both identity branches) and Pose-IdentityNet as one module for DDP."""

    def __init__(self, unet: torch.nn.Module, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return predict_noise(self.unet, self.controlnet, *args, **kwargs)


# ---------------------------------------------------------------------------------------------
# Checkpoints


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete resumable checkpoints, oldest first (a killed write leaves only a .tmp-)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(CHECKPOINT_PREFIX)))


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_training_checkpoint(
    output_dir: Path,
    step: int,
    unet: torch.nn.Module,
    controlnet: torch.nn.Module,
    info: CheckpointInfo,
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write checkpoint-<step>/ atomically (a temp folder, then one rename); keep the last
    `keep`. Holds the trainable weights in `save_checkpoint`'s layout and the training state."""
    target = output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
    tmp = output_dir / f".tmp-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(unet, controlnet, tmp, info)
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    for old in checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# MLflow (rank 0 only)


def _flatten(prefix: str, value: Any) -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: str(value)}


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainingResult:
    run_id: str | None
    step: int
    final_dir: Path
    dataset_md5: str
    metrics: dict[str, float]
    losses: list[float]
    model: Denoiser  # the trained U-Net and ControlNet of this rank


def denoising_loss(
    denoiser: torch.nn.Module,
    scheduler: DDPMScheduler,
    encoded: dict[str, torch.Tensor],
    batch: dict[str, Any],
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
    cfg_dropout: dict[str, float],
    snr_gamma: float,
) -> torch.Tensor:
    """The denoising loss of one batch: noise, CFG dropout, the denoiser, (min-SNR) MSE."""
    latents = encoded["latents"]
    batch_size = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator).to(device, latents.dtype)
    timesteps = torch.randint(
        0, scheduler.config.num_train_timesteps, (batch_size,), generator=generator
    ).to(device)
    dropped = draw_condition_dropout(batch_size, cfg_dropout, generator)
    prompt_embeds = drop_condition(encoded["prompt_embeds"], dropped["text"])
    pooled = drop_condition(encoded["pooled"], dropped["text"])
    face = drop_condition(batch["face_embedding"].to(device, dtype), dropped["face"])
    body = drop_condition(encoded["body"], dropped["body"])
    noisy = scheduler.add_noise(latents, noise, timesteps)
    prediction = denoiser(
        noisy,
        timesteps,
        encoded["mask"],
        encoded["masked_latents"],
        prompt_embeds,
        pooled,
        batch["time_ids"].to(device, dtype),
        face,
        body,
        batch["pose"].to(device, dtype),
    )
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none")
    per_sample = per_sample.mean(dim=(1, 2, 3))
    if snr_gamma > 0:
        snr = compute_snr(scheduler, timesteps)
        weights = torch.minimum(snr, torch.full_like(snr, snr_gamma)) / snr
        if scheduler.config.prediction_type == "v_prediction":
            weights = weights * snr / (snr + 1)  # min-SNR's form for v-targets
        per_sample = per_sample * weights
    return per_sample.mean()


def train(
    params: TrainingParams,
    *,
    data_root: str | Path | None = None,
    models_dir: str | Path | None = None,
    lock_file: str | Path | None = "dvc.lock",
    resume: bool = False,
    run_name: str | None = None,
    profile: str = "tiny",
    stop_after: int | None = None,
    show_progress: bool = True,
    on_finished: Callable[[Path], None] | None = None,
    scoring: dict[str, Any] | None = None,
) -> TrainingResult:
    """Train to `params.max_steps` optimiser steps (`stop_after`: leave earlier, resumable).

    `lock_file` None trains on whatever `data/triplets` holds (tagged unlocked); otherwise its
    md5 must be the one `dvc.lock` records. `on_finished(final_dir)` runs on rank 0 at the end,
    inside the MLflow run (the command line logs and registers the model there). At every
    validation step rank 0 scores the model on the first `validation_samples` validation
    triplets with the profile's scorers, set by `scoring` (params.yaml's `faces`, `poses` and
    `evaluation` sections; default: their defaults).
    """
    env = init_distributed()
    torch.manual_seed(params.seed)
    output_dir = Path(params.output_dir).resolve()
    layout = DataLayout.from_env(data_root)

    # -- Data: the versioned triplets, split by identity -----------------------------------------
    manifest = load_manifest(layout.triplets_dir)
    md5 = dataset_version(layout.triplets_dir, Path(lock_file) if lock_file else None)
    train_rows, validation_rows = split_by_identity(
        manifest, params.validation_fraction, params.seed
    )
    buckets = resolve_buckets(params.buckets)

    # -- Model: frozen base, trainable identity branches and Pose-IdentityNet --------------------
    config = CONFIGS[params.config]
    components = base_components(config, models_dir, params.seed, params.trust_remote_code)
    unet, controlnet, vae = components["unet"], components["controlnet"], components["vae"]
    check_buckets(buckets, bucket_multiple(config))
    on_gpu = env.device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu and params.mixed_precision == "bf16" else torch.float32
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2", "body_encoder"):
        components[name].to(env.device)
    if dtype != torch.float32:
        for name in ("unet", "controlnet", "text_encoder", "text_encoder_2", "body_encoder"):
            components[name].to(dtype=dtype)
        vae.to(dtype=torch.float32)  # SDXL's VAE overflows in half precision
        cast_training_params([unet, controlnet], dtype=torch.float32)  # fp32 master weights
    if params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    set_adapter_scales(unet, 1.0, 1.0)
    trainable = list(trainable_parameters(unet, controlnet).values())
    model = Denoiser(unet, controlnet)
    denoiser: torch.nn.Module = model
    if env.world_size > 1:
        denoiser = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if on_gpu else None
        )
    scheduler = DDPMScheduler(**config.scheduler)
    encoders = FrozenEncoders(components, dtype, params.cache_latents)

    dataset = TripletDataset(train_rows, layout.triplets_dir, buckets, components["body_processor"])
    sampler = BucketBatchSampler(
        dataset.bucket_ids, params.batch_size, env.world_size, env.rank, params.seed
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=params.num_workers,
        pin_memory=on_gpu,
    )

    # -- Optimiser, schedule, EMA -----------------------------------------------------------------
    optimizer_class = torch.optim.AdamW
    if params.use_8bit_adam and on_gpu:
        try:
            import bitsandbytes

            optimizer_class = bitsandbytes.optim.AdamW8bit
        except ImportError:
            pass
    optimizer = optimizer_class(
        trainable,
        lr=params.learning_rate,
        betas=(params.adam_beta1, params.adam_beta2),
        eps=params.adam_epsilon,
        weight_decay=params.weight_decay,
    )
    lr_scheduler = get_scheduler(
        params.lr_scheduler,
        optimizer,
        num_warmup_steps=params.lr_warmup_steps,
        num_training_steps=params.max_steps,
    )
    ema = EMAModel(trainable, decay=params.ema_decay) if params.ema_decay > 0 else None
    # Noise, timesteps and dropout draws: one stream per rank, saved with every checkpoint.
    generator = torch.Generator().manual_seed(params.seed * 1000 + env.rank)

    # -- Resume -----------------------------------------------------------------------------------
    step, run_id, losses, consumed = 0, None, [], 0
    if resume and checkpoints(output_dir):
        latest = checkpoints(output_dir)[-1]
        state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
        if state["fingerprint"] != params.fingerprint():
            raise TrainingError(
                f"{latest} was trained with {state['fingerprint']}, these params give "
                f"{params.fingerprint()}: resume with the same config, or another output_dir"
            )
        if state["world_size"] != env.world_size:
            raise TrainingError(
                f"{latest} was written by {state['world_size']} processes, not "
                f"{env.world_size}: the batch order would differ; resume with the same count"
            )
        load_checkpoint(unet, controlnet, latest)
        cast_training_params([unet, controlnet], dtype=torch.float32)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        sampler.set_epoch(state["sampler"]["epoch"], state["sampler"]["start"])
        _set_rng_state(state["rng"][env.rank], generator)
        step, run_id, losses = state["step"], state["run_id"], state["losses"]
        consumed = state["sampler"]["start"]
    elif resume and env.is_main:
        print(f"no checkpoint in {output_dir}: starting from step 0", file=sys.stderr)

    # -- MLflow: one run, continued on resume; rank 0 alone logs ---------------------------------
    mlflow = None
    if env.is_main:
        import mlflow

        from training.tracking import configure_tracking, triplets_dataset

        configure_tracking()
        mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name)
        run_id = mlflow.active_run().info.run_id
        print(f"MLflow run {run_id}", flush=True)  # read by training.submit from the log
        if step == 0:
            mlflow.log_params(_flatten("training", asdict(params)))
            mlflow.log_params({"model.config": config.name})
            mlflow.log_dict(json.loads(config.to_json()), "model_config.json")
            mlflow.set_tags(
                {
                    "git_commit": git_commit(Path.cwd()),
                    "profile": profile,
                    "world_size": env.world_size,
                    "effective_batch_size": params.batch_size
                    * params.gradient_accumulation_steps
                    * env.world_size,
                    "dataset_md5": md5,
                    "dataset_locked": str(lock_file is not None).lower(),
                }
            )
            # MLflow keys datasets by (name, digest): the split gets a name of its own.
            splits = (
                ("triplets", train_rows, "training"),
                ("triplets-validation", validation_rows, "validation"),
            )
            for name, rows, context in splits:
                dataset = triplets_dataset(rows, layout.triplets_dir, name, md5)
                mlflow.log_input(dataset, context=context)

    try:
        # -- The loop -----------------------------------------------------------------------------
        validation_loader, validation_samples = None, []
        if env.is_main and len(validation_rows):
            validation_samples = [
                ValidationSample.from_row(row, layout.triplets_dir, buckets)
                for row in validation_rows.head(params.validation_samples).itertuples(index=False)
            ]
            evaluator = Evaluator.from_params({**(scoring or {}), "profile": profile}, models_dir)
            validation_set = TripletDataset(
                validation_rows, layout.triplets_dir, buckets, components["body_processor"]
            )
            validation_loader = torch.utils.data.DataLoader(
                validation_set,
                batch_sampler=BucketBatchSampler(validation_set.bucket_ids, params.batch_size),
                collate_fn=collate,
            )
        progress = None
        if env.is_main and show_progress:
            from tqdm import tqdm

            progress = tqdm(total=params.max_steps, initial=step, unit="step", desc="train")
        last_step = params.max_steps if stop_after is None else min(params.max_steps, stop_after)
        accumulation = params.gradient_accumulation_steps
        micro, step_loss, tick, samples = 0, 0.0, time.perf_counter(), 0
        denoiser.train()
        while step < last_step:
            for batch in loader:
                encoded = encoders(batch, env.device)
                sync = (micro + 1) % accumulation == 0
                # Between optimiser steps DDP need not all-reduce gradients.
                skip_sync = denoiser.no_sync() if env.world_size > 1 and not sync else nullcontext()
                with (
                    skip_sync,
                    torch.autocast(env.device.type, dtype, enabled=dtype != torch.float32),
                ):
                    loss = denoising_loss(
                        denoiser,
                        scheduler,
                        encoded,
                        batch,
                        generator,
                        env.device,
                        dtype,
                        params.cfg_dropout,
                        params.snr_gamma,
                    )
                    (loss / accumulation).backward()
                micro += 1
                consumed += 1
                samples += len(batch["triplet_id"])
                step_loss += float(loss.detach()) / accumulation
                if env.any(not math.isfinite(step_loss)):
                    last_good = checkpoints(output_dir)
                    raise TrainingError(
                        f"non-finite loss at step {step + 1}: stopped; the last good checkpoint "
                        f"is {last_good[-1] if last_good else 'none (nothing was saved)'}"
                    )
                if not sync:
                    continue
                max_norm = params.max_grad_norm if params.max_grad_norm > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(trainable)
                step += 1
                losses.append(step_loss)
                step_loss = 0.0
                if progress is not None:
                    progress.update()
                    progress.set_postfix(loss=f"{losses[-1]:.4f}")
                if mlflow is not None and (step % params.log_every == 0 or step == last_step):
                    elapsed = time.perf_counter() - tick
                    mlflow.log_metrics(
                        {
                            "loss": losses[-1],
                            "lr": lr_scheduler.get_last_lr()[0],
                            "grad_norm": float(grad_norm),
                            "samples_per_s": samples * env.world_size / max(elapsed, 1e-9),
                            "peak_memory_mb": peak_memory_mb(env.device),
                        },
                        step=step,
                    )
                    tick, samples = time.perf_counter(), 0
                if validation_loader is not None and (
                    step % params.validate_every == 0 or step == last_step
                ):
                    val_loss = validation_loss(
                        model, scheduler, encoders, validation_loader, env, dtype, params.seed
                    )
                    mlflow.log_metric("val_loss", val_loss, step=step)
                    if validation_samples:
                        # The model as it is now, scored as `cameo evaluate` scores it.
                        pipe = CharacterInpaintPipeline(**components)
                        pipe.set_progress_bar_config(disable=True)
                        evaluation = evaluator.evaluate(
                            pipe,
                            validation_samples,
                            ablations=[FULL],
                            inference_steps=params.validation_inference_steps,
                            seed=params.seed,
                        )
                        log_evaluation(evaluation, step=step)
                    model.train()
                if step % params.checkpoint_every == 0 or step == last_step:
                    rng = env.gather(_rng_state(generator))
                    if env.is_main:
                        save_training_checkpoint(
                            output_dir,
                            step,
                            unet,
                            controlnet,
                            CheckpointInfo(config.name, params.seed, step, run_id, md5),
                            {
                                "step": step,
                                "run_id": run_id,
                                "losses": losses,
                                "fingerprint": params.fingerprint(),
                                "world_size": env.world_size,
                                "optimizer": optimizer.state_dict(),
                                "lr_scheduler": lr_scheduler.state_dict(),
                                "ema": ema.state_dict() if ema is not None else None,
                                "sampler": {"epoch": sampler.epoch, "start": consumed},
                                "rng": rng,
                            },
                            params.keep_checkpoints,
                        )
                    env.barrier()
                if step >= last_step:
                    break
            else:
                sampler.set_epoch(sampler.epoch + 1)
                consumed = 0
        if progress is not None:
            progress.close()

        # -- The end: the trained weights (EMA where kept), metrics for DVC and MLflow -----------
        final_dir = output_dir / FINAL_DIR
        tail = max(1, len(losses) // 4)  # first and last quarter: the trend, not one step's noise
        metrics = {
            "step": step,
            "loss": losses[-1] if losses else math.nan,
            "loss_first": float(np.mean(losses[:tail])) if losses else math.nan,
            "loss_last": float(np.mean(losses[-tail:])) if losses else math.nan,
        }
        if env.is_main:
            if ema is not None:
                ema.store(trainable)
                ema.copy_to(trainable)
            # `final/` and metrics.json are DVC outputs: nothing run-specific goes in them, so the
            # same data, code and params give the same dvc.lock. The run is named in run.json.
            info = CheckpointInfo(config.name, params.seed, step, None, md5)
            tmp = output_dir / f".tmp-{FINAL_DIR}"
            shutil.rmtree(tmp, ignore_errors=True)
            save_checkpoint(unet, controlnet, tmp, info)
            shutil.rmtree(final_dir, ignore_errors=True)
            tmp.rename(final_dir)
            if ema is not None:
                ema.restore(trainable)
            (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
            experiment_id = mlflow.active_run().info.experiment_id
            run = {"run_id": run_id, "experiment_id": experiment_id, "dataset_md5": md5}
            (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            mlflow.log_metrics(
                {"loss_first": metrics["loss_first"], "loss_last": metrics["loss_last"]}
            )
            mlflow.log_artifacts(str(final_dir), artifact_path="checkpoint")
            if on_finished is not None and step >= params.max_steps:
                on_finished(final_dir)
            mlflow.end_run()
        env.barrier()
    except BaseException:
        if mlflow is not None:  # the run shows as failed in the UI, not forever running
            mlflow.end_run(status="FAILED")
        raise
    return TrainingResult(run_id, step, final_dir, md5, metrics, losses, model)


@torch.no_grad()
def validation_loss(
    model: torch.nn.Module,
    scheduler: DDPMScheduler,
    encoders: FrozenEncoders,
    loader: torch.utils.data.DataLoader,
    env: Distributed,
    dtype: torch.dtype,
    seed: int,
) -> float:
    """Mean denoising loss on the validation identities, with the same noise every time (and
    no CFG dropout), so the numbers of one run are comparable step to step."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for batch in loader:
        with torch.autocast(env.device.type, dtype, enabled=dtype != torch.float32):
            loss = denoising_loss(
                model,
                scheduler,
                encoders(batch, env.device),
                batch,
                generator,
                env.device,
                dtype,
                {},
                0.0,
            )
        total += float(loss) * len(batch["triplet_id"])
        count += len(batch["triplet_id"])
    return total / count


# ---------------------------------------------------------------------------------------------
# Command line: `python -m training.train`, `torchrun … -m training.train`, `cameo train`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cameo train",
        description="Train the identity branches and Pose-IdentityNet on the DVC-versioned "
        "triplets, logged to MLflow (rank 0). Several processes: torchrun --nproc-per-node N "
        "-m training.train [options].",
    )
    parser.add_argument(
        "--params",
        default=os.environ.get("CAMEO_PARAMS", "params.yaml"),
        help="parameters file, its `training` section (default: $CAMEO_PARAMS or params.yaml)",
    )
    parser.add_argument("--profile", choices=["tiny", "full"], help="default: $CAMEO_PROFILE")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="model config (training.config)")
    parser.add_argument("--steps", type=int, help="total optimiser steps (training.max_steps)")
    parser.add_argument("--stop-after", type=int, help="leave after this step (resumable)")
    parser.add_argument("--resume", action="store_true", help="continue the last checkpoint")
    parser.add_argument("--run-name", help="MLflow run name")
    parser.add_argument("--data", help="data root (default: $CAMEO_DATA or ./data)")
    parser.add_argument("--models", help="models directory (default: $CAMEO_MODELS)")
    parser.add_argument("--output-dir", help="checkpoints folder (training.output_dir)")
    parser.add_argument("--lock", default="dvc.lock", help="the dvc.lock naming the dataset")
    parser.add_argument(
        "--unlocked",
        action="store_true",
        help="train on data/triplets even when dvc.lock does not version it",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check params, the dataset (and its version) and the weights' folders, then exit",
    )
    parser.add_argument(
        "--no-register",
        action="store_true",
        help="do not log the trained model as the MLflow model cameo-inpaint at the end",
    )
    return parser


def register_model(values: dict[str, Any], models_dir: str | None) -> Callable[[Path], None]:
    """Log the final checkpoint as the `cameo-inpaint` pyfunc model into the training run and
    register a new version. Serving builds on training, so it is imported only here, at the
    command line's end."""

    def log(final_dir: Path) -> None:
        from serving.registry import log_model

        info = log_model(final_dir, profile=values["profile"], models_dir=models_dir, params=values)
        print(f"registered {info.registered_model_version} of cameo-inpaint ({info.model_uri})")

    return log


def main(argv: list[str] | None = None) -> TrainingResult:
    from assets.params import load_params

    args = build_parser().parse_args(argv)
    values = load_params(args.params, args.profile)
    overrides = {
        "config": args.config,
        "max_steps": args.steps,
        "output_dir": args.output_dir,
    }
    models_dir = args.models or os.environ.get("CAMEO_MODELS")
    try:
        params = TrainingParams.from_params(
            values, **{k: v for k, v in overrides.items() if v is not None}
        )
        if args.check:
            md5 = check_inputs(params, args.data, models_dir, None if args.unlocked else args.lock)
            print(f"ready to train on dataset {md5}")
            sys.exit(0)
        return train(
            params,
            data_root=args.data,
            models_dir=models_dir,
            lock_file=None if args.unlocked else args.lock,
            resume=args.resume,
            run_name=args.run_name,
            profile=values["profile"],
            stop_after=args.stop_after,
            show_progress=not args.no_progress,
            on_finished=None if args.no_register else register_model(values, models_dir),
            scoring=values,
        )
    except (TrainingError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
