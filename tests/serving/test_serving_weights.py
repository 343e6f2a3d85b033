"""The `full` profile's weights lock (models.lock.yaml) and the weights Job's commands: pack a
mirror from a models folder, fetch it into an empty one (a file:// mirror), checksums checked."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from orchestration.cli.main import main
from orchestration.params import load_params
from serving.weights import LOCK_FILE, WeightsError, fetch, pack, read_lock, required_models
from tests.conftest import PARAMS


@pytest.fixture
def full_models() -> dict[str, str]:
    """What the `full` profile loads, each entry under $CAMEO_MODELS."""
    params = load_params(PARAMS, "full")
    return required_models(params.priors(), params.synthetic.model)


@pytest.fixture
def models(tmp_path, full_models) -> Path:
    """A models folder with every entry the lock names: folders with files, or one file."""
    root = tmp_path / "models"
    for name in full_models:
        if name.endswith(".onnx"):
            root.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"onnx " + name.encode())
        else:
            (root / name / "sub").mkdir(parents=True)
            (root / name / "config.json").write_text(f'{{"name": "{name}"}}')
            (root / name / "sub" / "weights.bin").write_bytes(name.encode() * 100)
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_lock_lists_what_the_loaders_read(full_models):
    entries = read_lock()
    assert list(entries) == list(full_models)
    assert all(entry.source.hub or entry.source.url for entry in entries.values())
    assert all(entry.files and entry.licence.url for entry in entries.values() if entry.source.url)


def test_packed_mirror_fetches_into_an_empty_models_folder(tmp_path, models, full_models):
    lock = tmp_path / "models.lock.yaml"
    shutil.copy(LOCK_FILE, lock)
    digests = pack(models, tmp_path / "mirror", full_models, lock)
    assert {name: entry.mirror_sha256 for name, entry in read_lock(lock).items()} == digests

    target = tmp_path / "claim"
    lines: list[str] = []
    fetched = fetch((tmp_path / "mirror").as_uri(), target, full_models, lock, log=lines.append)
    assert fetched == list(digests)
    assert _tree(target) == _tree(models)
    assert all(line.endswith("(sha256 checked)") for line in lines)
    # A second run (a retried Job) finds everything present and downloads nothing.
    assert fetch((tmp_path / "mirror").as_uri(), target, full_models, lock, log=print) == []


def test_archive_with_another_checksum_is_refused(tmp_path, models, full_models):
    lock = tmp_path / "models.lock.yaml"
    shutil.copy(LOCK_FILE, lock)
    pack(models, tmp_path / "mirror", full_models, lock)
    name = next(iter(read_lock(lock)))
    with tarfile.open(tmp_path / "mirror" / f"{name}.tar", "w") as tar:  # a different archive
        tar.add(models / name / "config.json", arcname=f"{name}/config.json")
    with pytest.raises(WeightsError, match=f"{name}.tar has sha256"):
        fetch((tmp_path / "mirror").as_uri(), tmp_path / "claim", full_models, lock, log=print)
    assert not (tmp_path / "claim" / name).exists()
    assert not list((tmp_path / "claim").glob(".tmp-*"))


def test_lock_missing_a_model_the_params_name_is_refused(tmp_path, full_models):
    lock = tmp_path / "models.lock.yaml"
    entries = yaml.safe_load(LOCK_FILE.read_text())
    del entries["models"]["sam"]
    lock.write_text(yaml.safe_dump(entries))
    with pytest.raises(WeightsError, match="does not list sam"):
        fetch("file:///nowhere", tmp_path / "claim", full_models, lock)


def test_weights_fetch_command_names_an_unreachable_mirror(tmp_path):
    result = CliRunner().invoke(
        main,
        ["weights", "fetch", "--mirror", (tmp_path / "absent").as_uri(), "--models", str(tmp_path)],
    )
    assert result.exit_code == 1
    assert "cannot fetch" in result.output and "absent" in result.output
