"""Training cost on the CPU with the tiny config, on the sample triplets (`make demo` first).

- step time: one optimiser step of `training.loop` (frozen encoders, the denoiser forward
  and backward, AdamW), median of alternating repeats;
- the data loader alone against the training step, in samples/s: the loader must never be
  the bottleneck (ratio >= 3);
- the features stage: the loader and the step reading precomputed features against those
  that decode images and run the frozen encoders every step, and the features' disk at 1024².

The full-size `sdxl` step (1024², bf16, batch 1: time, peak memory, FLOP utilisation) is
`bench/model_gpu.py`, on a CUDA machine.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from diffusers import DDPMScheduler

from bench.model_gpu_run import BODY_TOKENS
from bench.report import REPO, write_section
from core.layout import DataLayout
from core.versioning import dvc_md5
from orchestration.params import load_params
from training.data import (
    BucketBatchSampler,
    TripletDataset,
    collate,
    load_manifest,
    resolve_buckets,
)
from training.denoising import Denoiser, FrozenEncoders, denoising_loss
from training.features import FeatureDataset, StoredFeatures, bytes_per_triplet, precompute
from training.model import CONFIGS, base_components, trainable_parameters
from training.text import MAX_PROMPT_TOKENS

REPEATS = 15


def feature_bytes_at_1024() -> dict[str, int]:
    """Bytes per triplet of the `sdxl` features stage at 1024² under each precision policy,
    from the tensors' shapes (the encoders' output sizes at that resolution)."""
    config = CONFIGS["sdxl"]
    latent = 1024 // 2 ** (len(config.vae["block_out_channels"]) - 1)
    shapes = {
        "latents": (4, latent, latent),
        "masked_latents": (4, latent, latent),
        "mask": (1, latent, latent),
        "prompt_embeds": (MAX_PROMPT_TOKENS, config.unet["cross_attention_dim"]),
        "pooled": (config.text_encoder_2["projection_dim"],),
        "body": (BODY_TOKENS, config.body_resampler.embed_dims),
        "pose": (3, 1024, 1024),
        "face_embedding": (config.face_resampler.embed_dims,),
    }
    return {
        name: bytes_per_triplet(shapes, dtype)
        for name, dtype in (("float32 (no)", torch.float32), ("bfloat16 (bf16)", torch.bfloat16))
    }


def main() -> None:
    torch.set_num_threads(1)
    layout = DataLayout.from_env()
    try:
        manifest = load_manifest(layout.triplets_dir)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"bench/train.py needs the sample triplets (make demo): {error}")
    params = load_params(REPO / "params.yaml", "tiny").training
    store, _ = precompute(params.updated("training", features=True), layout.root)
    components = base_components(CONFIGS[params.config], seed=params.seed)
    buckets = resolve_buckets(params.buckets)
    datasets = {
        "online": TripletDataset(
            manifest, layout.triplets_dir, buckets, components["body_processor"]
        ),
        "features": FeatureDataset(manifest, store, buckets, dvc_md5(layout.triplets_dir)),
    }
    encoders = {
        "online": FrozenEncoders(components, torch.float32),
        "features": StoredFeatures(torch.float32),
    }
    model = Denoiser(components["unet"], components["controlnet"])
    trainable = list(trainable_parameters(model.unet, model.controlnet).values())
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate)
    scheduler = DDPMScheduler(**CONFIGS[params.config].scheduler)
    generator = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")

    def step(kind: str, batch: dict) -> None:
        loss = denoising_loss(
            model,
            scheduler,
            encoders[kind](batch, cpu),
            batch,
            generator,
            cpu,
            torch.float32,
            params.cfg_dropout.model_dump(),
            params.snr_gamma,
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    loaders, batches = {}, {}
    for kind, dataset in datasets.items():
        sampler = BucketBatchSampler(dataset.bucket_ids, params.batch_size)
        loaders[kind] = torch.utils.data.DataLoader(
            dataset, batch_sampler=sampler, collate_fn=collate, num_workers=params.num_workers
        )
        batches[kind] = [collate([dataset[i] for i in batch]) for batch in sampler]
        step(kind, batches[kind][0])  # warm-up
    times: dict[str, list[float]] = {f"{k}/{m}": [] for k in datasets for m in ("load", "step")}
    for repeat in range(REPEATS):
        for kind in datasets:
            batch = batches[kind][repeat % len(batches[kind])]
            times[f"{kind}/load"].append(timed(lambda k=kind: next(iter(loaders[k]))))
            times[f"{kind}/step"].append(timed(lambda k=kind, b=batch: step(k, b)))
    median = {name: statistics.median(t) for name, t in times.items()}
    samples = params.batch_size
    rate = {name: samples / seconds for name, seconds in median.items()}
    sizes = feature_bytes_at_1024()
    disk = "\n".join(
        f"| {name} | {size / 2**20:.2f} MiB | {size * 80_000 / 1e9:.0f} GB |"
        for name, size in sizes.items()
    )
    body = f"""
Tiny config, CPU, 1 torch thread; the {len(manifest)} sample triplets (`make demo`), batch
{samples}, data loader with {params.num_workers} workers; {REPEATS} alternating repeats, medians.
`online`: the triplet images decoded and every frozen encoder run in the step
(`training.features: false`); `features`: the precomputed features stage, memory-mapped.

| measurement | seconds | samples/s |
|---|---|---|
| data loader, one batch, online | {median["online/load"]:.4f} | {rate["online/load"]:.1f} |
| data loader, one batch, features | {median["features/load"]:.4f} | {rate["features/load"]:.1f} |
| training step, encoders in the step | {median["online/step"]:.4f} | {rate["online/step"]:.1f} |
| training step, from features | {median["features/step"]:.4f} | {rate["features/step"]:.1f} |

**Features loader / step throughput: {rate["features/load"] / rate["features/step"]:.1f}**
(target >= 3: the loader is not the bottleneck). **Step from features / step with the
encoders: {median["features/step"] / median["online/step"]:.2f}** (VAE twice, both text
encoders and the body encoder no longer run per step).

Disk of the features stage at the article's size, from the `sdxl` tensors' shapes at 1024²
(latents 4×128×128 twice, mask 128×128, 154×2048 text tokens, 1280 pooled, 1025×1024 body
tokens, a 3×1024×1024 uint8 pose, 512 face floats, 6 time ids; computed, not measured):

| precision policy | bytes per triplet | 80k triplets |
|---|---|---|
{disk}

The full-size step (`sdxl`, 1024², bf16, batch 1) is measured by `bench/model_gpu.py` on a
CUDA machine (section "Model (GPU)").
"""
    write_section("Training (tiny, CPU)", body)


if __name__ == "__main__":
    main()
