"""Training (article section 3.2.5): frozen SDXL inpainting, trainable identity branches and
Pose-IdentityNet, on the DVC-versioned triplets, logged to MLflow, resumable.

One launcher line for every scale (plain torch.distributed, DDP; gloo on CPU, NCCL on GPU):

    cameo train --steps 6                                          # one process
    torchrun --nproc-per-node 8 -m orchestration.cli.train         # one node, 8 GPUs
    torchrun --nnodes N --node-rank R --rdzv-endpoint HOST:29500 --nproc-per-node 8 \\
        -m orchestration.cli.train                                 # N nodes

Every tunable is the `training` section of params.yaml (`training.params.TrainingParams`).
Read `train` top to bottom: data, model, optimiser, resume, MLflow, the loop, checkpoints, the
end. The file is longer than 500 lines because that one function is, and it reads best whole.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from core.layout import DataLayout
from core.versioning import git_commit
from perception.priors import Priors
from training.acceleration import (
    accelerate,
    build_optimizer,
    distributed_model,
    gather_optimizer_state,
)
from training.checkpoint import (
    checkpoints,
    choose_checkpoint,
    rng_state,
    save_final,
    save_training_checkpoint,
    set_rng_state,
)
from training.checks import (
    TrainingError,
    bucket_multiple,
    check_resumable,
    dataset_version,
    optimizer_class,
)
from training.data import (
    BucketBatchSampler,
    TripletDataset,
    check_buckets,
    collate,
    load_manifest,
    resolve_buckets,
    split_by_identity,
)
from training.denoising import Denoiser, FrozenEncoders, denoising_loss, validation_loss
from training.distributed import init_distributed, peak_memory_mb
from training.evaluate import FULL, Evaluator, ValidationSample
from training.evaluation_log import log_evaluation
from training.features import FeatureDataset, StoredFeatures, ensure_features, features_id
from training.forward_digests import ForwardDigestsRequest, recording_forward_digests
from training.model import (
    CONFIGS,
    CheckpointInfo,
    base_components,
    load_checkpoint,
    set_adapter_scales,
    trainable_parameters,
)
from training.outputs import FINAL_DIR, METRICS_FILE, RUN_FILE, STATE_FILE
from training.params import EvaluationParams, TrainingParams
from training.pipeline import CharacterInpaintPipeline
from training.precision import PrecisionPolicy
from training.run_log import RunLog, bound_tracking_calls, say_on_stderr

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
    model: Denoiser | None  # the trained U-Net and ControlNet of this rank (None: finished)
    rank: int  # of this process in its torchrun launch
    validation_shard: int  # validation samples this rank computes valid/loss on
    finished: bool = False  # resumed a run that had already reached its max_steps


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
    priors: Priors | None = None,
    evaluation: EvaluationParams | None = None,
    build_missing_features: bool = True,
    forward_digests: ForwardDigestsRequest | None = None,
) -> TrainingResult:
    """Train to `params.max_steps` optimiser steps (`stop_after`: leave earlier, resumable).

    `lock_file` None trains on whatever `data/triplets` holds (tagged unlocked); otherwise its
    md5 must be the one `dvc.lock` records. `on_finished(final_dir)` runs on rank 0 at the end,
    inside the MLflow run (the command line logs and registers the model there). At every
    validation step rank 0 scores the model on the first `validation_samples` validation
    triplets with the scorers of `priors` (default: `profile`'s with default settings) and
    `evaluation` (default: its defaults). With `params.features`, features missing or stale
    are built first (`build_missing_features`, what `cameo features build` runs), else refused.
    `forward_digests`: record (or compare with a recording) the digest of every module's output
    in the first step of a run from step 0, on rank 0 (`training.forward_digests`).
    """
    env = init_distributed(timedelta(seconds=params.collective_timeout_s))
    output_dir = Path(params.output_dir).resolve()
    layout = DataLayout.from_env(data_root)

    # -- Data: the versioned triplets, split by identity -----------------------------------------
    manifest = load_manifest(layout.triplets_dir)
    md5 = dataset_version(layout.triplets_dir, Path(lock_file) if lock_file else None)
    train_rows, validation_rows = split_by_identity(
        manifest, params.validation_fraction, params.seed, params.same_person_similarity
    )
    buckets = resolve_buckets(params.buckets)

    # A resumed run continues its newest checkpoint that verifies (rank 0 reads the checksums
    # once for all), only with the same model, data order and split.
    state, latest = None, None
    if resume:
        latest, refusal = env.broadcast(choose_checkpoint(output_dir) if env.is_main else None)
        if refusal is not None:
            raise TrainingError(refusal)
        if latest is not None:
            state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
            check_resumable(latest, state, params, env.world_size)
        elif env.is_main:
            print(f"no checkpoint in {output_dir}: starting from step 0", file=sys.stderr)
    if state is not None and state["step"] >= params.max_steps:
        # Finished: nothing to train, and nothing to register again.
        metrics = json.loads((output_dir / METRICS_FILE).read_text())
        return TrainingResult(
            state["run_id"], state["step"], output_dir / FINAL_DIR, md5, metrics,
            state["losses"], None, env.rank, 0, finished=True,
        )  # fmt: skip

    # Features missing or stale are built first, before the seed: loading the encoders to
    # build them must draw nothing from the run's random stream.
    if params.features and build_missing_features:
        ensure_features(params, data_root, models_dir, md5, env, show_progress)
    torch.manual_seed(params.seed)

    # -- Model: frozen base, trainable identity branches and Pose-IdentityNet --------------------
    config = CONFIGS[params.config]
    components = base_components(config, models_dir, params.seed, params.trust_remote_code)
    unet, controlnet = components["unet"], components["controlnet"]
    check_buckets(buckets, bucket_multiple(config))
    on_gpu = env.device.type == "cuda"
    precision = PrecisionPolicy.from_setting(params.mixed_precision)
    dtype = precision.compute_dtype
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2", "body_encoder"):
        components[name].to(env.device)
    precision.apply(components)
    if params.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        controlnet.enable_gradient_checkpointing()
    set_adapter_scales(unet, 1.0, 1.0)
    # What the optimiser updates: the trainables, or their float32 copies under bf16_pure.
    master = precision.master_weights(trainable_parameters(unet, controlnet))
    trainable = list(master.named.values())
    accelerate(params.acceleration, unet, controlnet)
    model = Denoiser(unet, controlnet, params.acceleration.attention_backend)
    denoiser = distributed_model(model, env, params.ddp)
    scheduler = DDPMScheduler(**config.scheduler)

    # The encoders' outputs: read from the features stage, or computed every step.
    if params.features:
        store = layout.features_dir / features_id(params, models_dir)
        encoders = StoredFeatures(dtype)

        def dataset_of(rows: pd.DataFrame) -> torch.utils.data.Dataset:
            return FeatureDataset(rows, store, buckets, md5)
    else:
        encoders = FrozenEncoders(components, dtype)

        def dataset_of(rows: pd.DataFrame) -> torch.utils.data.Dataset:
            return TripletDataset(rows, layout.triplets_dir, buckets, components["body_processor"])

    dataset = dataset_of(train_rows)
    sampler = BucketBatchSampler(
        dataset.bucket_ids,
        params.batch_size,
        env.world_size,
        env.rank,
        params.seed,
        [params.source_weights[source] for source in train_rows["source"]],
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=params.num_workers,
        pin_memory=on_gpu,
    )
    # valid/loss: every rank its shard of one fixed, capped subset of the validation identities.
    validation_shard = validation_rows.head(params.validation_max_samples).iloc[
        env.rank :: env.world_size
    ]
    validation_loader: Iterable[dict[str, Any]] = []  # an empty shard still joins the sum
    if len(validation_shard):
        validation_set = dataset_of(validation_shard)
        validation_loader = torch.utils.data.DataLoader(
            validation_set,
            batch_sampler=BucketBatchSampler(validation_set.bucket_ids, params.batch_size),
            collate_fn=collate,
        )

    # -- Optimiser, schedule, EMA -----------------------------------------------------------------
    adam = optimizer_class(params.use_8bit_adam, env.device)
    optimizer = build_optimizer(params, master.named, adam)
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
    if state is not None:
        with master.in_model(unet, controlnet):
            load_checkpoint(unet, controlnet, latest)
            precision.keep_master_weights(unet, controlnet)
        optimizer.load_state_dict(state["optimizer"])
        lr_scheduler.load_state_dict(state["lr_scheduler"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        sampler.set_epoch(state["sampler"]["epoch"], state["sampler"]["start"])
        set_rng_state(state["rng"][env.rank], generator)
        step, run_id, losses = state["step"], state["run_id"], state["losses"]
        consumed = state["sampler"]["start"]

    # -- MLflow: one run, continued on resume; rank 0 alone logs ---------------------------------
    mlflow, run_log = None, None
    if env.is_main:
        import mlflow

        from training.tracking import configure_tracking, default_run_name, log_run_definition

        bound_tracking_calls(params.tracking_timeout_s)
        tracking_uri = configure_tracking()
        if run_id is None:
            mlflow.start_run(run_name=run_name or default_run_name(profile, params, md5))
        else:
            mlflow.start_run(run_id=run_id)
        run_id = mlflow.active_run().info.run_id
        run_log = RunLog(run_id, tracking_uri, params.tracking_timeout_s, say_on_stderr)
        print(f"MLflow run {run_id}", flush=True)  # read by the Kubernetes submission
        if step == 0:
            log_run_definition(
                params,
                config,
                optimizer,
                tags={
                    "git_commit": git_commit(Path.cwd()),
                    "profile": profile,
                    "world_size": env.world_size,
                    "effective_batch_size": params.batch_size
                    * params.gradient_accumulation_steps
                    * env.world_size,
                    "dataset_md5": md5,
                    "dataset_locked": str(lock_file is not None).lower(),
                },
                splits={"training": train_rows, "validation": validation_rows},
                triplets_dir=layout.triplets_dir,
                md5=md5,
            )

    try:
        # -- The loop -----------------------------------------------------------------------------
        validation_samples, evaluator = [], None
        if env.is_main and len(validation_rows) and params.validation_samples:
            validation_samples = [
                ValidationSample.from_row(row, layout.triplets_dir, buckets)
                for row in validation_rows.head(params.validation_samples).itertuples(index=False)
            ]
            evaluator = Evaluator.build(
                evaluation or EvaluationParams(), priors or Priors(profile, models_dir=models_dir)
            )

        def validate() -> None:
            """valid/loss of the model as it is now (every rank its shard of the subset), then
            rank 0 scores it as `cameo evaluate` does, under the step's precision policy."""
            val_loss, val_samples = validation_loss(
                model, scheduler, encoders, validation_loader, env, precision, params.seed
            )
            if run_log is not None:
                validation = {"valid/loss": val_loss, "valid/samples": val_samples}
                run_log.log_metrics(validation, step=step)
            if evaluator is not None:
                pipe = CharacterInpaintPipeline(**components)
                pipe.set_progress_bar_config(disable=True)
                with precision.autocast(env.device, sampling=True):
                    evaluation_result = evaluator.evaluate(
                        pipe,
                        validation_samples,
                        ablations=[FULL],
                        inference_steps=params.validation_inference_steps,
                        seed=params.seed,
                        calibrate=step == 0,  # model-independent: once per run, at its start
                    )
                run_log.call(
                    f"evaluation at step {step}", log_evaluation, evaluation_result, step=step
                )
            model.train()

        # Step 0, the untrained model: where curves start and MLflow's image card opens.
        if step == 0 and len(validation_rows):
            validate()
        progress = None
        if env.is_main and show_progress:
            from tqdm import tqdm

            progress = tqdm(total=params.max_steps, initial=step, unit="step", desc="train")
        last_step = params.max_steps if stop_after is None else min(params.max_steps, stop_after)
        accumulation = params.gradient_accumulation_steps
        micro, samples, first_step = 0, 0, step + 1
        started = tick = time.perf_counter()
        # Losses stay on the device until a logging step: no host sync per micro-step.
        step_loss, pending = torch.zeros((), device=env.device), []
        denoiser.train()
        while step < last_step:
            for batch in loader:
                encoded = encoders(batch, env.device)
                sync = (micro + 1) % accumulation == 0
                # Between optimiser steps DDP need not all-reduce gradients.
                skip_sync = denoiser.no_sync() if env.world_size > 1 and not sync else nullcontext()
                if sync and env.world_size > 1:
                    master.gradients_to_model()
                # The first step of a fresh run, layer by layer, where asked (rank 0).
                watched = forward_digests is not None and env.is_main and step == micro == 0
                digests = recording_forward_digests(model) if watched else nullcontext()
                with skip_sync, precision.autocast(env.device), digests as recorded:
                    loss = denoising_loss(
                        denoiser,
                        scheduler,
                        encoded,
                        batch,
                        generator,
                        env.device,
                        dtype,
                        params.cfg_dropout.model_dump(),
                        params.snr_gamma,
                    )
                    (loss / accumulation).backward()
                if watched:
                    recorded.loss = loss.item()
                    forward_digests.settle(recorded)
                micro += 1
                consumed += 1
                samples += len(batch["triplet_id"])
                step_loss += loss.detach().float() / accumulation
                master.gradients_to_master()
                if not sync:
                    continue
                max_norm = params.max_grad_norm if params.max_grad_norm > 0 else math.inf
                grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
                optimizer.step()
                master.to_model()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if ema is not None:
                    ema.step(trainable)
                step += 1
                pending.append(step_loss)
                step_loss = torch.zeros((), device=env.device)
                checkpoint_due = step % params.checkpoint_every == 0 or step == last_step
                if step % params.log_every == 0 or checkpoint_due:
                    # One host sync per logging step; every rank agrees on finiteness before
                    # anything is logged or saved.
                    new_losses, pending = torch.stack(pending).tolist(), []
                    losses += new_losses
                    if env.any(not all(math.isfinite(v) for v in new_losses)):
                        last_good = checkpoints(output_dir)
                        raise TrainingError(
                            f"non-finite loss by step {step}: stopped; the last good checkpoint "
                            f"is {last_good[-1] if last_good else 'none (nothing was saved)'}"
                        )
                    if progress is not None:
                        progress.set_postfix(loss=f"{losses[-1]:.4f}")
                if progress is not None:
                    progress.update()
                if run_log is not None and (step % params.log_every == 0 or step == last_step):
                    elapsed = time.perf_counter() - tick
                    rates = {f"train/lr_{g['name']}": g["lr"] for g in optimizer.param_groups}
                    run_log.log_metrics(
                        {
                            "train/loss": losses[-1],
                            **rates,
                            "train/grad_norm": float(grad_norm),
                            "train/samples_per_s": samples * env.world_size / max(elapsed, 1e-9),
                            "train/peak_memory_mb": peak_memory_mb(env.device),
                        },
                        step=step,
                    )
                    tick, samples = time.perf_counter(), 0
                if step == first_step and run_log is not None:
                    # This process's first step pays the compile and cuDNN's autotuning: its
                    # time is logged apart, and the throughput counts from the next step on.
                    run_log.log_metrics({"train/first_step_s": time.perf_counter() - started}, step)
                    tick, samples = time.perf_counter(), 0
                validation_due = step % params.validate_every == 0 or step == last_step
                if len(validation_rows) and validation_due:
                    validate()
                if step % params.checkpoint_every == 0 or step == last_step:
                    rng = env.gather(rng_state(generator))
                    gather_optimizer_state(optimizer)
                    if env.is_main:
                        with master.in_model(unet, controlnet):
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
            # `final/` and metrics.json are DVC outputs: nothing run-specific goes in them, so the
            # same data, code and params give the same dvc.lock. The run is named in run.json.
            info = CheckpointInfo(config.name, params.seed, step, None, md5)
            with master.in_model(unet, controlnet):
                if ema is not None:
                    ema.store(trainable)
                    ema.copy_to(trainable)
                save_final(output_dir, unet, controlnet, info)
                if ema is not None:
                    ema.restore(trainable)
            (output_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
            experiment_id = mlflow.active_run().info.experiment_id
            run = {"run_id": run_id, "experiment_id": experiment_id, "dataset_md5": md5}
            (output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
            run_log.log_metrics(
                {f"train/{key}": metrics[key] for key in ("loss_first", "loss_last")}, step
            )
            run_log.call(
                "checkpoint artifacts",
                mlflow.log_artifacts,
                str(final_dir),
                artifact_path="checkpoint",
            )
            if on_finished is not None and step >= params.max_steps:
                run_log.call("model registration", on_finished, final_dir)
            run_log.finish(output_dir)
            run_log.call("run status", mlflow.end_run)
        env.barrier()
    except BaseException:
        if run_log is not None:  # the run shows as failed in the UI, not forever running
            run_log.call("run status", mlflow.end_run, status="FAILED")
        raise
    return TrainingResult(
        run_id, step, final_dir, md5, metrics, losses, model, env.rank, len(validation_shard)
    )
