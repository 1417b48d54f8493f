"""Settings machinery: strict pydantic sections, layered sources, readable errors, commented YAML.

Sources, later wins: model defaults -> ``--config FILE`` (YAML, JSON or TOML) -> ``--set a.b=value``
(repeatable; the value is parsed as YAML and then typed by the model) -> explicit command-line flags.
Unknown keys are errors, and every error names the key, the bad value and what is allowed.

Rules every setting follows (tests/foundation/test_settings.py, tests/faults/test_faults_settings.py):

* Files and ``--set`` values are read safely (``sources``): UTF-8 text only, at most
  ``MAX_FILE_BYTES``, no duplicate keys, and a YAML document whose aliases expand past
  ``MAX_VALUES`` values ("billion laughs") or refer to themselves is refused before anything walks it.
* An error shows at most ``MAX_SHOWN`` characters of a value, so a huge value is never echoed.
* Numbers are finite and integers fit in 64 bits; anything else is an error, not a late crash.
* An empty value (``--set key=`` or ``key: null``) means none: it sets a field that accepts null to
  null and is an error for a field that needs a value.
* List settings: one value given where a list is expected is a list of that one value, and for a
  per-axis or per-level list (``geometry.spacing``, ``model.num_res_blocks``, ``augment.flip``) it
  applies to every axis or level. Lists whose *length* is the setting (``PerLevelInts``, e.g.
  ``model.channels``: one width per level, so the length is the number of levels) refuse a
  single value: ``channels: 16`` would silently build a one-level network; ``[16]`` says so.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

from .sources import (  # noqa: F401 - re-exported: the settings machinery's public names
    MAX_FILE_BYTES,
    MAX_SHOWN,
    MAX_VALUES,
    SettingsError,
    clip_text,
    deep_merge,
    expanded_size,
    parse_override,
    read_settings_file,
    set_path,
    shown,
)

M = TypeVar("M", bound=BaseModel)
INT64 = 2**63 - 1


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors, assignments are validated,
    numbers are finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False,
                              allow_inf_nan=False)


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


def _per_level(value: Any) -> Any:
    """Like ``_csv``, but a single value is refused: the list's length is the number of levels."""
    listed = _csv(value)
    single = isinstance(value, (int, float)) or (isinstance(value, str) and isinstance(listed, list) and len(listed) == 1)
    if single:
        one = listed[0] if isinstance(value, str) else value
        raise PydanticCustomError(
            "per_level", "takes one value per level as a list; a single number would silently build a "
            "one-level network (write [{value}] if that is meant)", {"value": shown(one, 20).strip("'")})
    return listed


IntTuple = Annotated[tuple[int, ...], BeforeValidator(_csv)]
FloatTuple = Annotated[tuple[float, ...], BeforeValidator(_csv)]
# a list whose length is the setting (one width per level): a single value is an error, not [value]
PerLevelInts = Annotated[tuple[int, ...], BeforeValidator(_per_level)]


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


# text where empty means none: "", "  " and null are all stored as None
OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]


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
    _check_integers(tree, ())
    try:
        return model.model_validate(tree)
    except ValidationError as err:
        raise SettingsError(format_validation_error(err, model)) from None


def _check_integers(tree: Any, path: tuple[str, ...]) -> None:
    """Refuse integers beyond 64 bits (they would overflow in torch or numpy much later)."""
    stack = [(tree, path)]
    while stack:
        value, where = stack.pop()
        if isinstance(value, dict):
            stack += [(v, (*where, str(k))) for k, v in value.items()]
        elif isinstance(value, (list, tuple)):
            stack += [(v, where) for v in value]
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
            raise SettingsError(f"invalid settings: '{'.'.join(where)}' = {shown(value)}: out of range "
                                f"(integers must lie within -{INT64:,}..{INT64:,})")


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
        if is_per_level(args[1:]):
            return f"a list of {_plural(get_args(args[0])[0])}, one per level"
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


def is_per_level(metadata: typing.Iterable[Any]) -> bool:
    """Whether a field's pydantic ``metadata`` (or an Annotated type's extras) marks it ``PerLevelInts``."""
    return any(getattr(m, "func", None) is _per_level for m in metadata)


def _describe_field(info: Any) -> str:
    """``describe_allowed`` of a field (pydantic keeps an Annotated type's validators in ``metadata``)."""
    if is_per_level(info.metadata):
        return f"a list of {_plural(get_args(info.annotation)[0])}, one per level"
    return describe_allowed(info.annotation)


def _plural(annotation: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(annotation, describe_allowed(annotation))


def format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    """One line per bad key: the key, the value (cut to ``MAX_SHOWN`` characters), why, and what is allowed."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic appends the union member / tuple index to loc; keep only the key path
        key_loc = tuple(p for p in loc if isinstance(p, str) and not p[:1].isupper() and p not in {"int", "float", "str", "bool", "list", "tuple", "literal", "none"})
        key = clip_text(".".join(key_loc), 100)
        value = e.get("input")
        msg = clip_text(e["msg"].removeprefix("Value error, "))
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
        allowed = f" (allowed: {_describe_field(info)})" if info is not None else ""
        if value is None:
            lines.append(f"'{key}' is empty, but it needs a value{allowed}")
            continue
        if e["type"] == "per_level" and info is not None and info.default:
            msg = msg.replace("as a list", f"as a list, e.g. {list(info.default)}", 1)
        lines.append(f"'{key}' = {shown(value)}: {msg}{allowed}")
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
