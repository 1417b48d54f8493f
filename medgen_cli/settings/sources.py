"""Reading settings sources safely: YAML/JSON/TOML files and ``--set key.path=value`` overrides.

A settings file is untrusted text. It is read as UTF-8 (a BOM is allowed), at most
``MAX_FILE_BYTES``, with ``yaml.safe_load`` that also refuses duplicate keys; a YAML document whose
aliases expand past ``MAX_VALUES`` values (the "billion laughs" bomb: 1 KB that expands to 10**9
strings) or refer to themselves is refused before anything walks it, in microseconds
(``expanded_size`` counts each shared part once per use without copying it). Errors quote at most
``MAX_SHOWN`` characters of any value (``shown``).
"""

from __future__ import annotations

import json
import reprlib
import tomllib
from pathlib import Path
from typing import Any

import yaml

from ..errors import UsageError

MAX_SHOWN = 60  # characters of a bad value shown in an error
MAX_FILE_BYTES = 16 * 2**20  # a settings file larger than this is refused unread
MAX_VALUES = 1_000_000  # values (scalars, keys, lists) of a settings document once aliases are expanded


class SettingsError(UsageError):
    """A settings file, ``--set`` override or flag is wrong; the message says which and why."""


# ------------------------------------------------------------------------------------------ showing
_repr = reprlib.Repr()
_repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxtuple, _repr.maxdict, _repr.maxlevel = (
    MAX_SHOWN, MAX_SHOWN, 8, 8, 4, 3)


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters + "..." (never walks more of a huge value than it shows)."""
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def clip_text(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ----------------------------------------------------------------------------------------- sources
class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """``yaml.safe_load`` that refuses duplicate keys (the second would silently win)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:  # before merging "<<:" keys, which may repeat keys on purpose
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = self.construct_object(key_node)
                    if key in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {shown(key)}", key_node.start_mark)
                    seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _children(value: Any) -> Any:
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    return value if isinstance(value, (list, tuple)) else None


def expanded_size(value: Any, limit: int = MAX_VALUES) -> int:
    """Number of values in ``value`` counting a shared (aliased) part once per use.

    Linear in the number of *distinct* containers, so a billion-laughs document is measured in
    microseconds. Raises ``ValueError`` past ``limit`` or when a container holds itself.
    """
    if _children(value) is None:
        return 1
    done: dict[int, int] = {}
    active = {id(value)}
    stack = [[value, iter(_children(value)), 1]]
    end = object()
    while stack:
        frame = stack[-1]
        child = next(frame[1], end)
        if child is end:
            stack.pop()
            active.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > limit:
                    raise ValueError(f"it expands to more than {limit:,} values")
            continue
        kids = _children(child)
        if kids is None:
            frame[2] += 1
        elif id(child) in done:
            frame[2] += done[id(child)]
        elif id(child) in active:
            raise ValueError("an alias refers to the value that contains it")
        else:
            active.add(id(child))
            stack.append([child, iter(kids), 1])
        if frame[2] > limit:
            raise ValueError(f"it expands to more than {limit:,} values")
    return done[id(value)]


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_settings_file(path: Path | str) -> dict[str, Any]:
    """Read a YAML, JSON or TOML settings file into a dict (safely: see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise SettingsError(f"settings file {path} does not exist.")
    if not path.is_file():
        raise SettingsError(f"settings file {path} is not a file; give a YAML, JSON or TOML file.")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise SettingsError(f"settings file {path} is {size / 2**20:.0f} MiB; settings files are at most "
                                f"{MAX_FILE_BYTES // 2**20} MiB (list many inputs as a directory or a glob pattern).")
        raw = path.read_bytes()
    except OSError as err:
        raise SettingsError(f"settings file {path} cannot be read ({err.strerror or err}).") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SettingsError(f"settings file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                            f"{err.start}); save it as UTF-8.") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        elif suffix == ".toml":
            data = tomllib.loads(text)
        else:
            data = _load_yaml(text)
    except (ValueError, yaml.YAMLError) as err:  # JSON/TOML errors, and e.g. Python's 4300-digit int limit
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, yaml.MarkedYAMLError) and err.problem:
            mark = err.problem_mark
            first = err.problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark else "")
        raise SettingsError(f"settings file {path} could not be parsed ({clip_text(first, 200)}).") from None
    except RecursionError:
        raise SettingsError(f"settings file {path} is nested too deeply to be settings.") from None
    try:
        expanded_size(data)
    except ValueError as err:
        raise SettingsError(f"settings file {path} is refused: {err}; write the values out instead of "
                            "repeating YAML aliases.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of keys to values, not {type(data).__name__}.")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value parsed as YAML); an empty value is None (none)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise SettingsError(f"--set {shown(text)} is not of the form key.path=value (e.g. --set optim.lr=3e-4).")
    try:
        value = _load_yaml(raw) if raw.strip() else None
        expanded_size(value)
    except yaml.YAMLError:
        value = raw
    except (ValueError, RecursionError) as err:
        raise SettingsError(f"--set {shown(key)}=... is refused: {err}.") from None
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
