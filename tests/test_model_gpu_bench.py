"""`bench/model_gpu.py`: without a GPU it writes its section with every figure pending; its
smoke run (the tiny config on CPU) goes through every part's code."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import gpu_window, model_gpu
from bench.model_gpu_render import unmeasured_lines
from tests.conftest import REPO

torch.set_num_threads(1)


def _section(report: Path, title: str) -> str:
    text = report.read_text()
    return text[text.index(f"## {title}") : text.index(f"<!-- /section:{title} -->")]


def test_without_a_gpu_every_figure_is_pending(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "BENCHMARKS.md"
    model_gpu.main(["--report", str(report)])
    section = _section(report, model_gpu.SECTION)
    assert "Pending: no CUDA GPU" in section
    lines = section.splitlines()
    # Table rows, not their headers (the line above a `| --- |` separator).
    rows = [
        line
        for line, below in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("| ") and "---" not in line and "---" not in below
    ]
    assert len(rows) == 2 + 10 + 1 + 3 + 4
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        if cells[0].startswith("training") or cells[0].startswith("inference"):
            cells = cells[-1:]  # the goals table: only "this run" is a figure of the run
        elif cells[1].isdigit():
            cells = cells[2:]  # the training table: configuration and batch are labels
        else:
            cells = cells[1:]
        assert all(cell in ("pending", "—") for cell in cells), row  # —: does not apply


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n", "GEMM"),
        ("aten::addmm", "GEMM"),
        ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>", "attention"),
        ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop", "attention"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("aten::native_group_norm", "normalisation"),
        ("triton_red_fused_native_group_norm_silu_3", "normalisation"),
        (
            "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel",
            "casts and copies",
        ),
        ("triton_poi_fused_add_mul_0", "elementwise"),
        (
            "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdam>",
            "optimizer",
        ),
    ],
)
def test_kernels_are_sorted_by_kind(name, kind):
    assert model_gpu.kind_of(name) == kind


@pytest.mark.slow
def test_smoke_run_goes_through_every_part(tmp_path):
    report = tmp_path / "BENCHMARKS.md"
    results = model_gpu.main(["--smoke", "--report", str(report)])
    assert results.ceiling_tflops > 0
    timings = {t.lever.name: t for t in results.training}
    assert list(timings) == [lever.name for lever in model_gpu.LEVERS]
    assert timings["cuDNN attention"].error  # no cuDNN attention kernel on the CPU
    for name, timing in timings.items():
        assert name == "cuDNN attention" or timing.seconds > 0, name
    assert timings["regional compile"].compile_seconds is not None
    assert [t.lever.batch for t in results.best] == [1, 2]
    assert all(t.seconds > 0 and t.flops > 0 for t in results.best)
    assert sum(results.breakdown.values()) > 0
    inference = results.inference
    for name in ("ours", "peer", "ours_levers"):
        assert inference[name]["seconds"] > 0 and inference[name]["loop_seconds"] > 0
    # The same work but for the ControlNet, whose cross-attention reads 16 identity tokens in
    # ours (InstantID's IdentityNet) and the 154 text tokens in the peer: ours without its
    # prompt encoding and the ControlNet within 2 % of the peer without the ControlNet.
    ours, peer = inference["ours"], inference["peer"]
    assert ours["controlnet_flops"] < peer["controlnet_flops"]
    assert ours["flops"] - inference["prompt_flops"] - ours["controlnet_flops"] == pytest.approx(
        peer["flops"] - peer["controlnet_flops"], rel=0.02
    )
    section = _section(report, f"{model_gpu.SECTION} (smoke)")
    assert "Smoke run" in section and "pending" not in section
    assert re.search(r"Ours without the prompt / the peer: \*\*0\.9\d\d\*\*", section)


def test_a_part_over_the_budget_is_skipped_and_a_failing_one_costs_only_itself(tmp_path, capsys):
    results = model_gpu.Results("CPU")
    window = model_gpu.Window(10, tmp_path / "figures.txt", fail_part="forced")
    ran = []

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    assert model_gpu.run_part("fits", 1, window, results, lambda: ran.append("fits"))
    assert not model_gpu.run_part("forced", 1, window, results, lambda: ran.append("forced"))
    assert not model_gpu.run_part("too long", 60, window, results, lambda: ran.append("long"))
    assert not model_gpu.run_part("out of memory", 1, window, results, out_of_memory)
    no_compile = model_gpu.Window(None, no_compile="no C compiler")
    compiled = "training: regional compile"
    assert not model_gpu.run_part(compiled, 1, no_compile, results, lambda: ran.append("c"))
    assert ran == ["fits"]
    assert results.failed == {
        "forced": "RuntimeError: forced to fail (--fail-part 'forced')",
        "out of memory": "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    }
    assert results.skipped["too long"].startswith("estimated 60 s, ")
    assert results.skipped[compiled] == "torch.compile cannot run here: no C compiler"
    printed = capsys.readouterr().out.splitlines()
    assert "failed: forced: RuntimeError: forced to fail (--fail-part 'forced')" in printed
    assert any(line.startswith("skipped: too long: estimated 60 s") for line in printed)
    window.figure("ceiling: 1.0 TFLOP/s (bf16 matmul)")
    assert (tmp_path / "figures.txt").read_text() == "ceiling: 1.0 TFLOP/s (bf16 matmul)\n"
    assert "- failed: forced: RuntimeError" in "\n".join(unmeasured_lines(results))


def test_a_run_killed_half_way_keeps_what_it_measured(tmp_path):
    """The smoke run as a window runs it, today's step forced to fail: the inference
    comparison after it is still measured, printed at once, and kept under --out when the
    run is killed right after."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "bench.model_gpu", "--smoke", "--out", str(out)]
    command += ["--fail-part", "today's training step"]
    process = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    seen = []
    try:
        for line in process.stdout:  # up to the line after the inference figure's (flushed)
            if seen and seen[-1].startswith("figure: inference"):
                break
            seen.append(line)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    printed = "".join(seen)
    assert "failed: today's training step: RuntimeError: forced to fail" in printed, printed
    figures = (out / "figures.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in figures][:2] == ["ceiling", "inference"]
    section = (out / "BENCHMARKS.md").read_text()
    assert "- failed: today's training step" in section
    assert "| ours, eager | " in section and "| ours, eager | pending" not in section


def test_the_gpu_window_preflights_and_keeps_to_its_budget(tmp_path):
    """`make gpu-window SMOKE=1`'s launcher with no budget left after the preflight: every
    finding on a line and in OUT, then every part of the bench skipped, saying why; the
    section it leaves merges into a report."""
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_window", "--smoke", "--out", str(out),
         "--budget-s", str(gpu_window.MARGIN_S)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    preflight = (out / "preflight.txt").read_text()
    for finding in ("python", "torch", "gpu", "c compiler", "import diffusers", "torch.compile"):
        assert f"preflight: {finding}: " in preflight
    assert "skipped: ceiling: estimated 2 s, 0 s left" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("gpu-window: done in ")
    report = tmp_path / "BENCHMARKS.md"
    assert gpu_window.merge(out / "BENCHMARKS.md", report) == [f"{model_gpu.SECTION} (smoke)"]
    assert "- skipped: ceiling" in report.read_text()
