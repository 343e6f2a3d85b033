"""The training loop on the tiny config, CPU: gradients, overfitting, MLflow, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import precompute_features, write_triplets
from safetensors.torch import load_file

from core.params import ParamsError
from core.versioning import dvc_md5
from orchestration.params import load_params
from serving.server import free_port
from tests.conftest import tracking_store
from training.checkpoint import checkpoints
from training.checks import TrainingError
from training.data import (
    TripletDataset,
    collate,
    load_manifest,
    resolve_buckets,
    split_by_identity,
)
from training.denoising import FrozenEncoders, denoising_loss
from training.evaluation_log import NOT_SCORED_FILE
from training.loop import train
from training.model import (
    ADAPTER_FILES,
    CONTROLNET_DIR,
    TINY,
    build_components,
    trainable_parameters,
)
from training.outputs import STATE_FILE
from training.params import TrainingParams
from training.tracking import HEADLINE_PARAMS, TRAINING_CONFIG_FILE

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("temp_tracking")


def tiny_params(output_dir: Path, **overrides) -> TrainingParams:
    values = load_params(REPO / "params.yaml", "tiny")
    return values.training.updated("training", output_dir=str(output_dir), **overrides)


def _batch(triplets_root, tiny, rows=2):
    manifest = load_manifest(triplets_root / "triplets")
    dataset = TripletDataset(
        manifest, triplets_root / "triplets", resolve_buckets("64,64"), tiny["body_processor"]
    )
    return collate([dataset[i] for i in range(rows)])


def _loss(tiny, batch, generator):
    from diffusers import DDPMScheduler

    from training.denoising import Denoiser
    from training.model import TINY

    encoded = FrozenEncoders(tiny, torch.float32)(batch, torch.device("cpu"))
    return denoising_loss(
        Denoiser(tiny["unet"], tiny["controlnet"]),
        DDPMScheduler(**TINY.scheduler),
        encoded,
        batch,
        generator,
        torch.device("cpu"),
        torch.float32,
        {},
        0.0,
    )


def test_one_step_gradients_reach_exactly_the_trainable_set(triplets_root, tiny):
    batch = _batch(triplets_root, tiny)
    loss = _loss(tiny, batch, torch.Generator().manual_seed(0))
    loss.backward()
    trainable = trainable_parameters(tiny["unet"], tiny["controlnet"])
    assert trainable
    for name, param in trainable.items():
        assert param.grad is not None, name
    # The ControlNet's zero convolutions start at zero, so the ControlNet body gets no
    # gradient on step one; its output convolutions and every adapter weight must.
    nonzero = {name for name, p in trainable.items() if p.grad.abs().sum() > 0}
    assert any("to_k_ip" in n for n in nonzero) and any("encoder_hid_proj" in n for n in nonzero)
    assert any("controlnet_down_blocks" in n for n in nonzero)
    frozen = [
        (name, p)
        for module in ("unet", "controlnet", "vae", "text_encoder", "text_encoder_2")
        for name, p in tiny[module].named_parameters()
        if f"{module}.{name}" not in trainable
    ]
    assert frozen
    assert all(p.grad is None for _, p in frozen)
    for module in ("vae", "text_encoder", "text_encoder_2", "body_encoder"):
        assert not any(p.requires_grad for p in tiny[module].parameters())


def test_fixed_small_batch_overfits(triplets_root, tiny):
    """The same two samples, the same noise and timesteps every step: the loss must fall
    far within tens of steps if gradients flow where they should."""
    batch = _batch(triplets_root, tiny)
    trainable = list(trainable_parameters(tiny["unet"], tiny["controlnet"]).values())
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    losses = []
    for _ in range(40):
        loss = _loss(tiny, batch, torch.Generator().manual_seed(0))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _final_weights(directory: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for branch, name in ADAPTER_FILES.items():
        weights.update({f"{branch}.{k}": v for k, v in load_file(directory / name).items()})
    controlnet = load_file(directory / CONTROLNET_DIR / "diffusion_pytorch_model.safetensors")
    weights.update({f"controlnet.{k}": v for k, v in controlnet.items()})
    return weights


def _assert_same_weights(a: Path, b: Path) -> None:
    left, right = _final_weights(a), _final_weights(b)
    assert left.keys() == right.keys()
    different = [k for k in left if not torch.equal(left[k], right[k])]
    assert not different, different[:5]


def test_training_run_is_logged_to_mlflow(triplets_root, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    params = tiny_params(tmp_path / "out", max_steps=4, validate_every=2, checkpoint_every=2)
    result = train(params, data_root=triplets_root, lock_file=None, show_progress=False)
    assert result.step == 4 and len(result.losses) == 4
    client = MlflowClient()
    run = client.get_run(result.run_id)
    md5 = dvc_md5(triplets_root / "triplets")
    assert run.info.run_name == f"tiny lr {params.learning_rate:g} 4 steps data {md5[:8]}"
    assert run.data.params["model.config"] == "tiny"
    # Headline params as params (what runs are compared by; few enough for the UI's image
    # cards to show their picture), the rest as a file.
    assert {
        key.removeprefix("training.") for key in run.data.params if key.startswith("training.")
    } == set(HEADLINE_PARAMS)
    config = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{TRAINING_CONFIG_FILE}")
    assert config == params.model_dump(mode="json")
    assert run.data.tags["dataset_md5"] == dvc_md5(triplets_root / "triplets")
    assert run.data.tags["world_size"] == "1"
    assert run.data.tags["effective_batch_size"] == "1"
    assert run.data.tags["dataset_locked"] == "false"
    assert run.data.tags["optimizer.class"] == "torch.optim.adamw.AdamW"
    assert len(run.data.params) == len(HEADLINE_PARAMS) + 1
    # One separator: `<section>.<key>`, nothing MLflow flattens with "/".
    assert all(re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", key) for key in run.data.params)
    for metric in (
        "train/loss",
        "train/lr_identity",
        "train/lr_body",
        "train/grad_norm",
        "train/samples_per_s",
        "train/peak_memory_mb",
    ):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2, 3, 4]
    # The first step (compile, cuDNN's autotuning) is timed apart, once.
    first = client.get_metric_history(run.info.run_id, "train/first_step_s")
    assert [m.step for m in first] == [1] and first[0].value > 0
    # Validation at step 0 (the untrained model) and every `validate_every` steps.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "valid/loss")] == [0, 2, 4]
    assert {m.split("/")[0] for m in run.data.metrics} == {"train", "valid", "eval"}
    # Scored at each validation, or named with the reason it could not be (no NaN is logged).
    not_scored = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/{NOT_SCORED_FILE}")
    for metric in ("face_similarity", "face_found", "pck_body", "pck_face", "saturation_ratio"):
        history = client.get_metric_history(run.info.run_id, f"eval/{metric}")
        steps = [m.step for m in history]
        assert steps == [0, 2, 4] or not_scored[f"eval/full/{metric}"].startswith("no sample")
        assert not any(math.isnan(m.value) for m in history)
    # The model's figure per validation triplet and step, and its sheet under a short name.
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert images and all(path.startswith("images/grid~") for path in images)
    sheets = [a.path for a in client.list_artifacts(run.info.run_id, "grids/step-2")]
    assert any(path.endswith("-full.png") for path in sheets)
    inputs = run.inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert set(contexts) == {"training", "validation"}
    assert contexts["training"].name == "triplets"
    assert contexts["validation"].name == "triplets-validation"
    for dataset in contexts.values():
        assert dataset.digest == dvc_md5(triplets_root / "triplets")
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")}
    assert "checkpoint/pose_identitynet" in artifacts
    assert "model_config.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # Checkpoints kept, final weights and DVC metrics written.
    assert [p.name for p in checkpoints(tmp_path / "out")] == [
        "checkpoint-000002",
        "checkpoint-000004",
    ]
    assert (tmp_path / "out" / "final" / "cameo_checkpoint.json").is_file()
    assert (tmp_path / "out" / "metrics.json").is_file()
    assert mlflow.active_run() is None


def test_resume_is_bit_identical_and_continues_the_run(triplets_root, tmp_path):
    straight = train(
        tiny_params(tmp_path / "straight", max_steps=6),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
    )
    first = train(
        tiny_params(tmp_path / "resumed", max_steps=6),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
        stop_after=3,
    )
    assert first.step == 3
    second = train(
        tiny_params(tmp_path / "resumed", max_steps=6),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
        resume=True,
    )
    assert second.step == 6 and second.run_id == first.run_id
    assert second.losses == straight.losses
    _assert_same_weights(tmp_path / "straight" / "final", tmp_path / "resumed" / "final")


def _env(triplets_root: Path, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CAMEO_DATA": str(triplets_root),
        "CAMEO_PROFILE": "tiny",
        "OMP_NUM_THREADS": "1",  # the same arithmetic as this process (one torch thread)
        "PYTHONPATH": str(REPO),
        "MLFLOW_TRACKING_URI": tracking_store(tmp_path),
    }


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(triplets_root, tmp_path, monkeypatch):
    """kill -9 in the middle of a run, then a resume (in this process, on the killed run's
    store): the result equals a straight run."""
    train(
        tiny_params(tmp_path / "straight", max_steps=6),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
    )
    out = tmp_path / "killed"
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"]["checkpoint_every"] = 1  # a checkpoint to kill after
    # This process's kernels, as the straight run above got (torch is loaded here already).
    values["profiles"]["tiny"]["training"]["portable_cpu_kernels"] = False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(values))
    command = [
        sys.executable, "-m", "orchestration.cli.train", "--params", str(params_file),
        "--unlocked", "--no-progress", "--no-register", "--output-dir", str(out), "--steps", "6",
    ]  # fmt: skip
    env = _env(triplets_root, tmp_path)
    process = subprocess.Popen([*command], env=env, cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 120
    while not checkpoints(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert checkpoints(out), "no checkpoint was written before the kill"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
    resumed = train(  # the killed command's params, --output-dir and --steps
        load_params(params_file, "tiny").training.updated(
            "training", output_dir=str(out), max_steps=6
        ),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
        resume=True,
    )
    assert resumed.step == 6
    _assert_same_weights(tmp_path / "straight" / "final", out / "final")


def torchrun_two_processes(triplets_root: Path, tmp_path: Path, **overrides) -> list[list[str]]:
    """`tests/training/ddp_train.py` on 2 CPU processes (gloo); each rank's line, split."""
    torchrun = Path(sys.executable).parent / "torchrun"
    subprocess.run(
        [
            str(torchrun),
            "--nproc-per-node",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
            str(REPO / "tests" / "training" / "ddp_train.py"),
            str(tmp_path),
            json.dumps(overrides),
        ],
        env=_env(triplets_root, tmp_path),
        cwd=tmp_path,
        check=True,
        timeout=300,
    )
    return [(tmp_path / f"rank{rank}.txt").read_text().split() for rank in (0, 1)]


def test_ddp_options_and_a_sharded_optimizer_keep_the_ranks_in_sync(triplets_root, tmp_path):
    """Gradients as bucket views, small buckets and ZeroRedundancyOptimizer on 2 CPU ranks,
    under pure bf16 with 2 accumulated micro-steps (summed in float32, one bf16
    all-reduce per step): the ranks stay identical, a run stopped after step 1 and resumed ends
    on the straight run's weights, and the checkpoint holds the optimiser state of every
    trainable parameter, gathered from both shards. (bf16 gradient compression runs on NCCL
    only: `test_bf16_gradient_compression_is_refused_off_cuda`.)"""
    rank0, rank1 = torchrun_two_processes(
        triplets_root,
        tmp_path,
        ddp={"gradient_as_bucket_view": True, "bucket_cap_mb": 1},
        zero_optimizer=True,
        mixed_precision="bf16_pure",
        features=False,  # the encoders online: the stored features are float32's
        gradient_accumulation_steps=2,
        checkpoint_every=1,
        resume_after=1,
    )
    assert rank0[0] == "2" and rank0[:2] == rank1[:2]
    assert rank0[1] == rank0[3], "the resumed run ended on other weights than the straight one"
    latest = checkpoints(tmp_path / "checkpoints")[-1]
    state = torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)
    components = build_components(TINY, seed=0)
    trainable = trainable_parameters(components["unet"], components["controlnet"])
    assert len(state["optimizer"]["state"]) == len(trainable)


def test_two_ranks_stay_in_sync_and_shard_a_capped_validation(tmp_path):
    """Two ranks under DDP's static graph (the trainable set is the same every step; without
    gradient accumulation, which it refuses), on triplets without features: rank 0 builds
    them while rank 1 waits, and the weights stay identical. 16 identities, a validation cap
    of 2: each rank computes valid/loss on its 1 sample (not rank 0 on all of them while the
    other waits), with every collective bounded by 60 s, and the 5-panel evaluation on rank 0
    under the same precision policy."""
    from mlflow.tracking import MlflowClient

    from training.features import INDEX

    root = write_triplets(tmp_path / "data", identities=16)
    overrides = {
        "ddp": {"static_graph": True},
        "validation_fraction": 0.5,
        "validation_max_samples": 2,
        "validate_every": 2,
        "collective_timeout_s": 60,
    }
    rank0, rank1 = torchrun_two_processes(root, tmp_path, **overrides)
    assert rank0[0] == "2" and rank0[:2] == rank1[:2] and (rank0[2], rank1[2]) == ("1", "1")
    assert (tmp_path / "checkpoints" / "final" / "cameo_checkpoint.json").is_file()
    manifest = load_manifest(root / "triplets")
    (store,) = (root / "features").iterdir()
    assert len(json.loads((store / INDEX).read_text())["samples"]) == len(manifest)
    _, validation = split_by_identity(manifest, overrides["validation_fraction"], 0)
    assert len(validation) >= 3 * overrides["validation_max_samples"]
    client = MlflowClient(tracking_store(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name("cameo").experiment_id])
    history = client.get_metric_history(run.info.run_id, "valid/samples")
    assert [(samples.step, samples.value) for samples in history] == [(0, 2), (2, 2)]
    assert client.get_metric_history(run.info.run_id, "eval/saturation_ratio")


def test_train_builds_missing_features_unless_told_not_to(tmp_path):
    """Right after the dataset build (triplets, no features) `cameo train` builds the features
    first, with a progress bar, then trains; with --no-build-features it stops with the
    features stage's error instead."""
    from click.testing import CliRunner

    from orchestration.cli.train import train_command
    from training.features import INDEX

    root = write_triplets(tmp_path / "data")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = values["profiles"]["tiny"]["training"]
    tiny["portable_cpu_kernels"] = False  # torch is loaded in this process already
    tiny["validation_samples"] = 0  # no evaluation: the test is about the features
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(values))
    options = [
        "--params", str(params_file), "--profile", "tiny", "--data", str(root), "--unlocked",
        "--no-register", "--output-dir", str(tmp_path / "out"), "--steps", "2",
    ]  # fmt: skip
    refused = CliRunner().invoke(train_command, [*options, "--no-build-features", "--no-progress"])
    assert refused.exit_code == 1
    assert "no features at" in refused.output and "cameo features build" in refused.output
    assert not (root / "features").exists()
    trained = CliRunner().invoke(train_command, options)
    assert trained.exit_code == 0, trained.output
    assert re.search(r"features: 100%.*6/6", trained.stderr)
    assert "trained 2 steps" in trained.stdout
    (store,) = (root / "features").iterdir()
    assert len(json.loads((store / INDEX).read_text())["samples"]) == 6


def test_dataset_version_must_match_dvc_lock(triplets_root, tmp_path):
    md5 = dvc_md5(triplets_root / "triplets")
    lock = tmp_path / "dvc.lock"
    entry = "schema: '2.0'\nstages:\n  dataset:\n    outs:\n    - path: data/triplets\n"
    entry += "      md5: {}\n"
    lock.write_text(entry.format("0" * 32 + ".dir"))
    params = tiny_params(tmp_path / "out", max_steps=1)
    with pytest.raises(TrainingError, match="dvc checkout triplets"):
        train(params, data_root=triplets_root, lock_file=lock, show_progress=False)
    lock.write_text(entry.replace("data/triplets", "elsewhere").format(md5))
    with pytest.raises(TrainingError, match="does not version"):
        train(params, data_root=triplets_root, lock_file=lock, show_progress=False)
    lock.write_text(entry.format(md5))
    result = train(params, data_root=triplets_root, lock_file=lock, show_progress=False)
    assert result.dataset_md5 == md5


def test_bad_buckets_and_foreign_resume_are_refused(triplets_root, tmp_path):
    with pytest.raises(ValueError, match="multiple of 16"):
        train(
            tiny_params(tmp_path / "out", buckets="50,50"),
            data_root=triplets_root,
            lock_file=None,
            show_progress=False,
        )
    train(
        tiny_params(tmp_path / "out", max_steps=2, checkpoint_every=1),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
    )
    # What decides the model, the data order or the split cannot change on resume.
    changes = {
        "batch_size": 2,
        "gradient_accumulation_steps": 2,
        "validation_fraction": 0.5,
        "seed": 1,
    }
    for setting, value in changes.items():
        with pytest.raises(TrainingError, match=rf"training\.{setting} .* -> {value}"):
            train(
                tiny_params(tmp_path / "out", max_steps=3, **{setting: value}),
                data_root=triplets_root,
                lock_file=None,
                show_progress=False,
                resume=True,
            )
    # Features built for other buckets are refused where not rebuilt, naming the stage to rerun.
    with pytest.raises(FileNotFoundError, match=r"other buckets.*dvc repro features"):
        train(
            tiny_params(tmp_path / "other", buckets="64,64"),
            data_root=triplets_root,
            lock_file=None,
            show_progress=False,
            build_missing_features=False,
        )


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(triplets_root, tmp_path):
    manifest_path = triplets_root / "triplets" / "manifest.parquet"
    manifest = pd.read_parquet(manifest_path)
    manifest["face_embedding_raw_norm"] = float("nan")
    manifest.to_parquet(manifest_path)
    precompute_features(triplets_root)
    with pytest.raises(TrainingError, match=r"non-finite loss by step 1.*none"):
        train(
            tiny_params(tmp_path / "out", max_steps=2),
            data_root=triplets_root,
            lock_file=None,
            show_progress=False,
        )
    assert not checkpoints(tmp_path / "out")
    import mlflow

    assert mlflow.active_run() is None
    (run,) = mlflow.search_runs(output_format="list")
    assert run.info.status == "FAILED"


def test_params_are_checked_before_any_work(tmp_path):
    with pytest.raises(ParamsError, match=r"batch_size: must be >= 1"):
        tiny_params(tmp_path, batch_size=0)
    with pytest.raises(ParamsError, match="did you mean 'learning_rate'"):
        tiny_params(tmp_path, learning_rte=1.0)
    with pytest.raises(ParamsError, match=r"cfg_dropout\.face: must be <= 1"):
        tiny_params(tmp_path, cfg_dropout={"face": 2.0})
    with pytest.raises(ParamsError, match="expected an integer"):
        tiny_params(tmp_path, max_steps="many")
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["training"]["batch_size"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(values))
    with pytest.raises(ParamsError, match=r"training\.batch_size"):
        load_params(bad, "tiny")


def test_bf16_policy_trains_and_validates(triplets_root, tmp_path):
    """The GPU's precision policy on CPU: bf16 frozen base, fp32 trainables, bf16 autocast;
    the validation step (loss and the evaluation's 5-panel inference) runs under it too."""
    from mlflow.tracking import MlflowClient

    precompute_features(triplets_root, mixed_precision="bf16")
    params = tiny_params(
        tmp_path / "out", mixed_precision="bf16", max_steps=2, validate_every=2, checkpoint_every=2
    )
    result = train(params, data_root=triplets_root, lock_file=None, show_progress=False)
    unet = result.model.unet
    trainable = trainable_parameters(unet, result.model.controlnet)
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    frozen = [p for p in unet.parameters() if not p.requires_grad]
    assert frozen and {p.dtype for p in frozen} == {torch.bfloat16}
    history = MlflowClient().get_metric_history(result.run_id, "valid/loss")
    assert [m.step for m in history] == [0, 2] and all(math.isfinite(m.value) for m in history)
    assert MlflowClient().get_metric_history(result.run_id, "eval/saturation_ratio")


def test_training_from_features_equals_training_online(triplets_root, tmp_path):
    """The features stage changes where the encoders' outputs come from, not what they are:
    the same seed gives the same losses, to float32 rounding (batched vs per-batch encoding),
    stated as a relative tolerance of 1e-5."""
    online = train(
        tiny_params(tmp_path / "online", max_steps=4, features=False),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
    )
    stored = train(
        tiny_params(tmp_path / "stored", max_steps=4, features=True),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
    )
    assert stored.losses == pytest.approx(online.losses, rel=1e-5)
    assert stored.metrics["loss_last"] == pytest.approx(online.metrics["loss_last"], rel=1e-5)


def test_feature_store_is_content_addressed_and_incremental(triplets_root):
    """Rebuilding encodes nothing new; a changed triplet gets new features and only it."""
    import json

    from training.features import INDEX

    (store,) = (triplets_root / "features").iterdir()
    before = json.loads((store / INDEX).read_text())["samples"]
    shards = sorted(p.name for p in store.glob("shard-*"))
    precompute_features(triplets_root)
    assert json.loads((store / INDEX).read_text())["samples"] == before
    assert sorted(p.name for p in store.glob("shard-*")) == shards
    # One target image repainted: its key changes, the others keep theirs.
    manifest = pd.read_parquet(triplets_root / "triplets" / "manifest.parquet")
    changed = manifest.iloc[0]
    target = triplets_root / "triplets" / changed["target"]
    from PIL import Image

    Image.new("RGB", Image.open(target).size, (10, 200, 30)).save(target)
    precompute_features(triplets_root)
    after = json.loads((store / INDEX).read_text())["samples"]
    assert after[changed["triplet_id"]]["key"] != before[changed["triplet_id"]]["key"]
    unchanged = [t for t in before if t != changed["triplet_id"]]
    assert all(after[t] == before[t] for t in unchanged)


def test_8bit_adam_is_refused_where_it_cannot_run(triplets_root, tmp_path):
    """`use_8bit_adam` never falls back silently to another optimiser: on a CPU it stops
    before any work, naming the setting."""
    with pytest.raises(TrainingError, match=r"training\.use_8bit_adam: .*needs CUDA"):
        train(
            tiny_params(tmp_path / "out", use_8bit_adam=True),
            data_root=triplets_root,
            lock_file=None,
            show_progress=False,
        )


def test_an_unquoted_no_from_dvc_exp_run_is_the_no_policy(tmp_path):
    """`dvc exp run -S` rewrites params.yaml without quotes; YAML 1.1 reads `no` as false."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["profiles"]["tiny"]["training"]["mixed_precision"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    assert load_params(path, "tiny").training.mixed_precision == "no"
