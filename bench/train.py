"""Training cost on the CPU with the tiny config, on the sample triplets (`make demo` first).

- step time: one optimiser step of `training.loop` (frozen encoders, the denoiser forward
  and backward, AdamW), median of alternating repeats;
- the data loader alone against the training step, in samples/s: the loader must never be
  the bottleneck (ratio >= 3);
- latent caching: a step whose VAE, text and body encodings come from the cache against one
  that computes them.

The full-size `sdxl` step (1024², bf16, batch 1: time, peak memory, FLOP utilisation) is
`bench/model_gpu.py`, on a CUDA machine.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from bench.report import write_section
from core.layout import DataLayout
from orchestration.params import load_params
from training.data import (
    BucketBatchSampler,
    TripletDataset,
    collate,
    load_manifest,
    resolve_buckets,
)
from training.denoising import Denoiser, FrozenEncoders, denoising_loss
from training.model import CONFIGS, base_components, trainable_parameters

REPO = Path(__file__).resolve().parents[1]
REPEATS = 15


def main() -> None:
    torch.set_num_threads(1)
    layout = DataLayout.from_env()
    try:
        manifest = load_manifest(layout.triplets_dir)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"bench/train.py needs the sample triplets (make demo): {error}")
    params = load_params(REPO / "params.yaml", "tiny").training
    components = base_components(CONFIGS[params.config], seed=params.seed)
    buckets = resolve_buckets(params.buckets)
    dataset = TripletDataset(manifest, layout.triplets_dir, buckets, components["body_processor"])
    sampler = BucketBatchSampler(dataset.bucket_ids, params.batch_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=params.num_workers
    )
    model = Denoiser(components["unet"], components["controlnet"])
    trainable = list(trainable_parameters(model.unet, model.controlnet).values())
    optimizer = torch.optim.AdamW(trainable, lr=params.learning_rate)
    scheduler = DDPMScheduler(**CONFIGS[params.config].scheduler)
    generator = torch.Generator().manual_seed(0)
    cpu = torch.device("cpu")
    batches = [collate([dataset[i] for i in batch]) for batch in sampler]

    def step(encoders: FrozenEncoders, batch: dict) -> None:
        loss = denoising_loss(
            model,
            scheduler,
            encoders(batch, cpu),
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

    plain = FrozenEncoders(components, torch.float32, cache=False)
    cached = FrozenEncoders(components, torch.float32, cache=True)
    for batch in batches:  # warm-up, and fills the cache
        step(cached, batch)
    load_s, plain_s, cached_s = [], [], []
    for repeat in range(REPEATS):
        batch = batches[repeat % len(batches)]
        load_s.append(timed(lambda: next(iter(loader))))
        plain_s.append(timed(lambda b=batch: step(plain, b)))
        cached_s.append(timed(lambda b=batch: step(cached, b)))
    samples = params.batch_size
    load, plain_step, cached_step = (statistics.median(t) for t in (load_s, plain_s, cached_s))
    body = f"""
Tiny config, CPU, 1 torch thread; the {len(manifest)} sample triplets (`make demo`), batch
{samples}, data loader with {params.num_workers} workers; {REPEATS} alternating repeats, medians.

| measurement | seconds | samples/s |
|---|---|---|
| data loader, one batch | {load:.4f} | {samples / load:.1f} |
| training step (encoders computed) | {plain_step:.4f} | {samples / plain_step:.1f} |
| training step (encoders cached) | {cached_step:.4f} | {samples / cached_step:.1f} |

**Loader / step throughput: {plain_step / load:.1f}** (target >= 3: the loader is not the
bottleneck). **Latent caching speed-up: {plain_step / cached_step:.2f}x** per step (VAE, both
text encoders and the body encoder skipped).

The full-size step (`sdxl`, 1024², bf16, batch 1) is measured by `bench/model_gpu.py` on a
CUDA machine (section "Model (GPU)").
"""
    write_section("Training (tiny, CPU)", body)


if __name__ == "__main__":
    main()
