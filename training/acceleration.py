"""GPU speed levers: how the U-Net and the ControlNet run, and how several processes share the
work. Each is a setting of params.yaml (`training.acceleration`, `training.ddp`,
`training.zero_optimizer`, `serving.acceleration`) and none changes what is computed beyond
floating-point rounding:

- `channels_last`: the convolution weights in NHWC layout, which cuDNN's tensor-core kernels
  read without transposing;
- `cudnn_benchmark`: cuDNN times its algorithms for every new input shape once (the buckets
  keep the number of shapes small) and keeps the fastest;
- `attention_backend`: pins scaled-dot-product attention to one kernel (flash, cuDNN, memory-
  efficient or math) instead of PyTorch's per-call choice;
- `compile`: regional compilation, `torch.compile` of each repeated transformer and ResNet
  block rather than the whole model; blocks of one class share their compiled code, and a new
  bucket shape recompiles small blocks, not the whole graph;
- DDP's own options, a bf16 gradient-compression hook, and `ZeroRedundancyOptimizer`, which
  shards the optimiser state over the ranks.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.attention import SDPBackend, sdpa_kernel

from training.distributed import Distributed
from training.model import parameter_groups
from training.params import Acceleration, CompileBackend, DDPOptions, TrainingParams

ATTENTION_BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}
# The blocks the U-Net and the ControlNet repeat (SDXL: 70 transformer and 17 ResNet blocks in
# the U-Net, 34 and 8 in the ControlNet): almost all of their compute.
REPEATED_BLOCKS = (BasicTransformerBlock, ResnetBlock2D)


def attention(backend: str) -> AbstractContextManager:
    """The scaled-dot-product attention kernel of every call in the block (`Acceleration.
    attention_backend`; "default": PyTorch's choice). The backward pass follows the forward's."""
    return nullcontext() if backend == "default" else sdpa_kernel(ATTENTION_BACKENDS[backend])


def compile_repeated_blocks(module: torch.nn.Module, backend: CompileBackend = "inductor") -> int:
    """`torch.compile` each repeated block of `module` in place; returns how many. The compile
    itself happens at each block's first call (a warm-up pays it)."""
    blocks = [block for block in module.modules() if isinstance(block, REPEATED_BLOCKS)]
    # Blocks of one class share their compiled code and each variant (channels, with or
    # without a shortcut, text or face tokens) adds a graph; past dynamo's recompile limit
    # the rest would run eager. A second shape of a variant compiles it dynamic in its shape,
    # so one graph per block is the bound.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(blocks))
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def accelerate(acceleration: Acceleration, *modules: torch.nn.Module) -> None:
    """Apply the layout, cuDNN and compile levers to `modules` (the U-Net and the ControlNet),
    in place. The attention backend is applied per call (`attention`)."""
    torch.backends.cudnn.benchmark = acceleration.cudnn_benchmark
    for module in modules:
        if acceleration.channels_last:
            module.to(memory_format=torch.channels_last)
        if acceleration.compile:
            compile_repeated_blocks(module, acceleration.compile_backend)


def distributed_model(
    model: torch.nn.Module, env: Distributed, options: DDPOptions
) -> torch.nn.Module:
    """`model` wrapped in DDP with `options` where there are several processes."""
    if env.world_size == 1:
        return model
    if options.bf16_compress and env.device.type != "cuda":
        # torch's bf16 hook runs on NCCL only; refused rather than silently left out.
        raise ValueError(
            "training.ddp.bf16_compress: the bf16 gradient all-reduce needs NCCL (CUDA), and "
            f"this process trains on {env.device.type}: set bf16_compress: false"
        )
    ddp = torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[env.local_rank] if env.device.type == "cuda" else None,
        gradient_as_bucket_view=options.gradient_as_bucket_view,
        static_graph=options.static_graph,
        bucket_cap_mb=options.bucket_cap_mb,
    )
    if options.bf16_compress:
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    return ddp


def build_optimizer(
    params: TrainingParams,
    named: dict[str, torch.nn.Parameter],
    adam: type[torch.optim.Optimizer],
) -> torch.optim.Optimizer:
    """`adam` (`training.checks.optimizer_class`) over the two learning-rate groups of `named`,
    its state sharded over the ranks by `ZeroRedundancyOptimizer` where
    `params.zero_optimizer` is set and there are several."""
    groups = parameter_groups(named)
    learning_rates = {"identity": params.learning_rate, "body": params.body_learning_rate}
    param_groups = [
        {"params": groups[name], "lr": lr, "name": name} for name, lr in learning_rates.items()
    ]
    settings: dict[str, Any] = {
        "betas": (params.adam_beta1, params.adam_beta2),
        "eps": params.adam_epsilon,
        "weight_decay": params.weight_decay,
    }
    if params.zero_optimizer and dist.is_initialized() and dist.get_world_size() > 1:
        return ZeroRedundancyOptimizer(param_groups, optimizer_class=adam, **settings)
    return adam(param_groups, **settings)


def gather_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Every rank's shard of a sharded optimiser's state to rank 0, for its checkpoint (a
    collective: every rank calls it)."""
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)
