"""Which environment runs the code (CAMEO_ENV: `local`, the default, or `k8s`); keep every
tool's state inside the repo (or the given folders) and telemetry off."""

from __future__ import annotations

import os
from pathlib import Path

TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

ENVIRONMENT_VARIABLE = "CAMEO_ENV"


def cameo_environment() -> str:
    """`local` (a run's steps on this machine) or `k8s` (each step a Kubernetes Job, data
    and checkpoints on the pods' volumes)."""
    return os.environ.get(ENVIRONMENT_VARIABLE, "local")


DAGSTER_YAML = (
    "# Local Dagster instance (SQLite under this folder).\ntelemetry:\n  enabled: false\n"
)


def configure_local_environment(home: Path | None = None) -> Path:
    """Set telemetry off and DAGSTER_HOME (default ./.dagster); return DAGSTER_HOME."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)
    dagster_home = Path(os.environ.get("DAGSTER_HOME") or home or ".dagster").resolve()
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    os.environ.setdefault("MPLCONFIGDIR", str(dagster_home.parent / ".cache" / "matplotlib"))
    return dagster_home
