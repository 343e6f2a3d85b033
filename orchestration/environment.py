"""Keep every tool's state inside the repo (or the given folders) and telemetry off."""

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
