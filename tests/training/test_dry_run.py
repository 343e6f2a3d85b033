"""`cameo train --dry-run`: the full-size model on the meta device, its checks and its memory."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestration.cli.train import train_command
from training.dry_run import (
    BUDGET_BYTES,
    GIB,
    MEASURED_PEAK_BYTES,
    DryRun,
    DryRunError,
    build_meta_components,
    check_trainable,
    dry_run,
    estimate_memory,
)
from training.model import SDXL, TINY, summary
from training.params import TrainingParams
from training.precision import PrecisionPolicy

REPO = Path(__file__).resolve().parents[2]
TRAINABLE_PARTS = ("face_kv", "body_kv", "face_resampler", "body_resampler", "controlnet")


@pytest.fixture(scope="module")
def production() -> tuple[DryRun, float]:
    """The dry run of params.yaml's production settings (sdxl, bf16, AdamW8bit, pixart_1024)
    and its seconds."""
    start = time.perf_counter()
    report = dry_run(TrainingParams())
    return report, time.perf_counter() - start


@pytest.fixture(scope="module")
def sdxl_components() -> dict[str, Any]:
    components = build_meta_components(SDXL)
    PrecisionPolicy.from_setting("bf16").apply(components)
    return components


def tiny_params(**overrides: Any) -> TrainingParams:
    return TrainingParams(config="tiny", buckets="64,64", use_8bit_adam=False, **overrides)


# ---------------------------------------------------------------------------------------------
# The full-size model, in seconds


def test_sdxl_dry_run_reports_the_design_counts_in_seconds(production, sdxl_components):
    report, seconds = production
    assert seconds < 60  # about 2 s on one thread
    for name in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2", "body_encoder"):
        assert all(param.is_meta for param in sdxl_components[name].parameters()), name
    parts = {part.key: part for part in report.parts}
    reported = summary(SDXL)["parameters"]
    for key, count in reported.items():
        assert parts[key].parameters == count, key
    assert parts["unet"].parameters == 2_567_478_084
    assert round(parts["controlnet"].parameters / 1e9, 3) == 1.251
    assert parts["face_kv"].parameters == parts["body_kv"].parameters == 340_787_200
    assert round(parts["face_resampler"].parameters / 1e6, 1) == 82.0
    assert round(parts["body_resampler"].parameters / 1e6, 1) == 82.6
    # BENCHMARKS.md "Model (GPU)": AdamW over 2.097 B fp32 trainable parameters.
    assert report.trainable == summary(SDXL)["trainable"]
    assert round(report.trainable / 1e9, 3) == 2.097
    for key in TRAINABLE_PARTS:
        assert parts[key].trainable == parts[key].parameters, key
    for key in ("unet", "vae", "text_encoder", "text_encoder_2", "body_encoder"):
        assert parts[key].trainable == 0, key
    assert report.groups["body"] == reported["body_kv"] + reported["body_resampler"]
    assert sum(report.groups.values()) == report.trainable


def test_sdxl_dtypes_follow_the_bf16_policy(production):
    report, _ = production
    dtypes = {part.key: part.dtypes for part in report.parts}
    for key in TRAINABLE_PARTS:
        assert dtypes[key] == ("float32",), key
    for key in ("unet", "text_encoder", "text_encoder_2", "body_encoder"):
        assert dtypes[key] == ("bfloat16",), key
    assert dtypes["vae"] == ("float32",)
    vae = next(part for part in report.parts if part.key == "vae")
    assert report.memory.weights["float32"] == 4 * (report.trainable + vae.parameters)


# ---------------------------------------------------------------------------------------------
# Broken policies and trainable sets are caught, naming the module


def test_a_frozen_module_left_in_float32_is_caught(monkeypatch):
    # A policy that forgets a frozen part: the text encoder stays float32 under bf16.
    monkeypatch.setattr(
        "training.precision.FROZEN_IN_COMPUTE_DTYPE",
        ("unet", "controlnet", "text_encoder_2", "body_encoder"),
    )
    with pytest.raises(DryRunError, match=r"^text_encoder\.\S+ is torch.float32, expected "):
        dry_run(tiny_params(mixed_precision="bf16"))


def test_a_trainable_cast_to_bf16_is_caught(monkeypatch):
    # A policy that casts the base but does not restore the float32 master weights.
    monkeypatch.setattr(PrecisionPolicy, "keep_master_weights", lambda self, *modules: None)
    with pytest.raises(
        DryRunError,
        match=r"^unet\.\S+ is torch.bfloat16, expected torch.float32 \(a trainable master weight",
    ):
        dry_run(tiny_params(mixed_precision="bf16"))


def test_the_bf16_policy_passes_and_fp32_is_all_float32():
    bf16 = dry_run(tiny_params(mixed_precision="bf16"))
    assert set(bf16.memory.weights) == {"bfloat16", "float32"}
    fp32 = dry_run(tiny_params(mixed_precision="no"))
    assert set(fp32.memory.weights) == {"float32"}


def test_a_trainable_frozen_part_is_caught():
    components = build_meta_components(TINY)
    components["unet"].conv_in.requires_grad_(True)
    with pytest.raises(DryRunError, match=r"unet\.conv_in\.weight is trainable, .* unet must be"):
        check_trainable(components, TINY)


def test_a_frozen_trainable_part_is_caught():
    components = build_meta_components(TINY)
    components["unet"].encoder_hid_proj.image_projection_layers[1].requires_grad_(False)
    with pytest.raises(DryRunError, match="is frozen, but every parameter of body_resampler"):
        check_trainable(components, TINY)


# ---------------------------------------------------------------------------------------------
# Memory


def test_adamw8bit_predicts_less_optimizer_memory_than_adamw(sdxl_components, production):
    report, _ = production
    params = TrainingParams(use_8bit_adam=False)
    adamw = estimate_memory(sdxl_components, params, report.largest_bucket)
    adam8 = report.memory
    assert adamw.optimizer_state == 8 * report.trainable
    assert 2 * report.trainable <= adam8.optimizer_state < 2.01 * report.trainable
    assert adamw.total - adam8.total == adamw.optimizer_state - adam8.optimizer_state
    assert adam8.gradients == 4 * report.trainable


def test_activations_derive_from_the_measurement_and_scale_with_batch_and_pixels(
    sdxl_components, production
):
    report, _ = production
    memory = report.memory
    height, width = report.largest_bucket
    assert height * width == 1024 * 1024  # pixart_1024's largest
    # The benchmark held the frozen base in bf16 and 16 bytes per trainable parameter.
    assert round(memory.measured_state / GIB, 1) == 37.7
    assert memory.activations == MEASURED_PEAK_BYTES - memory.measured_state
    params = TrainingParams(batch_size=2)
    double = estimate_memory(sdxl_components, params, (1024, 1024))
    assert double.activations == pytest.approx(2 * memory.activations, abs=1)
    quarter = estimate_memory(sdxl_components, TrainingParams(), (512, 512))
    assert quarter.activations == pytest.approx(memory.activations / 4, abs=1)
    assert report.fits and memory.total < BUDGET_BYTES
    # Predicted, weights + state + the measured activations: 33.7 GiB of 74.5.
    assert 30 * GIB < memory.total < 40 * GIB


def test_a_batch_that_does_not_fit_is_reported(production):
    report, _ = production
    big = dry_run(TrainingParams(batch_size=16))
    assert not big.fits
    assert big.memory.activations == pytest.approx(16 * report.memory.activations, abs=16)
    assert "DOES NOT FIT" in big.table()


def test_processes_add_ddp_buckets_but_do_not_shard_the_optimizer(sdxl_components, production):
    report, _ = production
    params = TrainingParams()
    eight = estimate_memory(sdxl_components, params, report.largest_bucket, world_size=8)
    assert eight.optimizer_state == report.memory.optimizer_state
    assert eight.ddp_buckets == report.memory.gradients
    assert report.memory.ddp_buckets == 0


def test_zero_optimizer_shards_the_state_and_the_table_shows_the_saving(
    sdxl_components, production
):
    report, _ = production
    unsharded = report.memory.optimizer_state
    params = TrainingParams(zero_optimizer=True)
    eight = estimate_memory(sdxl_components, params, report.largest_bucket, world_size=8)
    assert eight.optimizer_state == pytest.approx(unsharded / 8, abs=1)
    assert eight.unsharded_optimizer_state == unsharded
    assert report.memory.total - eight.total == pytest.approx(
        unsharded - eight.optimizer_state - eight.ddp_buckets, abs=1
    )
    saving = f"{(unsharded - eight.optimizer_state) / GIB:.2f} GiB less than unsharded"
    assert saving in " ".join(dry_run(params, world_size=8).table().split())
    # One process shards nothing; its table still predicts the saving over 8 GPUs.
    assert "zero_optimizer (off)" in " ".join(report.table().split())
    assert saving in " ".join(report.table().split())


def test_gradients_as_bucket_views_drop_ddp_s_second_copy(sdxl_components, production):
    report, _ = production
    params = TrainingParams(ddp={"gradient_as_bucket_view": True})
    eight = estimate_memory(sdxl_components, params, report.largest_bucket, world_size=8)
    assert eight.ddp_buckets == 0


def test_bf16_pure_keeps_bf16_trainables_and_float32_masters():
    report = dry_run(TrainingParams(mixed_precision="bf16_pure"))
    trainable_parts = [part for part in report.parts if part.key in TRAINABLE_PARTS]
    assert all(part.dtypes == ("bfloat16",) for part in trainable_parts)
    memory = report.memory
    assert memory.master_weights == 4 * report.trainable
    assert memory.gradients == (2 + 4) * report.trainable  # bf16 model's, float32 masters'
    assert "master weights" in report.table()


def test_no_activation_estimate_without_a_measurement_of_the_config():
    report = dry_run(tiny_params())
    assert report.memory.activations is None
    assert "not estimated" in report.table()


# ---------------------------------------------------------------------------------------------
# The command


def test_cameo_train_dry_run_prints_the_table(tmp_path, monkeypatch):
    # No dataset, models directory or MLflow: an empty working directory stays empty.
    monkeypatch.chdir(tmp_path)
    for name in ("CAMEO_DATA", "CAMEO_MODELS", "CAMEO_PROFILE", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    options = ["--params", str(REPO / "params.yaml"), "--profile", "full"]
    result = CliRunner().invoke(train_command, [*options, "--config", "sdxl", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "dry run of training config sdxl: mixed_precision bf16, AdamW8bit" in out
    controlnet = next(line for line in out.splitlines() if line.startswith("Pose-IdentityNet"))
    assert controlnet.split()[-3:] == ["1,251,014,160", "1,251,014,160", "float32"]
    assert "2,097,201,168" in out
    assert "activations (estimate)" in out and "not modelled" in out
    assert "of the article's 80 GB per GPU (74.5 GiB): fits" in out
    assert list(tmp_path.iterdir()) == []


def test_cameo_train_dry_run_fails_with_one_line(monkeypatch):
    # The tiny profile's buckets are not multiples of 32: sdxl cannot train on them.
    monkeypatch.delenv("CAMEO_PROFILE", raising=False)
    options = ["--params", str(REPO / "params.yaml"), "--profile", "tiny", "--config", "sdxl"]
    result = CliRunner().invoke(train_command, [*options, "--dry-run"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training.buckets" in lines[0] and "multiple of 32" in lines[0]
