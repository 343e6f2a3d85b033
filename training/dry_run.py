"""`cameo train --dry-run`: the configured model at full size, checked and sized, in seconds.

The model is built as training builds it (`build_components`), but with every parameter on the
meta device: shapes and dtypes, no memory, no weights, no data. The production precision policy
is applied to it (`PrecisionPolicy.apply`), then the dry run checks the trainable set and every
dtype, and predicts the memory one GPU needs for the configured optimiser and batch.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from typing import Any

import torch
from accelerate import init_empty_weights
from transformers import ViTConfig, ViTModel

from training.checks import bucket_multiple
from training.data import check_buckets, resolve_buckets
from training.model import (
    BRANCHES,
    CONFIGS,
    ModelConfig,
    adapter_processors,
    build_components,
    parameter_groups,
    summary,
    trainable_parameters,
)
from training.params import TrainingParams
from training.precision import PrecisionPolicy

GIB = 2**30
FP32_BYTES = 4
BUDGET_BYTES = 80 * 10**9  # the article's 80 GB per GPU (H100)
ARTICLE_GPUS = 8  # the article's one node of 8 H100s

# The one measurement of a full-size step: BENCHMARKS.md "Model (GPU)" (bench/model_gpu.py) on
# an H100, `sdxl`, 1024², batch 1, bf16 autocast, fused AdamW, gradient checkpointing off. (The
# checkpointing-on figure, 46.5 GiB, is higher than off: not a clean activation measurement.)
MEASURED_CONFIG = "sdxl"
MEASURED_PEAK_BYTES = round(44.7 * GIB)
MEASURED_PIXELS = 1024 * 1024
MEASURED_SOURCE = (
    'BENCHMARKS.md "Model (GPU)": H100, sdxl, 1024², batch 1, bf16 autocast, fused AdamW, '
    "gradient checkpointing off, peak allocated 44.7 GiB"
)

MIN_8BIT_SIZE = 4096  # bitsandbytes' default: smaller tensors keep 32-bit optimiser state

# `sdxl` loads InternViT-300M-448px from the models directory (it ships its own code). In its
# place the dry run builds a transformers ViT of its sizes: 304.0 M parameters like InternViT,
# its per-layer scale vectors aside (49 k).
INTERNVIT_300M = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "image_size": 448,
    "patch_size": 14,
}

MODEL_COMPONENTS = ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2", "body_encoder")
TRAINABLE_PARTS = ("face_kv", "body_kv", "face_resampler", "body_resampler", "controlnet")
PARTS = ("unet", *TRAINABLE_PARTS, "vae", "text_encoder", "text_encoder_2", "body_encoder")

_RESAMPLER = re.compile(r"encoder_hid_proj\.image_projection_layers\.(\d+)\.")
_BRANCH_KV = re.compile(r"\.processor\.to_[kv]_ip\.(\d+)\.")


class DryRunError(ValueError):
    """A check of the dry run failed; the message names the part and the parameter."""


@dataclass(frozen=True)
class Part:
    """One row of the parameter table; `key` is a `summary` count name."""

    key: str
    label: str
    parameters: int
    trainable: int
    dtypes: tuple[str, ...]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one GPU holds during a training step."""

    weights: dict[str, int]  # by dtype name
    weights_parts: dict[str, tuple[str, ...]]  # the parts stored in each dtype
    gradients: int  # trainables only: float32, or bf16 + float32 masters' under bf16_pure
    master_weights: int  # float32 copies of the trainables (bf16_pure), else 0
    optimizer_state: int  # per GPU (sharded over the ranks by zero_optimizer)
    unsharded_optimizer_state: int  # what one GPU would hold without sharding
    ema: int  # 0 without EMA
    ddp_buckets: int  # 0 for one process, or with gradient_as_bucket_view
    activations: int | None  # None: no measurement of this config to derive it from
    measured_state: int  # what the benchmark held besides activations (0 when not derived)
    activation_scale: float  # batch × pixels relative to the benchmark's

    @property
    def total(self) -> int:
        return (
            sum(self.weights.values())
            + self.gradients
            + self.master_weights
            + self.optimizer_state
            + self.ema
            + self.ddp_buckets
            + (self.activations or 0)
        )


@dataclass(frozen=True)
class DryRun:
    """What `dry_run` found: the parts, the optimiser groups, the memory per GPU."""

    params: TrainingParams
    world_size: int
    parts: list[Part]
    groups: dict[str, int]  # parameters per optimiser parameter group
    largest_bucket: tuple[int, int]
    memory: MemoryEstimate

    @property
    def trainable(self) -> int:
        return sum(part.trainable for part in self.parts)

    @property
    def fits(self) -> bool:
        return self.memory.total <= BUDGET_BYTES

    @property
    def optimizer_name(self) -> str:
        return "AdamW8bit" if self.params.use_8bit_adam else "AdamW"

    def table(self) -> str:
        """The readable report `cameo train --dry-run` prints."""
        p, memory = self.params, self.memory
        height, width = self.largest_bucket
        policy = PrecisionPolicy.from_setting(p.mixed_precision)
        compute_dtype = policy.compute_dtype
        trainables = f"{_dtype_name(compute_dtype)} (float32 masters)" if policy.pure else "float32"
        processes = "1 process" if self.world_size == 1 else f"{self.world_size} processes"
        lines = [
            f"dry run of training config {p.config}: mixed_precision {p.mixed_precision}, "
            f"{self.optimizer_name}, batch {p.batch_size} per GPU, largest bucket "
            f"{height}x{width}, {processes}",
            "",
            f"{'part':<44}{'parameters':>15}{'trainable':>15}  dtype",
        ]
        for part in self.parts:
            dtypes = ", ".join(part.dtypes)
            lines.append(f"{part.label:<44}{part.parameters:>15,}{part.trainable:>15,}  {dtypes}")
        total = sum(part.parameters for part in self.parts)
        groups = ", ".join(f"{name} {count:,}" for name, count in self.groups.items())
        lines += [
            f"{'total':<44}{total:>15,}{self.trainable:>15,}",
            "",
            textwrap.fill(
                "checked: trainable = both branches' K/V, both resamplers, the ControlNet, as "
                f"training.model.summary counts them; the rest frozen; optimiser groups {groups}",
                width=100,
            ),
            f"checked: dtypes under mixed_precision {p.mixed_precision}: trainables "
            f"{trainables}, VAE float32, the other frozen parts {_dtype_name(compute_dtype)}",
            "",
            f"{'memory per GPU':<26}{'GiB':>8}",
        ]
        rows = [
            (f"weights, {dtype}", size, ", ".join(memory.weights_parts[dtype]))
            for dtype, size in memory.weights.items()
        ]
        pure = p.mixed_precision == "bf16_pure"
        gradients = "bf16 and the float32 masters'" if pure else "float32"
        rows.append(("gradients", memory.gradients, f"{gradients}, trainables only"))
        if memory.master_weights:
            rows.append(("master weights", memory.master_weights, "float32 copy (bf16_pure)"))
        rows.append(("optimizer state", memory.optimizer_state, self._optimizer_state_note()))
        if memory.ema:
            rows.append(("EMA", memory.ema, "float32 copy of the trainables"))
        if memory.ddp_buckets:
            rows.append(("DDP gradient buckets", memory.ddp_buckets, "a second copy"))
        if memory.activations is not None:
            rows.append(("activations (estimate)", memory.activations, "see below"))
        lines += [f"{label:<26}{size / GIB:>8.2f}  {note}" for label, size, note in rows]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        budget = f"of the article's 80 GB per GPU ({BUDGET_BYTES / GIB:.1f} GiB): {verdict}"
        lines += [f"{'total':<26}{memory.total / GIB:>8.2f}  {budget}", ""]
        lines += [textwrap.fill(note, width=100) for note in self._notes()]
        return "\n".join(lines)

    def _optimizer_state_note(self) -> str:
        sharded = self.memory.optimizer_state < self.memory.unsharded_optimizer_state
        share = f"1/{self.world_size} per GPU (zero_optimizer)" if sharded else "per GPU, unsharded"
        if self.params.use_8bit_adam:
            return f"AdamW8bit: 2 x 8-bit moments (32-bit under {MIN_8BIT_SIZE} elements), {share}"
        return f"AdamW: 2 x float32 moments, {share}"

    def _notes(self) -> list[str]:
        memory, p = self.memory, self.params
        notes = []
        if memory.activations is None:
            notes.append(
                f"Activations: not estimated; the one measurement ({MEASURED_SOURCE}) is of "
                f"the {MEASURED_CONFIG} config. The total leaves them out."
            )
        else:
            derived = MEASURED_PEAK_BYTES - memory.measured_state
            notes.append(
                f"Activations are an estimate from the one measurement, {MEASURED_SOURCE}, "
                f"minus the {memory.measured_state / GIB:.2f} GiB of weights, gradients and "
                f"AdamW state that run held = {derived / GIB:.2f} GiB, scaled linearly by "
                f"batch x pixels of the largest bucket relative to 1024² "
                f"(x{memory.activation_scale:.2f}). Gradient checkpointing would reduce "
                "them: not modelled."
            )
            if p.mixed_precision == "no":
                notes.append(
                    "mixed_precision no: the measurement ran under bf16 autocast; float32 "
                    "activations are larger, not modelled (the estimate is a lower bound)."
                )
            if not p.features:
                notes.append(
                    "features false: the measurement fed precomputed latents and embeddings; "
                    "the encoders' forward passes each step are not modelled."
                )
        if self.world_size == 1 and not p.ddp.gradient_as_bucket_view:
            notes.append(
                "One process: under torchrun each GPU also holds DDP's gradient buckets "
                f"(gradient_as_bucket_view is off), +{_bucket_bytes(memory) / GIB:.2f} GiB."
            )
        unsharded = memory.unsharded_optimizer_state
        gpus = self.world_size if self.world_size > 1 else ARTICLE_GPUS
        sharded = -(-unsharded // gpus)
        notes.append(
            f"zero_optimizer ({'on' if p.zero_optimizer else 'off'}): ZeroRedundancyOptimizer "
            f"over {gpus} GPUs keeps {sharded / GIB:.2f} GiB of optimiser state per GPU, "
            f"{(unsharded - sharded) / GIB:.2f} GiB less than unsharded"
            + (" (one process shards nothing)." if self.world_size == 1 else ".")
        )
        if CONFIGS[p.config].body_encoder is None:
            notes.append(
                "* InternViT-300M-448px is loaded from the models directory; a ViT of its "
                "sizes stands in for it."
            )
        return notes


def build_meta_components(config: ModelConfig) -> dict[str, Any]:
    """`build_components(config)` with every parameter on the meta device.

    accelerate's `init_empty_weights` (as `summary` builds), not a `torch.device("meta")`
    context: `build_components` also builds the noise scheduler, which copies its sigmas to the
    CPU, and a meta tensor has no values to copy. The scheduler holds no parameters.
    """
    with init_empty_weights():
        components = build_components(config)
        if components["body_encoder"] is None:
            body_encoder = ViTModel(ViTConfig(**INTERNVIT_300M), add_pooling_layer=False)
            components["body_encoder"] = body_encoder.requires_grad_(False)
    return components


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _part_of(component: str, name: str) -> str:
    """The `summary` count a parameter belongs to."""
    if component != "unet":
        return component
    if match := _RESAMPLER.match(name):
        return f"{BRANCHES[int(match.group(1))]}_resampler"
    if match := _BRANCH_KV.search(name):
        return f"{BRANCHES[int(match.group(1))]}_kv"
    return "unet"


def _named_by_part(components: dict[str, Any]) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    parts: dict[str, list[tuple[str, torch.nn.Parameter]]] = {key: [] for key in PARTS}
    for component in MODEL_COMPONENTS:
        for name, param in components[component].named_parameters():
            parts[_part_of(component, name)].append((f"{component}.{name}", param))
    return parts


def check_trainable(components: dict[str, Any], config: ModelConfig) -> dict[str, int]:
    """Exactly the article's trainable set; returns the parameters per optimiser group.

    Every parameter of the branches' K/V, both resamplers and the ControlNet must be trainable
    and every other one frozen; the optimiser's set (`trainable_parameters`) and what
    `summary` reports must agree, and both parameter groups must be non-empty.
    """
    named = _named_by_part(components)
    for part, params in named.items():
        should_train = part in TRAINABLE_PARTS
        wrong = [name for name, param in params if param.requires_grad != should_train]
        if wrong:
            state, expected = ("frozen", "trainable") if should_train else ("trainable", "frozen")
            raise DryRunError(
                f"{wrong[0]} is {state}, but every parameter of {part} must be {expected} "
                f"({len(wrong)} such in {part})"
            )
    trainable = trainable_parameters(components["unet"], components["controlnet"])
    reported = summary(config)
    counts = {part: sum(param.numel() for _, param in named[part]) for part in TRAINABLE_PARTS}
    optimised = sum(param.numel() for param in trainable.values())
    for part, count in counts.items():
        if count != reported["parameters"][part]:
            raise DryRunError(
                f"{part}: {count:,} trainable parameters built, summary reports "
                f"{reported['parameters'][part]:,}"
            )
    if optimised != sum(counts.values()) or optimised != reported["trainable"]:
        raise DryRunError(
            f"trainable_parameters holds {optimised:,} parameters, the trainable parts "
            f"{sum(counts.values()):,}, summary reports {reported['trainable']:,}"
        )
    groups = parameter_groups(trainable)
    empty = [name for name, params in groups.items() if not params]
    if empty:
        raise DryRunError(f"optimiser parameter group(s) {', '.join(empty)} empty")
    return {name: sum(param.numel() for param in params) for name, params in groups.items()}


def check_dtypes(components: dict[str, Any], policy: PrecisionPolicy) -> None:
    """The policy's dtypes: trainables float32 (master weights; the compute dtype under
    `bf16_pure`, whose masters are copies), the VAE float32, every other frozen part in the
    compute dtype."""
    for component in MODEL_COMPONENTS:
        wrong = []
        for name, param in components[component].named_parameters():
            if param.requires_grad and policy.pure:
                expected, why = policy.compute_dtype, "bf16_pure: the compute dtype"
            elif param.requires_grad:
                expected, why = torch.float32, "a trainable master weight"
            elif component == "vae":
                expected, why = torch.float32, "the VAE stays float32"
            else:
                expected, why = policy.compute_dtype, "frozen: the compute dtype"
            if param.dtype != expected:
                wrong.append(f"{component}.{name} is {param.dtype}, expected {expected} ({why})")
        if wrong:
            raise DryRunError(f"{wrong[0]}; {len(wrong)} such parameters in {component}")


def estimate_memory(
    components: dict[str, Any],
    params: TrainingParams,
    largest_bucket: tuple[int, int],
    world_size: int = 1,
) -> MemoryEstimate:
    """What one GPU holds for `params`' optimiser and batch (see `dry_run`)."""
    weights: dict[str, int] = {}
    weights_parts: dict[str, list[str]] = {}
    trainable: list[torch.nn.Parameter] = []
    for component in MODEL_COMPONENTS:
        for param in components[component].parameters():
            dtype = _dtype_name(param.dtype)
            weights[dtype] = weights.get(dtype, 0) + param.numel() * param.element_size()
            label = "trainables" if param.requires_grad else component
            if label not in weights_parts.setdefault(dtype, []):
                weights_parts[dtype].append(label)
            if param.requires_grad:
                trainable.append(param)
    trainable_count = sum(param.numel() for param in trainable)
    if params.use_8bit_adam:
        optimizer_state = sum(
            param.numel() * (2 if param.numel() >= MIN_8BIT_SIZE else 2 * FP32_BYTES)
            for param in trainable
        )
    else:
        optimizer_state = 2 * FP32_BYTES * trainable_count
    sharded = params.zero_optimizer and world_size > 1
    # The model's gradients are in its trainables' dtype; bf16_pure adds float32 masters.
    model_gradients = sum(param.numel() * param.element_size() for param in trainable)
    pure = params.mixed_precision == "bf16_pure"
    masters = FP32_BYTES * trainable_count if pure else 0

    activations, measured_state = None, 0
    height, width = largest_bucket
    scale = params.batch_size * height * width / MEASURED_PIXELS
    if params.config == MEASURED_CONFIG:
        measured_state = _benchmark_state(components)
        activations = round((MEASURED_PEAK_BYTES - measured_state) * scale)
    return MemoryEstimate(
        weights=weights,
        weights_parts={dtype: tuple(labels) for dtype, labels in weights_parts.items()},
        gradients=model_gradients + masters,
        master_weights=masters,
        optimizer_state=-(-optimizer_state // world_size) if sharded else optimizer_state,
        unsharded_optimizer_state=optimizer_state,
        ema=FP32_BYTES * trainable_count if params.ema_decay > 0 else 0,
        # DDP's buckets are a second copy of the model's gradients, unless they are the same.
        ddp_buckets=model_gradients
        if world_size > 1 and not params.ddp.gradient_as_bucket_view
        else 0,
        activations=activations,
        measured_state=measured_state,
        activation_scale=scale,
    )


def _bucket_bytes(memory: MemoryEstimate) -> int:
    """DDP's buckets: one copy of the model's gradients (the float32 masters' aside)."""
    return memory.gradients - memory.master_weights


def _benchmark_state(components: dict[str, Any]) -> int:
    """Weights, gradients and AdamW state as bench/model_gpu.py held them: every frozen weight
    in bf16 (the VAE too, no body encoder), trainables as fp32 weight + gradient + 2 moments."""
    trainable_bytes = 4 * FP32_BYTES  # weight, gradient, AdamW's two moments
    total = 0
    for component in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2"):
        for param in components[component].parameters():
            total += param.numel() * (trainable_bytes if param.requires_grad else 2)
    return total


def dry_run(params: TrainingParams, world_size: int = 1) -> DryRun:
    """Build `params.config` at full size without weights, apply the precision policy of
    `params.mixed_precision` as training does, check the trainable set and the dtypes, and
    predict the memory per GPU.

    The memory is weights (by dtype), fp32 gradients of the trainables, the optimiser state
    (AdamW: two fp32 moments; bitsandbytes' AdamW8bit: two 8-bit moments, 32-bit for tensors
    under 4096 elements, its block-wise scales not counted), EMA and, for `world_size` > 1,
    DDP's gradient buckets, plus an activation estimate derived from the one measurement
    (`MEASURED_SOURCE`), for the `sdxl` config only. The optimiser state is per GPU: divided by
    `world_size` under `zero_optimizer`, whose saving the table notes either way.

    Raises `DryRunError` naming the part and parameter when a check fails.
    """
    config = CONFIGS[params.config]
    buckets = resolve_buckets(params.buckets)
    try:
        check_buckets(buckets, bucket_multiple(config))
    except ValueError as error:
        raise DryRunError(f"training.buckets: {error}") from error
    components = build_meta_components(config)
    policy = PrecisionPolicy.from_setting(params.mixed_precision)
    policy.apply(components)
    groups = check_trainable(components, config)
    policy.master_weights(trainable_parameters(components["unet"], components["controlnet"]))
    check_dtypes(components, policy)

    named = _named_by_part(components)
    layers = len(adapter_processors(components["unet"]))
    labels = {
        "unet": "U-Net (frozen base)",
        "face_kv": f"face branch K/V ({layers} cross-attention layers)",
        "body_kv": f"body branch K/V ({layers} cross-attention layers)",
        "face_resampler": "face resampler",
        "body_resampler": "body resampler",
        "controlnet": "Pose-IdentityNet (ControlNet)",
        "vae": "VAE",
        "text_encoder": "text encoder",
        "text_encoder_2": "text encoder 2",
        "body_encoder": "body encoder" + ("" if config.body_encoder else " *"),
    }
    parts = [
        Part(
            key=key,
            label=labels[key],
            parameters=sum(param.numel() for _, param in named[key]),
            trainable=sum(param.numel() for _, param in named[key] if param.requires_grad),
            dtypes=tuple(sorted({_dtype_name(param.dtype) for _, param in named[key]})),
        )
        for key in PARTS
    ]
    largest = max(buckets, key=lambda bucket: bucket[0] * bucket[1])
    memory = estimate_memory(components, params, largest, world_size)
    return DryRun(params, world_size, parts, groups, largest, memory)
