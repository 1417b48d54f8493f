"""Settings machinery: strict pydantic sections, layered sources, readable errors, commented YAML.

Sources, later wins: model defaults -> ``--config FILE`` (YAML, JSON or TOML) -> ``--set a.b=value``
(repeatable; the value is parsed as YAML and then typed by the model) -> explicit command-line flags.
Unknown keys are errors, and every error names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ..errors import UsageError

M = TypeVar("M", bound=BaseModel)


class SettingsError(UsageError):
    """A settings file, ``--set`` override or flag is wrong; the message says which and why."""


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)


def _csv(value: Any) -> Any:
    """Accept "64,64" or "64x64" (from --set or a flag) where a tuple is expected."""
    if isinstance(value, str):
        text = value.strip().strip("()[]")
        if not text:
            return None
        return [v.strip() for v in text.replace("x", ",").split(",") if v.strip()]
    if isinstance(value, (int, float)):
        return [value]
    return value


IntTuple = Annotated[tuple[int, ...], BeforeValidator(_csv)]
FloatTuple = Annotated[tuple[float, ...], BeforeValidator(_csv)]


# ----------------------------------------------------------------------------------------- sources
def read_settings_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML, JSON or TOML settings file into a dict."""
    path = Path(path)
    if not path.is_file():
        raise SettingsError(f"settings file {path} does not exist.")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0]
        raise SettingsError(f"settings file {path} could not be parsed ({first}).") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of keys to values, not {type(data).__name__}.")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SettingsError(f"--set {text!r} is not of the form key.path=value (e.g. --set optim.lr=3e-4).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    model: type[M],
    config: Path | str | None = None,
    overrides: typing.Iterable[str] = (),
    flags: dict[str, Any] | None = None,
) -> M:
    """Build settings from defaults, a file, ``--set`` overrides and flags (later wins).

    Args:
        model: the step's settings class.
        config: optional YAML/JSON/TOML file.
        overrides: ``key.path=value`` strings.
        flags: explicit command-line flags as ``{"key.path": value}``; None values are skipped.
    """
    tree: dict[str, Any] = read_settings_file(config) if config else {}
    for text in overrides:
        path, value = parse_override(text)
        set_path(tree, path, value)
    for key, value in (flags or {}).items():
        if value is not None:
            set_path(tree, key.split("."), value)
    return validate_settings(model, tree)


def validate_settings(model: type[M], tree: dict[str, Any]) -> M:
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise SettingsError(format_validation_error(err, model)) from None


# ------------------------------------------------------------------------------------------ errors
def _model_at(model: type[BaseModel], path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The settings section at ``path`` (a tuple of keys), or None when the path leaves the model."""
    current: type[BaseModel] | None = model
    for part in path:
        if current is None or part not in current.model_fields:
            return None
        current = _submodel(current.model_fields[part].annotation)
    return current


def _field_at(model: type[BaseModel], path: tuple[Any, ...]) -> Any:
    parent = _model_at(model, path[:-1]) if path else None
    return parent.model_fields.get(path[-1]) if parent is not None else None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def describe_allowed(annotation: Any) -> str:
    """A short human description of what a field accepts."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is Annotated:
        return describe_allowed(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [describe_allowed(a) for a in args if a is not type(None)]
        text = " or ".join(parts)
        return text + (" or null" if type(None) in args else "")
    if origin is tuple:
        return f"a list of {_plural(args[0])} (e.g. 64,64)" if args else "a list"
    if origin is list:
        return f"a list of {_plural(args[0])}" if args else "a list"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "a section with keys " + ", ".join(annotation.model_fields)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


def _plural(annotation: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(annotation, describe_allowed(annotation))


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic appends the union member / tuple index to loc; keep only the key path
        key_loc = tuple(p for p in loc if isinstance(p, str) and not p[:1].isupper() and p not in {"int", "float", "str", "bool", "list", "tuple", "literal", "none"})
        key = ".".join(key_loc)
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _model_at(model, key_loc[:-1])
            allowed = ", ".join(parent.model_fields) if parent is not None else ""
            lines.append(f"unknown key '{key}'" + (f"; allowed here: {allowed}" if allowed else ""))
            continue
        if not key_loc or isinstance(value, dict):
            # a cross-field rule of a whole section: its message names the keys
            lines.append(msg)
            continue
        info = _field_at(model, key_loc)
        allowed = f" (allowed: {describe_allowed(info.annotation)})" if info is not None else ""
        lines.append(f"'{key}' = {value!r}: {msg}{allowed}")
    # the same key can fail once per union member: keep the first message for each
    seen, unique = set(), []
    for line in lines:
        head = line.split(":")[0]
        if head not in seen:
            seen.add(head)
            unique.append(line)
    return "invalid settings: " + "; ".join(unique)


# ------------------------------------------------------------------------------------- YAML output
def settings_to_yaml(settings: BaseModel, comments: bool = True) -> str:
    """Render settings as YAML; with comments, each key is preceded by its field description."""
    data = settings.model_dump(mode="json")
    if not comments:
        return yaml.safe_dump(data, sort_keys=False)
    return "\n".join(_yaml_lines(type(settings), data, 0)) + "\n"


def _yaml_scalar(value: Any) -> str:
    """One value in YAML flow style, on one line."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _yaml_lines(model: type[BaseModel], data: dict[str, Any], indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    for name, info in model.model_fields.items():
        value = data.get(name)
        if info.description:
            for text in info.description.splitlines():
                lines.append(f"{pad}# {text}")
        sub = _submodel(info.annotation)
        if sub is not None and isinstance(value, dict):
            if indent == 0 and lines and lines[-1] != "":
                lines.insert(len(lines) - (len(info.description.splitlines()) if info.description else 0), "")
            lines.append(f"{pad}{name}:")
            lines.extend(_yaml_lines(sub, value, indent + 1))
        else:
            lines.append(f"{pad}{name}: {_yaml_scalar(value)}")
    return lines
