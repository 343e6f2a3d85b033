"""The Python environment a logged model carries, so that MLflow's own serving paths rebuild it:
`mlflow models serve` with the `uv` or `virtualenv` environment manager, and `mlflow models
build-docker`, install the model's `requirements.txt` into a fresh environment, then load it.

Its requirements are
- cameo itself, as a wheel logged with the model (`artifacts/cameo-<version>+<source
  digest>-py3-none-any.whl`; no index serves a version with a local label, so no other
  package can stand in for it): the model's code file imports the `serving` package;
- every distribution the served code imports (read from its modules with `ast`, as code
  versions are, imports inside functions included: the `full` profile's recognisers too), the
  data packages it opens by name, and everything those need: a complete, resolved set, each
  pinned to the version the model was logged with, so a fresh environment is the logging one
  and can be installed without resolving (`--no-deps`, from a local cache);
- torch with its build (`+cpu` where the `tiny` model is trained on a CPU machine, `+cu128` in
  the GPU image) and the index that serves that build.

Distributions the code imports but the logging environment lacks (vllm, the `full` profile's
captioner, on a CPU machine) cannot be pinned: they are listed in the model's metadata.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from core.io import atomic_path
from core.versioning import (
    FIRST_PARTY,
    PROJECT_FILES,
    SOURCE_ROOT,
    module_name,
    project_digest,
    third_party_modules,
)
from serving.artifacts import ARTIFACTS_DIR, MODEL_CODE

# The served code's entry module: the code file MLflow runs.
MODEL_CODE_MODULE = module_name(MODEL_CODE)
# Packages the served code opens by name rather than imports (dlib's model files).
DATA_PACKAGES = ("face-recognition-models",)
# Where torch's builds other than PyPI's default are served, per local version label.
TORCH_INDEX = "https://download.pytorch.org/whl/{build}"


@dataclass(frozen=True)
class ModelEnvironment:
    """What `log_model` gives MLflow: the requirement lines and the wheel they name."""

    requirements: list[str]
    wheel: Path
    not_installed: list[str]  # imported by the served code, absent where it was logged


@functools.cache
def _distributions_by_module() -> dict[str, set[str]]:
    """Every installed distribution's top-level modules, declared or read from the files its
    RECORD lists: some wheels declare none of them (dlib-bin's top_level.txt names only its
    extension module, not `dlib`)."""
    found: dict[str, set[str]] = defaultdict(set)
    for dist in metadata.distributions():
        tops = set((dist.read_text("top_level.txt") or "").split())
        for line in (dist.read_text("RECORD") or "").splitlines():
            top, _, rest = line.split(",")[0].partition("/")
            if rest and not top.endswith((".dist-info", ".data")):
                tops.add(top)
            elif not rest and top.endswith((".py", ".so")):
                tops.add(inspect.getmodulename(top) or top.split(".")[0])
        for top in tops - {"..", "__pycache__"}:
            found[top].add(canonicalize_name(dist.metadata["Name"]))
    return found


def requirement_closure(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each distribution in `names` and of every distribution they
    require, directly or not (requirements whose marker holds here, extras aside): the
    resolved set a fresh environment needs. Names not installed are left out."""
    pinned: dict[str, str] = {}
    pending = [canonicalize_name(name) for name in names]
    while pending:
        name = pending.pop()
        if name in pinned:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        pinned[name] = dist.version
        for line in dist.requires or ():
            required = Requirement(line)
            if required.marker is None or required.marker.evaluate({"extra": ""}):
                pending.append(canonicalize_name(required.name))
    return pinned


def served_distributions(modules: Iterable[str]) -> tuple[set[str], list[str]]:
    """The installed distributions providing `modules` (top-level import names), and the
    modules no installed distribution provides."""
    by_module = _distributions_by_module()
    found = {dist for module in modules for dist in by_module.get(module, ())}
    missing = sorted(module for module in modules if module not in by_module)
    return found, missing


def _torch_index(pinned: dict[str, str]) -> list[str]:
    """The index line for torch's build: its local version label (`cpu`, `cu128`) names the
    index serving it; PyPI's default build has none."""
    build = Version(pinned["torch"]).local if "torch" in pinned else None
    return [f"--extra-index-url {TORCH_INDEX.format(build=build)}"] if build else []


def _wheel_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cameo" / "wheels"


def _local_version(pyproject: Path, label: str) -> None:
    """Give the project file's version the local label `label` (0.1.0 -> 0.1.0+<label>):
    a version no index can serve (they refuse local labels), naming the code it was built
    from."""
    text = pyproject.read_text()
    version = tomllib.loads(text)["project"]["version"]
    declared = f'version = "{version}"'
    if text.count(declared) != 1:
        raise ValueError(f"{pyproject}: expected one line {declared}")
    pyproject.write_text(text.replace(declared, f'version = "{version}+{label}"'))


def cameo_wheel(root: Path = SOURCE_ROOT) -> Path:
    """A wheel of the cameo source at `root`, versioned `<version>+<source digest>`, built once
    per digest (with pip and the installed setuptools, from a copy: the source may be
    read-only) and kept in the user's cache."""
    digest = project_digest(root)
    folder = _wheel_cache() / digest
    built = sorted(folder.glob("cameo-*.whl"))
    if built:
        return built[0]
    with tempfile.TemporaryDirectory() as tmp:
        source, out = Path(tmp) / "source", Path(tmp) / "wheel"
        source.mkdir()
        for name in PROJECT_FILES:
            shutil.copy2(root / name, source / name)
        for package in FIRST_PARTY:
            shutil.copytree(
                root / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
            )
        _local_version(source / "pyproject.toml", digest)
        command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
        command += ["--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(source)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building cameo's wheel failed: {done.stderr.strip()[-2000:]}")
        [wheel] = out.glob("cameo-*.whl")
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / wheel.name) as target:
            shutil.copy2(wheel, target)
    return folder / wheel.name


def model_environment() -> ModelEnvironment:
    """The requirements of the served code, pinned, cameo's own version among them, found in
    the folder where MLflow puts a model's file artifacts."""
    distributions, not_installed = served_distributions(third_party_modules(MODEL_CODE_MODULE))
    pinned = requirement_closure([*distributions, *DATA_PACKAGES])
    wheel = cameo_wheel()
    cameo_version = wheel.name.split("-")[1]
    requirements = [
        *_torch_index(pinned),
        # Relative to the requirements file (pip) and to the model's folder, where MLflow's
        # virtualenv and uv managers install from: both find the wheel logged with the model.
        f"--find-links ./{ARTIFACTS_DIR}",
        *(f"{name}=={version}" for name, version in sorted(pinned.items())),
        f"cameo=={cameo_version}",
    ]
    return ModelEnvironment(requirements, wheel, not_installed)
