"""The registered model served the way MLflow users serve models: `mlflow models serve` builds a
fresh environment from the model's own requirements (cameo's wheel logged with it, every
package its code imports, pinned) and answers a request from it.

uv is configured offline and `--no-deps`, from the local package cache (uv's, pip's
find-links for torch's CPU wheel, the interpreter's bundled pip): the environment holds only
what the model's requirements.txt lists, and nothing is downloaded. `mlflow models
build-docker` installs the same requirements inside a Docker build, which cannot run here:
`generate-dockerfile` is checked up to it.
"""

from __future__ import annotations

import ensurepip
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAST

from serving.client import InpaintClient
from serving.environment import DATA_PACKAGES, requirement_closure
from serving.server import free_port, wait_until_answering
from training.tracking import CHAMPION, REGISTERED_MODEL

MODEL = f"models:/{REGISTERED_MODEL}@{CHAMPION}"


def _find_links() -> list[str]:
    """pip's find-links (its environment and its config files: where this machine keeps
    torch's CPU wheel, as `make venv` finds it) and the interpreter's bundled pip."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        if key.endswith(".find-links"):
            links += value.strip("'\"").split()
    return [*dict.fromkeys(links), str(Path(ensurepip.__file__).parent / "_bundled")]


def _offline_uv(tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "uv.toml"
    links = ", ".join(f'"{link}"' for link in _find_links())
    config.write_text(f"offline = true\n\n[pip]\nno-deps = true\nfind-links = [{links}]\n")
    return {
        **os.environ,
        "UV_CONFIG_FILE": str(config),
        "UV_PYTHON_DOWNLOADS": "never",
        "MLFLOW_ENV_ROOT": str(tmp_path / "envs"),
        # The interpreter the model was logged with (python_env.yaml), then uv itself.
        "PATH": os.pathsep.join(
            [
                str(Path(sys.base_prefix, "bin")),
                str(Path(sys.executable).parent),
                os.environ["PATH"],
            ]
        ),
    }


def _requirements() -> list[str]:
    import mlflow

    return Path(mlflow.pyfunc.get_model_dependencies(MODEL)).read_text().splitlines()


def test_the_models_requirements_name_everything_its_code_needs(logged):
    """cameo as the wheel logged beside the model, dlib and its model files, torch with its
    build and index, every distribution pinned: what `pip freeze` of a fresh environment
    would give."""
    requirements = _requirements()
    import torch

    assert f"torch=={torch.__version__}" in requirements
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in requirements
    assert "--find-links ./artifacts" in requirements
    [cameo] = [line for line in requirements if line.startswith("cameo==")]
    assert re.fullmatch(r"cameo==0\.1\.0\+[0-9a-f]{16}", cameo)
    names = {line.split("==")[0] for line in requirements if "==" in line}
    assert {"dlib-bin", *DATA_PACKAGES, "mlflow", "diffusers", "insightface"} <= names
    assert set(requirement_closure(["diffusers"])) <= names
    assert all(line.startswith(("--", "./")) or "==" in line for line in requirements)


def test_mlflow_models_serve_answers_from_a_fresh_environment_of_the_models_requirements(
    logged, good_row, tmp_path
):
    import torch

    wheel = f"torch-{torch.__version__}-*.whl"
    if not any(next(Path(link).glob(wheel), None) for link in _find_links()):
        pytest.skip(f"no {wheel} in pip's find-links: the fresh environment cannot get torch")
    port = free_port()
    command = ["mlflow", "models", "serve", "-m", MODEL, "--env-manager", "uv"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log = tmp_path / "mlflow-serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            env=_offline_uv(tmp_path),
            cwd=tmp_path,  # not the repo, whose packages would shadow the wheel's
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_answering("mlflow models serve", f"{url}/ping", process, 300, log)
        [result] = InpaintClient(url).predict([good_row], FAST)
        assert result.image.size == (64, 64)
        [env] = [config.parent for config in (tmp_path / "envs").glob("**/pyvenv.cfg")]
        python = env / "bin" / "python"
        installed = subprocess.run(
            [str(python), "-c", "import serving, torch; print(serving.__file__)"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        # The model's code came from the wheel installed in that environment, not this repo.
        assert str(env) in installed
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_generate_dockerfile_installs_the_models_own_requirements(logged, tmp_path):
    """What `mlflow models build-docker` builds (Docker cannot run here): the model copied into
    the build context with its requirements and cameo's wheel, installed from there."""
    out = tmp_path / "docker"
    subprocess.run(
        ["mlflow", "models", "generate-dockerfile", "-m", MODEL, "-d", str(out)],
        check=True,
        capture_output=True,
    )
    dockerfile = (out / "Dockerfile").read_text()
    assert "model_dir" in dockerfile
    [requirements] = out.rglob("requirements.txt")
    [cameo] = [line for line in requirements.read_text().splitlines() if line.startswith("cameo")]
    version = cameo.removeprefix("cameo==")
    assert (requirements.parent / "artifacts" / f"cameo-{version}-py3-none-any.whl").is_file()


def test_only_the_source_the_wheel_was_built_from_meets_the_models_cameo_requirement():
    """Loading a model here checks its requirements as MLflow does, but cameo's by source
    digest: an editable install declares 0.1.0 whatever its source."""
    from core.versioning import project_digest
    from training.tracking import _is_installed_cameo

    assert _is_installed_cameo(f"cameo==0.1.0+{project_digest()}")
    assert not _is_installed_cameo("cameo==0.1.0+0123456789abcdef")
    assert not _is_installed_cameo("cameo==0.1.0")
    assert not _is_installed_cameo(f"torch==2.13.0+{project_digest()}")
