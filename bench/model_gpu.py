"""The model's speed on one CUDA GPU, side by side in one run: the card's ceiling, the training
step today and with each speed lever, the best combination at batch 1, 2 and 4, where its time
goes, and inference against diffusers' own ControlNet inpainting pipeline on the same modules.

Run from the repository root:

    python -m bench.model_gpu           # CUDA: measures and writes its BENCHMARKS.md section
    python -m bench.model_gpu           # no CUDA: writes the section with every figure pending
    python -m bench.model_gpu --smoke   # the tiny config on CPU: runs every code path, writes
                                        # nothing unless --report names a file (tests do)

Weights are random (the `sdxl` config at real sizes): cost does not depend on their values,
and nothing is read from the models directory. Latents, prompt embeddings, the face embedding
and the body features come in precomputed, as the features stage feeds training. The parts,
in order of value, each figure printed on a `figure:` line (and appended to `--out`'s
figures.txt) the moment it is measured, the section rewritten after each part, so a run cut
short still reports; with `--budget-s`, a part whose estimate exceeds the time left is skipped
with a line saying so, and a part that fails loses only its own rows:

1. the ceiling: an 8192³ bf16 matmul, against which (and against the datasheet's dense bf16
   peak) every MFU is given;
2. today's training step, production's: bf16 autocast, the `full` profile's AdamW groups
   (AdamW8bit where bitsandbytes can run), gradients clipped at `max_grad_norm`, gradient
   checkpointing off, batch 1; the median of `--steps` timed steps after `--warmup`;
3. inference ours against the peer, both eager (`bench.model_gpu_inference`);
4. each lever of `training.acceleration` and `mixed_precision: bf16_pure` alone (the first
   step's extra time reported as compile time), then the levers that were faster combined, at
   batch 1, 2 and 4;
5. a profiler breakdown of the best step by kind of kernel, and the share of time the GPU is
   busy;
6. inference, ours with the levers.

The DDP and optimiser-sharding levers need several GPUs; this one-GPU run does not time them.
"""

from __future__ import annotations

import argparse
import math
import platform
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import diffusers
import torch
import torch.nn.functional as F
from diffusers import EulerDiscreteScheduler

from bench import model_gpu_inference
from bench.model_gpu_render import render
from bench.model_gpu_run import (
    BODY_TOKENS,
    LEVERS,
    Lever,
    Results,
    Run,
    Timing,
    counted_flops,
    synchronize,
    timed,
    timing_line,
)
from bench.report import PARAMS, REPORT, write_section
from bench.window import Window, run_part
from orchestration.params import load_params
from training.acceleration import REPEATED_BLOCKS, accelerate, build_optimizer
from training.checks import TrainingError, optimizer_class
from training.denoising import Denoiser
from training.model import SDXL, TINY, build_components, trainable_parameters
from training.params import Acceleration
from training.precision import PrecisionPolicy
from training.text import MAX_PROMPT_TOKENS, byte_level_tokenizer

SECTION = "Model (GPU): speed levers and the diffusers peer"


# ---------------------------------------------------------------------------------------------
# 1. The ceiling


def matmul_ceiling(run: Run) -> float:
    """TFLOP/s of a square bf16 matmul, the median of 10 after 3 untimed."""
    a = torch.randn(run.matmul, run.matmul, device=run.device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    seconds = statistics.median(timed(lambda: a @ b, run.device) for _ in range(10))
    return 2 * run.matmul**3 / seconds / 1e12


# ---------------------------------------------------------------------------------------------
# 2. Training


def training_inputs(run: Run, batch: int) -> tuple[torch.Tensor, ...]:
    """`Denoiser`'s positional inputs for `batch` samples at `run.size`, in bf16."""
    config, device = run.config, run.device
    latent = run.size // 2 ** (len(config.vae["block_out_channels"]) - 1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(batch, *shape, device=device, dtype=torch.bfloat16)

    size = run.size
    return (
        randn(4, latent, latent),
        torch.full((batch,), 500, device=device),
        (randn(1, latent, latent) > 0).to(torch.bfloat16),
        randn(4, latent, latent),
        randn(MAX_PROMPT_TOKENS, config.unet["cross_attention_dim"]),
        randn(config.text_encoder_2["projection_dim"]),
        torch.tensor([[size, size, 0, 0, size, size]] * batch, device=device).bfloat16(),
        randn(config.face_resampler.embed_dims),
        randn(run.body_tokens, config.body_resampler.embed_dims),
        torch.rand(batch, 3, size, size, device=device, dtype=torch.bfloat16),
    )


class TrainingBench:
    """The training step of one configuration after another, on one set of weights: frozen
    parts in bf16, trainables fp32 (as `training.mixed_precision: bf16` holds them)."""

    def __init__(self, components: dict[str, Any], run: Run) -> None:
        self.run = run
        # Production's optimiser settings: the `full` profile's learning-rate groups and
        # clipping, AdamW8bit where bitsandbytes can run, else AdamW (foreach, its default).
        self.production = load_params(PARAMS, "full").training
        try:
            self.adam = optimizer_class(self.production.use_8bit_adam, run.device)
        except TrainingError:
            self.adam = torch.optim.AdamW
        self.unet, self.controlnet = components["unet"], components["controlnet"]
        # No body encoder here (its features come precomputed): the rest as the policy casts.
        policy = PrecisionPolicy.from_setting("bf16")
        for name in ("unet", "controlnet", "text_encoder", "text_encoder_2"):
            components[name].to(torch.bfloat16)
        policy.keep_master_weights(self.unet, self.controlnet)
        self.unet.train()
        self.controlnet.train()
        self.named = trainable_parameters(self.unet, self.controlnet)
        self.flops: dict[int, float] = {}  # per step, by batch size

    def set_levers(self, acceleration: Acceleration) -> None:
        """Exactly `acceleration`'s levers, whatever the previous configuration set."""
        for module in (self.unet, self.controlnet):
            module.to(memory_format=torch.contiguous_format)
            for block in module.modules():
                if isinstance(block, REPEATED_BLOCKS):
                    block._compiled_call_impl = None
        # Dynamo caches a block's graph by its code object, with the attention kernel fixed at
        # trace time: without a reset, a lever would reuse the previous lever's graphs.
        torch._dynamo.reset()
        backend = {"compile_backend": self.run.compile_backend}
        accelerate(acceleration.model_copy(update=backend), self.unet, self.controlnet)

    def step(self, lever: Lever) -> tuple[Callable[[], None], Callable[[], None]]:
        """The step of `lever`, and what undoes its pure-bf16 casts afterwards."""
        self.set_levers(lever.acceleration)
        policy = PrecisionPolicy.from_setting("bf16_pure" if lever.pure_bf16 else "bf16")
        master = policy.master_weights(self.named)
        optimizer = build_optimizer(self.production, master.named, self.adam)
        max_norm = self.production.max_grad_norm or math.inf
        model = Denoiser(self.unet, self.controlnet, lever.acceleration.attention_backend)
        inputs = training_inputs(self.run, lever.batch)
        target = torch.randn(inputs[0].shape, device=self.run.device)

        def step() -> None:
            with policy.autocast(self.run.device):
                prediction = model(*inputs)
            F.mse_loss(prediction.float(), target).backward()
            master.gradients_to_master()
            torch.nn.utils.clip_grad_norm_(list(master.named.values()), max_norm)
            optimizer.step()
            master.to_model()
            optimizer.zero_grad(set_to_none=True)

        def undo() -> None:
            optimizer.state.clear()
            for param in self.named.values():
                param.grad = None
                param.data = param.data.float()

        return step, undo

    def measure(self, lever: Lever) -> Timing:
        run, timing = self.run, Timing(lever)
        try:
            if lever.batch not in self.flops:  # counted once per batch, on the eager step
                self.flops[lever.batch] = self._counted(lever.batch)
            timing.flops = self.flops[lever.batch]
            if run.device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step, undo = self.step(lever)
            try:
                timing.first_seconds = timed(step, run.device)
                for _ in range(run.warmup - 1):
                    step()
                timing.seconds = statistics.median(
                    timed(step, run.device) for _ in range(run.steps)
                )
            finally:
                undo()
            if run.device.type == "cuda":
                timing.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        except torch.OutOfMemoryError:
            timing.error = "out of memory"
        except RuntimeError as error:  # e.g. no kernel of this attention backend here
            timing.error = str(error).split(". ")[0][:80]
        return timing

    def _counted(self, batch: int) -> float:
        step, undo = self.step(Lever("count", batch=batch))
        try:
            return counted_flops(step)
        finally:
            undo()


def best_lever(timings: list[Timing]) -> Lever:
    """The levers that made the step faster alone, together (the faster attention kernel)."""
    today = timings[0].seconds
    faster = [t for t in timings[1:] if t.seconds is not None and t.seconds < today]
    attention = min(
        (t for t in faster if t.lever.acceleration.attention_backend != "default"),
        key=lambda t: t.seconds,
        default=None,
    )
    backend = attention.lever.acceleration.attention_backend if attention else "default"
    acceleration = Acceleration(
        channels_last=any(t.lever.acceleration.channels_last for t in faster),
        cudnn_benchmark=any(t.lever.acceleration.cudnn_benchmark for t in faster),
        attention_backend=backend,
        compile=any(t.lever.acceleration.compile for t in faster),
    )
    return Lever("best", acceleration, pure_bf16=any(t.lever.pure_bf16 for t in faster))


# ---------------------------------------------------------------------------------------------
# 3. Where the best step's time goes

# Kernel (CUDA) or operator (CPU) names by kind; the first match wins. Kernels that inductor
# fused count under the first kind their name names (a norm fused with its activation: norm).
KINDS = (
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("convolution", r"conv|dgrad|wgrad|fprop|winograd|implicit_gemm"),
    ("normalisation", r"norm|welford"),
    ("GEMM", r"gemm|matmul|\bmm\b|aten::mm|addmm|bmm|linear|cutlass|nvjet|xmma"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("casts and copies", r"copy|cast|convert|_to\b"),
    ("elementwise", r"elementwise|vectorized|pointwise|triton_poi|aten::"),
)


def kind_of(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lower)), "other")


def profile_breakdown(step: Callable[[], None], run: Run) -> tuple[dict, float]:
    """Seconds per step by kind of kernel (CPU: of operator), and the GPU's busy share."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda, steps = run.device.type == "cuda", run.profiled_steps
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step()  # outside the trace: lazy allocations, autotuning
    synchronize(run.device)
    with profile(activities=activities) as trace:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(run.device)
        wall = time.perf_counter() - start
    seconds: dict[str, float] = {kind: 0.0 for kind, _ in KINDS} | {"other": 0.0}
    for event in trace.key_averages():
        # CUDA: the kernels themselves (an operator's device time is its kernels' again).
        if cuda and event.device_type == DeviceType.CUDA:
            seconds[kind_of(event.key)] += event.self_device_time_total / 1e6 / steps
        elif not cuda and event.key.startswith("aten::"):
            seconds[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    busy = sum(seconds.values()) * steps / wall if cuda else float("nan")
    return seconds, min(busy, 1.0)


# ---------------------------------------------------------------------------------------------
# The run


def build(run: Run) -> dict[str, Any]:
    with run.device:
        components = build_components(run.config)
    # The scheduler's tables stay on the CPU, where diffusers computes its sigmas with NumPy.
    components["scheduler"] = EulerDiscreteScheduler(**run.config.scheduler)
    # Random text encoders read any ids; a file-free tokenizer fills the fixed 154 positions.
    components["tokenizer"] = components["tokenizer"] or byte_level_tokenizer()
    components["tokenizer_2"] = components["tokenizer_2"] or byte_level_tokenizer(pad_token="!")
    return components


def measure(run: Run, flush: Callable[[Results], None], window: Window) -> Results:
    """Every part in order of value, each flushed and its figures printed as soon as it is
    measured: the ceiling, today's training step, inference ours against the peer (eager),
    each lever alone, the best combination by batch, the profile, inference with the levers.
    A part whose estimate (from today's step once measured) exceeds the budget left is
    skipped; one that fails loses only its own rows."""
    results = Results(torch.cuda.get_device_name() if run.device.type == "cuda" else "CPU")
    cuda = run.device.type == "cuda"
    state: dict[str, Any] = {}

    def ceiling() -> None:
        results.ceiling_tflops = matmul_ceiling(run)
        window.figure(f"ceiling: {results.ceiling_tflops:.1f} TFLOP/s (bf16 matmul)")

    def build_model() -> None:
        state["components"] = build(run)
        state["bench"] = TrainingBench(state["components"], run)

    def today() -> None:
        timing = state["bench"].measure(LEVERS[0])
        results.training.append(timing)
        window.figure(timing_line(timing))

    def inference_eager() -> None:
        try:
            figures = model_gpu_inference.eager(state["components"], run)
        finally:  # inference cast everything to bf16: the trainables back to fp32 masters
            counted = state["bench"].flops
            state["bench"] = TrainingBench(state["components"], run)
            state["bench"].flops = counted
        results.inference = figures
        ours, peer = figures["ours"], figures["peer"]
        window.figure(
            f"inference: ours {ours['seconds']:.3f} s, peer {peer['seconds']:.3f} s, ours / peer "
            f"{ours['seconds'] / peer['seconds']:.3f} (prompt encoding inside ours: "
            f"{figures['prompt_flops'] / 1e12:.3f} of its {ours['flops'] / 1e12:.2f} TFLOP)"
        )

    def lever(choice: Lever) -> Callable[[], None]:
        def measure_lever() -> None:
            timing = state["bench"].measure(choice)
            results.training.append(timing)
            window.figure(timing_line(timing))

        return measure_lever

    def best_at(batch: int) -> Callable[[], None]:
        def measure_best() -> None:
            best = replace(best_lever(results.training), name=f"best, batch {batch}", batch=batch)
            timing = state["bench"].measure(best)
            results.best.append(timing)
            window.figure(timing_line(timing))

        return measure_best

    def profile() -> None:
        step, undo = state["bench"].step(best_lever(results.training))
        try:
            results.breakdown, results.busy = profile_breakdown(step, run)
        finally:
            undo()
        kinds = ", ".join(f"{k} {v:.4f}" for k, v in results.breakdown.items() if v)
        window.figure(f"profile: s per step by kind: {kinds}")

    def inference_levers() -> None:
        best = best_lever(results.training).acceleration
        figures = model_gpu_inference.with_levers(
            state["components"], run, best, compile=window.no_compile is None
        )
        results.inference = {**(results.inference or {}), "ours_levers": figures}
        peer = (results.inference or {}).get("peer")
        ratio = f", / peer {figures['seconds'] / peer['seconds']:.3f}" if peer else ""
        window.figure(
            f"inference: ours with levers {figures['seconds']:.3f} s{ratio}, first call "
            f"{figures['first_seconds']:.1f} s"
        )

    def step_s() -> float:
        # Today's step once measured; a prior before (an H100 step at 1024^2 is about 1 s).
        measured = results.training[0].seconds if results.training else None
        return measured or (0.05 if run.smoke else 1.5)

    compile_s = 0.0 if run.smoke else 150.0  # a regional compile's first step (cold caches)
    timed_steps = run.warmup + run.steps + 1
    parts: list[tuple[str, float, Callable[[], None]]] = [
        ("ceiling", 2 if run.smoke else 15, ceiling),
        ("building the model", 5 if run.smoke else 90, build_model),
    ]
    for name, estimate, fn in parts:
        run_part(name, estimate, window, results, fn)
        flush(results)
    if "bench" not in state:
        return results  # nothing to run the other parts on
    run_part("today's training step", 5 if run.smoke else timed_steps * step_s(), window,
             results, today)  # fmt: skip
    flush(results)
    call_s = step_s() / 2 * run.inference_steps  # a forward is about half a training step
    parts = [
        ("inference, ours vs the peer, eager", 4 * (run.inference_runs + 2) * call_s + 5,
         inference_eager),
        *[
            (f"training: {choice.name}",
             timed_steps * step_s() + compile_s * choice.acceleration.compile, lever(choice))
            for choice in LEVERS[1:]
        ],
        *[
            (f"best combination, batch {batch}", timed_steps * step_s() * batch + compile_s,
             best_at(batch))
            for batch in run.batches
        ],
        ("profile", (run.profiled_steps + 2) * step_s() + 10, profile),
        ("inference, ours with the levers", 2 * compile_s + 2 * (run.inference_runs + 1) * call_s,
         inference_levers),
    ]  # fmt: skip
    for name, estimate, fn in parts:
        run_part(name, estimate, window, results, fn)
        flush(results)
    if cuda:
        torch.cuda.empty_cache()
    return results


def main(argv: list[str] | None = None) -> Results:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny config on CPU (tests)")
    parser.add_argument("--report", type=Path, default=None, help=f"default: {REPORT.name}")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--inference-steps", type=int, default=30)
    parser.add_argument("--inference-runs", type=int, default=3)
    parser.add_argument(
        "--budget-s", type=float, default=None, help="seconds for the whole run; parts that "
        "would not fit are skipped with a line saying so"
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for BENCHMARKS.md (this section) and "
        "figures.txt (one line per figure, as measured)"
    )  # fmt: skip
    parser.add_argument("--fail-part", default=None, help="rehearsal: make this part raise")
    parser.add_argument(
        "--no-compile", default=None, metavar="WHY", help="skip the compile levers, saying why"
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.smoke
    run = Run(
        config=TINY if args.smoke else SDXL,
        size=64 if args.smoke else 1024,
        body_tokens=5 if args.smoke else BODY_TOKENS,
        device=torch.device("cuda" if cuda else "cpu"),
        steps=1 if args.smoke else args.steps,
        warmup=1 if args.smoke else args.warmup,
        profiled_steps=1 if args.smoke else 3,
        batches=(1, 2) if args.smoke else (1, 2, 4),
        matmul=256 if args.smoke else 8192,
        inference_steps=2 if args.smoke else args.inference_steps,
        inference_runs=1 if args.smoke else args.inference_runs,
        smoke=args.smoke,
    )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    report = args.report or (
        args.out / "BENCHMARKS.md" if args.out else None if args.smoke else REPORT
    )
    figures = args.out / "figures.txt" if args.out else None
    window = Window(args.budget_s, figures, args.fail_part, args.no_compile)
    title = f"{SECTION} (smoke)" if args.smoke else SECTION
    stamp = (
        f"`python -m bench.model_gpu{' --smoke' if args.smoke else ''}`, torch "
        f"{torch.__version__}, diffusers {diffusers.__version__}, {platform.node()}"
    )

    def flush(results: Results) -> None:
        if report is not None:
            write_section(title, render(results, run, stamp), report)

    if not cuda and not args.smoke:
        flush(Results())  # nothing measured: every figure pending
        print(f"no CUDA device: wrote {SECTION!r} with every GPU figure pending")
        return Results()
    return measure(run, flush, window)


if __name__ == "__main__":
    main()
