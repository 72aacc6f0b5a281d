"""A small declarative checker for the mappings people write by hand.

project.yml, the startup JSON files and the app configs are all edited by
people, so every error must name the file, the key and what would be right.
One checker serves all of them so the messages read the same everywhere.
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Check = Callable[[Any], str | None]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
"""Both are used with ``fullmatch``: ``$`` would let a trailing newline through."""
MAX_SHOWN = 80
WEEK_S = 7 * 24 * 3600.0
"""The longest interval or timeout a kit may set: longer means "never", which no timing of
the federation should, and the seconds stay within the wire's 32-bit fields."""


class _AsWritten(reprlib.Repr):
    """Spells ``true``, ``false`` and ``null`` as the JSON or YAML file that held them does,
    not as Python's ``True``, ``False`` and ``None``."""

    def repr_bool(self, value: bool, level: int) -> str:
        return "true" if value else "false"

    def repr_NoneType(self, value: None, level: int) -> str:
        return "null"


_SHORT_REPR = _AsWritten()
"""Never walks more of a value than a message shows (a value may be a billion-laughs list)."""
_SHORT_REPR.maxlevel, _SHORT_REPR.maxstring, _SHORT_REPR.maxother = 3, MAX_SHOWN, MAX_SHOWN


class ConfigError(ValueError):
    """Something a person wrote is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class Field:
    """One allowed key of a mapping."""

    name: str
    kind: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    check: Check | None = None


_KIND_WORDS: dict[type, str] = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
}


def _describe(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_WORDS.get(k, k.__name__) for k in kinds)


def _matches(value: Any, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def parse_mapping(data: object, fields: Sequence[Field], where: str) -> dict[str, Any]:
    """Check ``data`` against ``fields`` and return it with defaults filled in.

    Raises ConfigError for a non-mapping, an unknown key, a missing required
    key, a value of the wrong type, or a value its check refuses.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_typename(data)}")
    allowed = {f.name: f for f in fields}
    for key in data:
        if key not in allowed:
            names = ", ".join(sorted(allowed))
            raise ConfigError(f"{where}: unknown key {shown(key)} (allowed keys: {names})")
    out: dict[str, Any] = {}
    for f in fields:
        if f.name not in data:
            if f.required:
                raise ConfigError(f"{where}: missing required key {f.name!r}")
            out[f.name] = f.default
            continue
        value = data[f.name]
        if not _matches(value, f.kind):
            raise ConfigError(
                f"{where}: {f.name!r} must be {_describe(f.kind)}, got {shown(value)}"
            )
        if isinstance(value, int) and not isinstance(value, bool) and f.kind is float:
            try:
                value = float(value)
            except OverflowError:  # 400 digits: no float holds it
                value = math.inf
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {f.name!r} must be a finite number, got {shown(value)}")
        if f.check is not None and value is not None:
            problem = f.check(value)
            if problem:
                raise ConfigError(f"{where}: {f.name!r} {problem}, got {shown(value)}")
        out[f.name] = value
    return out


def shown(value: object) -> str:
    """``repr(value)``, cut short: a message names a value, it never dumps one."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[: MAX_SHOWN - 1]}…"


def _typename(value: object) -> str:
    return _KIND_WORDS.get(type(value), type(value).__name__)


def in_range(low: float, high: float) -> Check:
    """Accept numbers in [low, high]."""

    def check(value: Any) -> str | None:
        return None if low <= value <= high else f"must be between {low:g} and {high:g}"

    return check


def at_least(low: float) -> Check:
    """Accept numbers >= low."""

    def check(value: Any) -> str | None:
        return None if value >= low else f"must be at least {low:g}"

    return check


def one_of(*choices: object) -> Check:
    """Accept one of a few words."""

    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(map(str, choices))}"

    return check


def name_like(value: Any) -> str | None:
    """Names become file names, certificate CNs and instance names."""
    if NAME_RE.fullmatch(value):
        return None
    return "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"


def email_like(value: Any) -> str | None:
    """Admin names are emails, as in their certificate CN."""
    return None if EMAIL_RE.fullmatch(value) else "must be an email address like name@example.org"


def non_empty(value: Any) -> str | None:
    """Refuse empty strings and lists."""
    return None if len(value) else "must not be empty"


PORT = in_range(1, 65535)
