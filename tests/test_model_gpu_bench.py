"""`bench/model_gpu.py`: without a GPU it writes its section with every figure pending; its
smoke run (the tiny config on CPU) goes through every part's code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from bench import model_gpu

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
