"""The `full` profile's base weights: recorded when a model is logged, checked when it loads.

A `full` model carries only what training changed (adapters and Pose-IdentityNet); SDXL
inpainting, InternViT and the perception models are read from the models directory. The model
records each one's files with their sizes and sha256, and refuses to load, naming what is
missing or different, rather than serving a silently different base.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.versioning import sha256


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def record_base_models(models_dir: str | Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """`{name: {relative file: {"size", "sha256"}}}` for each folder or file under `models_dir`."""
    models_dir = Path(models_dir)
    manifest = {}
    for name in names:
        path = models_dir / name
        if not path.exists():
            raise FileNotFoundError(f"base model {name} not found in {models_dir}")
        manifest[name] = {
            str(file.relative_to(models_dir)): {"size": file.stat().st_size, "sha256": sha256(file)}
            for file in _files(path)
        }
    return manifest


def check_base_models(
    models_dir: str | Path, manifest: dict[str, dict[str, Any]], verify_checksums: bool = True
) -> None:
    """Raise FileNotFoundError naming every recorded file that is missing, has another size or
    (with `verify_checksums`) another sha256 under `models_dir`."""
    models_dir = Path(models_dir)
    problems = []
    for name, files in manifest.items():
        for relative, expected in files.items():
            path = models_dir / relative
            if not path.is_file():
                problems.append(f"{relative} is missing")
            elif path.stat().st_size != expected["size"]:
                size = path.stat().st_size
                problems.append(f"{relative} has {size} bytes, not {expected['size']}")
            elif verify_checksums and sha256(path) != expected["sha256"]:
                problems.append(f"{relative} has another sha256 than the one logged ({name})")
    if problems:
        shown = "; ".join(problems[:10])
        if len(problems) > 10:
            shown += f"; and {len(problems) - 10} more"
        raise FileNotFoundError(
            f"the base models under {models_dir} are not those this model was logged with "
            f"(set $CAMEO_MODELS to the right folder): {shown}"
        )
