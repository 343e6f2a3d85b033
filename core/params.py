"""params.yaml: the article's values, the active profile's overrides, validated up front.

Each top-level section is a `Section` (a frozen, strict pydantic model) owned by the package
that reads it; the root model composes the sections at the top (`orchestration.params.Params`).
`load_params` applies the active profile and validates the whole file, then the other
profile's overrides, and raises one ParamsError listing every problem (types, ranges, unknown
keys with the closest known one, cross-field rules), so nonsense is found before anything runs.
Code reads typed attributes: `params.training.learning_rate`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

PROFILES = ("tiny", "full")
Profile = Literal["tiny", "full"]


class ParamsError(ValueError):
    """params.yaml breaks its schema; the message lists every problem."""


class Section(BaseModel):
    """One section of params.yaml: unknown keys refused, no type coercion ("1" is not 1),
    immutable once loaded. Cross-field rules are `model_validator`s raising ValueError."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def parse(cls: type[S], values: Mapping[str, Any] | None, where: str) -> S:
        """`values` as this section, or ParamsError listing every problem under `where`."""
        try:
            return cls.model_validate(dict(values or {}))
        except ValidationError as error:
            problems = describe_errors(error, cls, where)
            raise ParamsError(f"{where} parameters: " + "; ".join(problems)) from None

    def updated(self: S, where: str, **overrides: Any) -> S:
        """A copy with `overrides` (e.g. from the command line), validated like the file."""
        return type(self).parse({**self.model_dump(), **overrides}, where)


S = TypeVar("S", bound=Section)


class ParamsRoot(Section):
    """The base of a composed params file: the active profile and the sections."""

    profile: Profile = "tiny"


R = TypeVar("R", bound=ParamsRoot)

_BOUNDS = {
    "greater_than_equal": ("ge", ">="),
    "greater_than": ("gt", ">"),
    "less_than_equal": ("le", "<="),
    "less_than": ("lt", "<"),
}
_TYPES = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping of settings",
    "model_attributes_type": "a mapping of settings",
}


def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The sub-model a location inside `model` points to, where it is one."""
    for key in path:
        field = model.model_fields.get(str(key)) if isinstance(key, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def describe_errors(error: ValidationError, model: type[BaseModel], where: str = "") -> list[str]:
    """One line per problem, `<section>.<key>: <what is wrong>`, in the file's terms."""
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        kind, value = item["type"], item.get("input")
        name = ".".join(str(p) for p in (where, *loc) if p != "")
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = list(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{name}: unknown key{hint}; known: {', '.join(known)}")
        elif kind in _BOUNDS:
            key, text = _BOUNDS[kind]
            problems.append(f"{name}: must be {text} {item['ctx'][key]}, got {value}")
        elif kind in _TYPES:
            problems.append(f"{name}: expected {_TYPES[kind]}, got {value!r}")
        elif kind == "literal_error":
            problems.append(f"{name}: must be {item['ctx']['expected']}, got {value!r}")
        elif kind == "value_error":  # a cross-field rule of the model at `loc`
            message = str(item["ctx"]["error"])
            problems.append(f"{name}: {message}" if name else message)
        else:
            problems.append(f"{name}: {item['msg']}")
    return problems


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `override` applied, mappings merged key by key."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def resolve_profile(raw: Mapping[str, Any], profile: str | None = None) -> str:
    """The explicit argument wins, then CAMEO_PROFILE, then params.yaml's `profile`."""
    chosen = profile or os.environ.get("CAMEO_PROFILE") or raw.get("profile", "tiny")
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


def apply_profile(raw: Mapping[str, Any], profile: str) -> tuple[dict[str, Any], list[str]]:
    """The file with `profiles.<profile>` merged in and `profile` set, and its problems."""
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
    merged = merge({k: v for k, v in raw.items() if k != "profiles"}, overrides)
    merged["profile"] = profile
    return merged, problems


def parse_params(
    raw: Mapping[str, Any], schema: type[R], profile: str | None = None, source: str = "params"
) -> R:
    """Raw params.yaml content as `schema`, with the active profile applied.

    Every profile's overrides are validated; the problems of all of them come in one
    ParamsError, those of the inactive profile marked `(with profile <name>)`.
    """
    active = resolve_profile(raw, profile)
    problems: list[str] = []
    params: R | None = None
    for name in (active, *(p for p in PROFILES if p != active)):
        merged, found = apply_profile(raw, name)
        try:
            checked = schema.model_validate(merged)
        except ValidationError as error:
            invalid = describe_errors(error, schema)
        else:
            invalid = []
            if name == active:
                params = checked
        if name == active:
            problems += found + invalid
        else:  # the other profile's overrides are checked too, but reported once
            problems += [f"{p} (with profile {name})" for p in invalid if p not in problems]
    if problems or params is None:
        unique = list(dict.fromkeys(problems))
        raise ParamsError(
            f"{source} (profile {active}) has {len(unique)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in unique)
        )
    return params


def load_params(path: str | Path, schema: type[R], profile: str | None = None) -> R:
    """Load params.yaml as `schema` with the active profile applied (see `parse_params`)."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    return parse_params(raw, schema, profile, source=str(path))
