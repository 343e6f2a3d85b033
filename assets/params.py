"""Reading params.yaml: the article's values, with the active profile's overrides merged in."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("tiny", "full")


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_profile(params: Mapping[str, Any], profile: str | None = None) -> str:
    """The explicit argument wins, then CAMEO_PROFILE, then params.yaml's `profile`."""
    chosen = profile or os.environ.get("CAMEO_PROFILE") or params.get("profile", "tiny")
    if chosen not in PROFILES:
        raise ValueError(f"unknown profile {chosen!r}; expected one of {', '.join(PROFILES)}")
    return chosen


def load_params(path: str | Path, profile: str | None = None) -> dict[str, Any]:
    """Load params.yaml and apply the overrides of the active profile.

    The result has the same sections as the file, `profile` set to the active one and no
    `profiles` table.
    """
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    active = resolve_profile(raw, profile)
    overrides = raw.get("profiles", {}).get(active, {})
    params = _merge({k: v for k, v in raw.items() if k != "profiles"}, overrides)
    params["profile"] = active
    return params
