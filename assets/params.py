"""params.yaml: the article's values, the active profile's overrides, validated up front.

Each top-level section has a schema: a frozen dataclass registered with `@params_section`.
The dataset's sections are registered here; other modules (training, serving, evaluation)
register theirs the same way. `load_params` checks the whole file with its profile applied
(types, ranges, unknown keys, cross-field rules) and raises one ParamsError listing every
problem, so nonsense is found before any stage runs. Sections nobody registered are passed
through with a warning.
"""

from __future__ import annotations

import difflib
import importlib
import os
import types
import warnings
from collections.abc import Callable, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from perception.pose import DEFAULT_MODEL as DEFAULT_POSE_MODEL

PROFILES = ("tiny", "full")
TOP_LEVEL = ("profile", "profiles")  # keys that are not sections

SECTIONS: dict[str, type] = {}
# Sections whose schema lives with the code that reads them: imported (which registers the
# schema) when the file has the section, so every load validates them.
SCHEMA_MODULES = {
    "training": "training.train",
    "evaluation": "training.evaluate",
    "serving": "serving.schema",
    "kubernetes": "training.submit",
}
T = TypeVar("T")


class ParamsError(ValueError):
    """params.yaml breaks its schema; the message lists every problem."""


class UnvalidatedSectionsWarning(UserWarning):
    """Top-level sections without a registered schema (e.g. another module's)."""


def params_section(name: str) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as the schema of params.yaml's section `name`.

    Fields need defaults; `param(...)` adds bounds; an optional `problems(self) -> list[str]`
    method states cross-field rules.
    """

    def register(cls: type[T]) -> type[T]:
        if name in TOP_LEVEL:
            raise ValueError(f"{name!r} is reserved in params.yaml")
        SECTIONS[name] = cls
        return cls

    return register


def param(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with bounds that validation enforces."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(default=default, metadata={"bounds": bounds})


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def _type_problem(value: Any, hint: Any) -> str:
    """Why `value` does not fit the annotation `hint` ('' when it does)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = get_args(hint)
        if any(not _type_problem(value, option) for option in options):
            return ""
        return f"expected {' or '.join(_type_name(o) for o in options)}"
    if hint is type(None):
        return "" if value is None else "expected null"
    if hint is bool:
        return "" if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return "" if ok else f"expected an integer, got {value!r}"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return "" if ok else f"expected a number, got {value!r}"
    if hint is str:
        return "" if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return f"expected a list, got {value!r}"
        item = (get_args(hint) or (Any,))[0]
        for v in value:
            if item is not Any and (problem := _type_problem(v, item)):
                return f"item {v!r}: {problem}"
    return ""


def _type_name(hint: Any) -> str:
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def validate_section(name: str, values: Any, cls: type[T]) -> tuple[T | None, list[str]]:
    """The section as its dataclass, or None and every problem found."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        return None, [f"{name}: expected a mapping of settings, got {values!r}"]
    problems = []
    known = {f.name: f for f in fields(cls)}
    hints = get_type_hints(cls)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{name}.{key}: unknown key{hint}; known: {', '.join(known)}")
    for key, f in known.items():
        if key not in values:
            if f.default is MISSING and f.default_factory is MISSING:
                problems.append(f"{name}.{key}: missing")
            continue
        value = values[key]
        if problem := _type_problem(value, hints[key]):
            problems.append(f"{name}.{key}: {problem}")
            continue
        for bound, limit in f.metadata.get("bounds", {}).items():
            if not _BOUND_OK[bound](value, limit):
                problems.append(f"{name}.{key}: must be {_BOUND_TEXT[bound]} {limit}, got {value}")
    if problems:
        return None, problems
    instance = cls(**{k: v for k, v in values.items() if k in known})
    cross = getattr(instance, "problems", None)
    found = [f"{name}: {p}" for p in cross()] if cross else []
    return (None, found) if found else (instance, [])


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
        raise ParamsError(f"unknown profile {chosen!r}; expected one of {', '.join(PROFILES)}")
    return chosen


def definition_profile() -> str:
    """The profile the Dagster code location is loaded with, for what it shows (kinds):
    CAMEO_PROFILE, else `profile` in $CAMEO_PARAMS (default params.yaml), else tiny."""
    path = Path(os.environ.get("CAMEO_PARAMS", "params.yaml"))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else {}
        return resolve_profile(raw if isinstance(raw, Mapping) else {})
    except (yaml.YAMLError, ParamsError):
        return "tiny"  # the run itself reports the problem when it loads the params


def _apply_profile(raw: Mapping[str, Any], profile: str) -> tuple[dict[str, Any], list[str]]:
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, Mapping):
        return dict(raw), [f"profiles: expected a mapping of profile names, got {profiles!r}"]
    problems = [
        f"profiles.{name}: unknown profile; expected one of {', '.join(PROFILES)}"
        for name in profiles
        if name not in PROFILES
    ]
    overrides = profiles.get(profile) or {}
    if not isinstance(overrides, Mapping):
        return dict(raw), [*problems, f"profiles.{profile}: expected a mapping of sections"]
    merged = _merge({k: v for k, v in raw.items() if k != "profiles"}, overrides)
    merged["profile"] = profile
    return merged, problems


def validate_params(merged: Mapping[str, Any]) -> tuple[dict[str, Any], list[str], list[str]]:
    """Check every registered section of profile-merged params.

    Returns the params with each registered section complete (defaults filled in), the
    problems, and the top-level sections that have no schema.
    """
    result = dict(merged)
    problems: list[str] = []
    for name, module in SCHEMA_MODULES.items():
        if name in merged and name not in SECTIONS:
            importlib.import_module(module)
    for name, cls in SECTIONS.items():
        instance, found = validate_section(name, merged.get(name), cls)
        problems += found
        if instance is not None:
            result[name] = asdict(instance)
    unvalidated = sorted(k for k in merged if k not in SECTIONS and k not in TOP_LEVEL)
    return result, problems, unvalidated


def load_params(path: str | Path, profile: str | None = None) -> dict[str, Any]:
    """Load params.yaml, apply the active profile's overrides, validate every section.

    The result has the same sections as the file (registered ones complete), `profile` set
    to the active one and no `profiles` table. Raises ParamsError listing every problem,
    in the active profile and in the other profiles' overrides.
    """
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    active = resolve_profile(raw, profile)
    problems: list[str] = []
    params: dict[str, Any] = {}
    unvalidated: list[str] = []
    for name in (active, *(p for p in PROFILES if p != active)):
        merged, found = _apply_profile(raw, name)
        checked, invalid, skipped = validate_params(merged)
        if name == active:
            params, unvalidated = checked, skipped
            problems += found + invalid
        else:  # the other profile's overrides are checked too, but reported once
            problems += [f"{p} (with profile {name})" for p in invalid if p not in problems]
    if problems:
        unique = list(dict.fromkeys(problems))
        raise ParamsError(
            f"{path} (profile {active}) has {len(unique)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in unique)
        )
    if unvalidated:
        warnings.warn(
            f"{path}: sections without a registered schema, not validated here: "
            + ", ".join(unvalidated),
            UnvalidatedSectionsWarning,
            stacklevel=2,
        )
    return params


# The dataset's sections. A stage reads its section as one of these.


@params_section("images")
@dataclass(frozen=True)
class ImagesParams:
    # Decode limit for every single image and movie frame; larger ones are refused with a
    # recorded reason (a PNG can declare 100 000 px a side in a few bytes).
    max_pixels: int = param(40_000_000, ge=1)


@params_section("frames")
@dataclass(frozen=True)
class FramesParams:
    stride: int = param(50, ge=1)
    jpeg_quality: int = param(95, ge=1, le=100)


@params_section("faces")
@dataclass(frozen=True)
class FacesParams:
    model: str = "antelopev2"
    det_size: int = param(640, ge=32)
    det_thresh: float = param(0.5, ge=0.0, le=1.0)
    min_face_px: int = param(24, ge=0)


@params_section("characters")
@dataclass(frozen=True)
class CharactersParams:
    similarity_threshold: float = param(0.5, ge=-1.0, le=1.0)
    min_frames: int = param(5, ge=1)
    max_frames: int = param(200, ge=1)

    def problems(self) -> list[str]:
        if self.min_frames > self.max_frames:
            return [f"min_frames ({self.min_frames}) > max_frames ({self.max_frames})"]
        return []


@params_section("masks")
@dataclass(frozen=True)
class MasksParams:
    model: str = "sam"
    person_box_prompt: bool = False  # article Note 1
    person_detector: str = "grounding-dino"
    min_area_fraction: float = param(0.01, ge=0.0, le=1.0)
    max_area_fraction: float = param(0.95, ge=0.0, le=1.0)

    def problems(self) -> list[str]:
        if self.min_area_fraction >= self.max_area_fraction:
            return [
                f"min_area_fraction ({self.min_area_fraction}) >= "
                f"max_area_fraction ({self.max_area_fraction})"
            ]
        return []


@params_section("poses")
@dataclass(frozen=True)
class PosesParams:
    model: str = DEFAULT_POSE_MODEL
    score_threshold: float = param(0.3, ge=0.0, le=1.0)
    # keypoints above the threshold for a pose to count as found (of 133)
    min_keypoints: int = param(5, ge=0, le=133)


@params_section("captions")
@dataclass(frozen=True)
class CaptionsParams:
    model: str = "InternVL2-26B"
    prompt_version: str = "caption_v1"
    min_words: int = param(100, ge=1)
    max_words: int = param(150, ge=1)
    batch_size: int = param(8, ge=1)

    def problems(self) -> list[str]:
        if self.min_words > self.max_words:
            return [f"min_words ({self.min_words}) > max_words ({self.max_words})"]
        return []


@params_section("references")
@dataclass(frozen=True)
class ReferencesParams:
    padding: float = param(0.05, ge=0.0, le=1.0)  # fraction of the mask box on each side
    background: int = param(255, ge=0, le=255)  # grey level outside the mask


@params_section("triplets")
@dataclass(frozen=True)
class TripletsParams:
    seed: int = param(0, ge=0)
