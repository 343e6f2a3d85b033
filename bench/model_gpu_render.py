"""The BENCHMARKS.md section of `bench/model_gpu.py`: every table the run fills, with each figure
not measured (yet, or at all in this run) shown as pending."""

from __future__ import annotations

import math
from typing import Any

from bench.model_gpu_run import BUDGET_GIB, LEVERS, Results, Run, Timing

PENDING = "pending"


def _cell(value: float | None, form: str) -> str:
    return PENDING if value is None or math.isnan(value) else form.format(value)


def _levers(timing: Timing) -> str:
    lever = timing.lever
    on = [name for name, value in lever.acceleration.model_dump().items() if value is True]
    if lever.acceleration.attention_backend != "default":
        on.append(f"{lever.acceleration.attention_backend} attention")
    if lever.pure_bf16:
        on.append("pure bf16")
    return ", ".join(on) or "none"


def ceiling_table(results: Results) -> list[str]:
    peak = results.peak_tflops
    if results.device_name is None:
        datasheet = PENDING
    else:
        datasheet = f"{peak:.0f} TFLOP/s" if peak else f"not known for {results.device_name}"
    return [
        "| ceiling | value |",
        "| --- | --- |",
        f"| square bf16 matmul, measured | {_cell(results.ceiling_tflops, '{:.0f} TFLOP/s')} |",
        f"| datasheet dense bf16 peak | {datasheet} |",
    ]


def _share(tflops: float | None, of: float | None) -> float | None:
    return tflops / of if tflops and of else None


def training_table(results: Results, run: Run) -> list[str]:
    measured = {t.lever.name: t for t in results.training}
    alone = [measured.get(lever.name, Timing(lever)) for lever in LEVERS]
    today = alone[0].per_sample
    lines = [
        "| configuration | batch | s per step | s per sample | per sample vs today | peak "
        "memory | TFLOP/s | MFU (datasheet) | MFU (ceiling) | compile s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def memory(gib: float | None) -> str:
        return "n/a (CPU)" if run.smoke else _cell(gib, "{:.1f} GiB")

    def datasheet_mfu(tflops: float | None) -> str:
        if results.device_name is not None and results.peak_tflops is None:
            return "n/a (no datasheet peak)"
        return _cell(_share(tflops, results.peak_tflops), "{:.1%}")

    def compile_cell(timing: Timing) -> str:
        return _cell(timing.compile_seconds, "{:.0f}") if timing.lever.acceleration.compile else "—"

    named = [(t.lever.name, t) for t in alone]
    named += [(f"best ({_levers(t)})", t) for t in results.best]
    for name, timing in named:
        batch = timing.lever.batch
        if timing.error:
            lines.append(f"| {name} | {batch} | {timing.error} |" + " |" * 7)
            continue
        per_sample, tflops = timing.per_sample, timing.tflops
        ratio = per_sample / today if per_sample and today else None
        lines.append(
            f"| {name} | {batch} | {_cell(timing.seconds, '{:.3f}')} | "
            f"{_cell(per_sample, '{:.3f}')} | {_cell(ratio, '{:.2f}')} | "
            f"{memory(timing.peak_gib)} | {_cell(tflops, '{:.1f}')} | "
            f"{datasheet_mfu(tflops)} | "
            f"{_cell(_share(tflops, results.ceiling_tflops), '{:.1%}')} | "
            f"{compile_cell(timing)} |"
        )
    if not results.best:
        for batch in run.batches:
            lines.append(f"| best combination | {batch} |" + f" {PENDING} |" * 8)
    return lines


def breakdown_table(results: Results) -> list[str]:
    lines = ["| kind of kernel | ms per step | share |", "| --- | --- | --- |"]
    if results.breakdown is None:
        return [*lines, f"| every kind | {PENDING} | {PENDING} |"]
    total = sum(results.breakdown.values()) or 1.0
    for kind, seconds in sorted(results.breakdown.items(), key=lambda item: -item[1]):
        lines.append(f"| {kind} | {seconds * 1000:.1f} | {seconds / total:.0%} |")
    return lines


def inference_table(inference: dict[str, Any] | None, run: Run) -> list[str]:
    lines = [
        "| pipeline | whole call s | denoising loop s | decode and the rest s | whole call / "
        "peer eager | loop / peer loop |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = {
        "peer": "diffusers' ControlNet inpaint pipeline, eager (the peer)",
        "ours": "ours, eager",
        "ours_levers": "ours, with the levers",
    }
    if inference is None:
        return lines + [f"| {label} |" + f" {PENDING} |" * 5 for label in names.values()]
    peer = inference["peer"]
    for key, label in names.items():
        if key not in inference:
            lines.append(f"| {label} |" + f" {PENDING} |" * 5)
            continue
        figures = inference[key]
        whole, loop = figures["seconds"], figures["loop_seconds"]
        lines.append(
            f"| {label} | {whole:.2f} | {loop:.2f} | {whole - loop:.2f} | "
            f"{whole / peer['seconds']:.2f} | {loop / peer['loop_seconds']:.2f} |"
        )
    return lines


def flops_line(inference: dict[str, Any] | None) -> str:
    if inference is None:
        return f"FLOPs of one call, ours and the peer's: {PENDING}."
    ours, peer = inference["ours"]["flops"], inference["peer"]["flops"]
    prompt = inference["prompt_flops"]
    levers = inference.get("ours_levers")
    compiled = (
        f"The levers' first call (compiling): {levers['first_seconds']:.1f} s. Levers: "
        f"{_levers_of(levers['acceleration'])}."
        if levers
        else f"Ours with the levers: {PENDING}."
    )
    return (
        f"**FLOPs of one call** (`torch.utils.flop_counter`): ours {ours / 1e12:.2f} TFLOP, of "
        f"which {prompt / 1e12:.3f} encode the prompt; the peer {peer / 1e12:.2f} TFLOP (prompt "
        f"precomputed). Ours without the prompt / the peer: **{(ours - prompt) / peer:.3f}**; "
        "the rest of the difference is the ControlNet's cross-attention, over 16 face tokens in "
        f"ours and 154 text tokens in the peer's. {compiled}"
    )


def _levers_of(acceleration: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in acceleration.model_dump().items())


def goals_table(results: Results) -> list[str]:
    batch1 = next((t for t in results.best if t.lever.batch == 1), None)
    today = results.training[0] if results.training else None
    ratio = (
        batch1.seconds / today.seconds
        if batch1 and today and batch1.seconds and today.seconds
        else None
    )
    peak = results.peak_tflops
    fitting = [
        t.tflops / peak
        for t in results.best
        if t.tflops and peak and t.peak_gib is not None and t.peak_gib <= BUDGET_GIB
    ]
    best_mfu = _cell(max(fitting) if fitting else None, "{:.1%}")
    if results.device_name is not None and peak is None:
        best_mfu = "n/a (no datasheet peak)"
    inference = results.inference
    eager = levers = None
    if inference is not None:
        eager = inference["ours"]["seconds"] / inference["peer"]["seconds"]
        if "ours_levers" in inference:
            levers = inference["ours_levers"]["seconds"] / inference["peer"]["seconds"]
    return [
        '| figure | before (section "Model (GPU)") | goal | this run |',
        "| --- | --- | --- | --- |",
        f"| training, batch 1, s per step vs today | 1.00 | ≤ 0.50 (≥ 10 % MFU) | "
        f"{_cell(ratio, '{:.2f}')} |",
        f"| training, best batch within 80 GB, MFU (datasheet) | 4.7 % | ≥ 20 % | {best_mfu} |",
        f"| inference, ours eager / peer eager | about 1.1 (estimate) | ≤ 1.02 | "
        f"{_cell(eager, '{:.2f}')} |",
        f"| inference, ours with levers / peer eager | — | ≤ 0.65 | {_cell(levers, '{:.2f}')} |",
    ]


def render(results: Results, run: Run, stamp: str) -> str:
    if results.device_name is None:
        where = (
            "**Pending: no CUDA GPU was available to this run; nothing in this section is "
            "measured.** `python -m bench.model_gpu` on one H100/H200-class GPU (about 8 "
            "minutes) fills every table and rewrites the section. Until then today's step "
            'and inference, as last measured, are in the section "Model (GPU)".'
        )
    elif run.smoke:
        where = (
            "**Smoke run: the tiny config on the CPU. It runs every code path; its times are "
            "no GPU figures.**"
        )
    else:
        where = f"Measured on {results.device_name}."
    size = f"{run.size}²"
    busy = "n/a (CPU)" if run.smoke else _cell(results.busy, "{:.0%}")
    return "\n".join(
        [
            f"{stamp}. {where}",
            "",
            f"Random weights of the `{run.config.name}` config at {size}; latents, prompt, "
            "face and body embeddings precomputed (as the features stage feeds training). "
            "MFU: the counted FLOPs of the step (`torch.utils.flop_counter`, a multiply-add "
            "is 2) per second, over the datasheet peak and over the measured matmul ceiling.",
            "",
            *ceiling_table(results),
            "",
            f"Training step, median of {run.steps} after {run.warmup} untimed (the first "
            "step's extra time is the compile time). Today: production's step, bf16 "
            "autocast, the `full` profile's AdamW groups (AdamW8bit where bitsandbytes runs), "
            "gradients clipped, "
            "gradient checkpointing off. The best combination: the levers faster alone, "
            "together. The DDP and optimiser-sharding levers need several GPUs: not timed here.",
            "",
            *training_table(results, run),
            "",
            f"Where the best step's time goes (profiler, 3 steps; GPU busy {busy} of them):",
            "",
            *breakdown_table(results),
            "",
            f"Inference, {size}, {run.inference_steps} steps, CFG {5.0}, bf16, the same "
            f"scheduler; median of {run.inference_runs} after one untimed call:",
            "",
            *inference_table(results.inference, run),
            "",
            flops_line(results.inference),
            "",
            *goals_table(results),
            *unmeasured_lines(results),
        ]
    )


def unmeasured_lines(results: Results) -> list[str]:
    """The parts this run skipped (over its budget) or lost to an error, each on its line."""
    lines = [f"- skipped: {part}: {why}" for part, why in results.skipped.items()]
    lines += [f"- failed: {part}: {why}" for part, why in results.failed.items()]
    return ["", "Not measured in this run:", "", *lines] if lines else []
