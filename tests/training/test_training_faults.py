"""Faults in training, made for real: damaged checkpoints, a full disk, a finished run resumed.
Each ends in one line that names the file and the way forward, and loses nothing."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_training_train import REPO, tiny_params

from orchestration.cli.train import train_command
from tests.conftest import tracking_store
from training.checkpoint import MANIFEST, checkpoints, disk_errors
from training.checks import TrainingError
from training.loop import train
from training.model import CONTROLNET_DIR
from training.outputs import STATE_FILE

pytestmark = pytest.mark.usefixtures("temp_tracking")


def _train(triplets_root: Path, out: Path, steps: int, resume: bool = False, **overrides):
    return train(
        tiny_params(out, max_steps=steps, checkpoint_every=2, **overrides),
        data_root=triplets_root,
        lock_file=None,
        show_progress=False,
        resume=resume,
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _garble_header(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[:8] = b"\xff" * 8  # safetensors' header length: "header too large"
    path.write_bytes(bytes(data))


DAMAGES = {
    "truncated state": (STATE_FILE, _truncate),
    "emptied state": (STATE_FILE, _empty),
    "garbled safetensors header": ("ip-adapter-face.safetensors", _garble_header),
    "half a ControlNet": (f"{CONTROLNET_DIR}/diffusion_pytorch_model.safetensors", _truncate),
}


def _copy_run(trained: tuple[Path, Path], tmp_path: Path) -> Path:
    """The trained run's checkpoints and MLflow store, for this test alone to damage."""
    _, original = trained
    shutil.copy(original.parent / "mlruns.db", tmp_path / "mlruns.db")
    shutil.copytree(original, tmp_path / "out")
    return tmp_path / "out"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Triplets and a 4-step run with checkpoints at steps 2 and 4, copied per test."""
    from conftest import precompute_features, write_triplets

    tmp = tmp_path_factory.mktemp("faults")
    root = precompute_features(write_triplets(tmp / "data"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking_store(tmp))
        patch.chdir(tmp)
        torch.set_num_threads(1)
        _train(root, tmp / "out", steps=4)
    return root, tmp / "out"


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_newest_checkpoint_is_skipped_naming_the_file(trained, tmp_path, capfd, damage):
    root, _ = trained
    out = _copy_run(trained, tmp_path)
    newest = checkpoints(out)[-1]
    name, spoil = DAMAGES[damage]
    spoil(newest / name)
    result = _train(root, out, steps=6, resume=True)
    assert result.step == 6
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "skipping" in line]
    assert line.startswith(f"skipping {newest}: {name}")


def test_a_checkpoint_cut_short_before_its_manifest_is_skipped(trained, tmp_path, capfd):
    root, _ = trained
    out = _copy_run(trained, tmp_path)
    (checkpoints(out)[-1] / MANIFEST).unlink()
    assert _train(root, out, steps=6, resume=True).step == 6
    assert f"{MANIFEST} missing" in capfd.readouterr().err


def test_no_verifying_checkpoint_refuses_in_one_line(trained, tmp_path):
    root, _ = trained
    out = _copy_run(trained, tmp_path)
    for folder in checkpoints(out):
        _empty(folder / STATE_FILE)
    with pytest.raises(TrainingError, match=r"^no checkpoint in .* verifies \(checkpoint-000004"):
        _train(root, out, steps=6, resume=True)


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs: a real full disk (needs mount rights; skipped without them)."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(triplets_root, small_disk):
    with pytest.raises(TrainingError, match=r"^no room for checkpoint .* needs .* GiB are free"):
        _train(triplets_root, small_disk / "out", steps=2)
    assert not any((small_disk / "out").glob(".tmp-*"))


def test_a_disk_that_fills_during_the_write_says_so(small_disk):
    (small_disk / "filler").write_bytes(b"\0" * 900_000)
    target = small_disk / "checkpoint-000002"
    with (
        pytest.raises(TrainingError, match=r"^disk full while writing .*checkpoint-000002"),
        disk_errors(target, needed=400_000),
    ):
        torch.save({"weights": torch.zeros(100_000)}, small_disk / STATE_FILE)


def test_resuming_a_finished_run_registers_nothing(triplets_root, tmp_path):
    from mlflow import MlflowClient

    options = [
        "--params", str(REPO / "params.yaml"), "--profile", "tiny", "--steps", "2",
        "--data", str(triplets_root), "--unlocked", "--no-progress",
        "--output-dir", str(tmp_path / "out"),
    ]  # fmt: skip
    first = CliRunner().invoke(train_command, options)
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(train_command, [*options, "--resume"])
    assert again.exit_code == 0, again.output
    assert "already finished at step 2" in again.output and "nothing registered" in again.output
    versions = MlflowClient().search_model_versions("name='cameo-inpaint'")
    assert len(versions) == 1
