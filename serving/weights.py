"""The `full` profile's weights: which entries of $CAMEO_MODELS, their archives' sha256, and
filling a models folder (the Kubernetes models claim) from a mirror.

`models.lock.yaml` (next to params.yaml) lists every folder or file the `full` profile loads,
each with the sha256 of its archive on the mirror (null until recorded). The names are the
loaders' own: params.yaml's `faces.model`, `masks.model`, `masks.person_detector`,
`poses.model`, `captions.model` and training/model/'s folders; `required_models` gives them
and every command here refuses a lock file that misses one.

A mirror is any https://, http:// or file:// URL holding one `<entry>.tar` per entry (the
folder or file at the archive's top), as `cameo weights pack` writes them from a models folder
that works; `pack` records the archives' sha256 in the lock file, and `fetch` checks them.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from core.versioning import sha256
from perception.priors import Priors
from training.model import BODY_ENCODER_DIR, INSTANTID_DIR, SDXL_INPAINT_DIR

LOCK_FILE = Path(__file__).resolve().parents[1] / "models.lock.yaml"
_CHUNK = 1 << 20
_HEADER = """\
# The `full` profile's weights under $CAMEO_MODELS (serving/weights.py): each entry a folder or
# file the loaders read, with the sha256 of its archive `<entry>.tar` on the weights mirror
# (null: not recorded yet; `cameo weights pack` records them). A test keeps the entries equal to
# the names params.yaml and training/model/ give the loaders.
"""


class WeightsError(RuntimeError):
    """The lock file, the mirror or an archive is not what it should be."""


def required_models(priors: Priors) -> dict[str, str]:
    """`{entry under $CAMEO_MODELS: what loads it}` for the `full` profile of `priors`."""
    return {
        priors.faces.model: "faces.model: insightface detection and ArcFace",
        priors.masks.model: "masks.model: SAM",
        priors.masks.person_detector: "masks.person_detector: Grounding-DINO (Note 1)",
        priors.poses.model: "poses.model: RTMW wholebody ONNX",
        priors.captions.model: "captions.model: the captioning VLM",
        SDXL_INPAINT_DIR: "training: SDXL 1.0 inpainting (diffusers layout)",
        INSTANTID_DIR: "training: InstantID IdentityNet and ip-adapter.bin",
        BODY_ENCODER_DIR: "training: InternViT body encoder",
    }


def read_lock(path: str | Path = LOCK_FILE) -> dict[str, dict[str, Any]]:
    """`{entry: {"used_by", "sha256"}}` from the lock file."""
    entries = (yaml.safe_load(Path(path).read_text()) or {}).get("models") or {}
    return {name: dict(entry) for name, entry in entries.items()}


def write_lock(entries: Mapping[str, Mapping[str, Any]], path: str | Path = LOCK_FILE) -> None:
    body = yaml.safe_dump({"models": {k: dict(v) for k, v in entries.items()}}, sort_keys=False)
    Path(path).write_text(_HEADER + body)


def checked_lock(priors: Priors, path: str | Path = LOCK_FILE) -> dict[str, dict]:
    """The lock file's entries; WeightsError when it misses a model the params name."""
    entries = read_lock(path)
    missing = sorted(set(required_models(priors)) - set(entries))
    if missing:
        raise WeightsError(
            f"{path} does not list {', '.join(missing)}, which params.yaml's `full` profile "
            "loads: add them (and their archives to the mirror)"
        )
    return entries


def _download(source, target: Path) -> str:
    """Copy a file object to `target`, returning the sha256 of what was written."""
    digest = hashlib.sha256()
    with target.open("wb") as out:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def pack(
    models_dir: str | Path,
    mirror_dir: str | Path,
    priors: Priors,
    lock_path: str | Path = LOCK_FILE,
) -> dict[str, str]:
    """Write `<entry>.tar` of every lock-file entry under `models_dir` into `mirror_dir` and
    record each archive's sha256 in the lock file. Returns `{entry: sha256}`."""
    models_dir, mirror_dir = Path(models_dir), Path(mirror_dir)
    entries = checked_lock(priors, lock_path)
    absent = [name for name in entries if not (models_dir / name).exists()]
    if absent:
        raise WeightsError(f"not in {models_dir}: {', '.join(absent)}")
    mirror_dir.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, entry in entries.items():
        archive = mirror_dir / f"{name}.tar"
        tmp = mirror_dir / f".tmp-{name}.tar"
        with tarfile.open(tmp, "w") as tar:
            tar.add(models_dir / name, arcname=name)
        tmp.rename(archive)
        digests[name] = sha256(archive)
        entry["sha256"] = digests[name]
    write_lock(entries, lock_path)
    return digests


def fetch(
    mirror: str,
    models_dir: str | Path,
    priors: Priors,
    lock_path: str | Path = LOCK_FILE,
    log: Callable[[str], None] = print,
) -> list[str]:
    """Download and unpack every lock-file entry missing from `models_dir` from `mirror`,
    checking each archive's recorded sha256 first. Returns the entries fetched."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name, entry in checked_lock(priors, lock_path).items():
        target = models_dir / name
        if target.exists():
            log(f"{name}: present, skipped")
            continue
        url = f"{mirror.rstrip('/')}/{name}.tar"
        archive = models_dir / f".tmp-{name}.tar"
        unpacked = models_dir / f".tmp-{name}"
        try:
            with urllib.request.urlopen(url) as response:
                digest = _download(response, archive)
            expected = entry.get("sha256")
            if expected and digest != expected:
                raise WeightsError(f"{url} has sha256 {digest}, the lock file records {expected}")
            shutil.rmtree(unpacked, ignore_errors=True)
            with tarfile.open(archive) as tar:
                tar.extractall(unpacked, filter="data")  # no absolute paths, links out, devices
            if not (unpacked / name).exists():
                raise WeightsError(f"{url} does not hold {name} at its top")
            (unpacked / name).rename(target)
        except OSError as error:
            raise WeightsError(f"{name}: cannot fetch {url}: {error}") from error
        finally:
            archive.unlink(missing_ok=True)
            shutil.rmtree(unpacked, ignore_errors=True)
        verified = "sha256 checked" if entry.get("sha256") else "no sha256 recorded"
        log(f"{name}: fetched from {url} ({verified})")
        fetched.append(name)
    return fetched
