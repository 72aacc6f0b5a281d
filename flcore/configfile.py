"""Reading the JSON and YAML files people write, with bounds checked before parsing.

A config file may come from a peer (an uploaded app) or from an editor in a
hurry, and a parser given a hostile one can use seconds and gigabytes: a
billion-laughs YAML (anchors whose aliases expand a thousandfold per level),
JSON nested a million deep, a 100 MB file. So every reader here checks the
file's size before it reads it, JSON nesting before ``json.loads`` and YAML
nesting while composing, and YAML alias expansion after composing, before a
single Python object is built. Every failure is a :class:`ConfigError`
naming the file.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from flcore.schema import ConfigError

MAX_CONFIG_BYTES = 1024 * 1024
"""No hand-written config comes near this (a project.yml of 5,000 sites is about 400 KB)."""
MAX_DEPTH = 32
"""Deepest nesting of lists and mappings a config may have; the real ones use 4."""
MAX_YAML_VALUES = 100_000
"""Most values a YAML document may have once its aliases are expanded."""

_JSON_BRACKET = re.compile(r"[\[\]{}]")


def read_bounded(path: Path, limit: int = MAX_CONFIG_BYTES, where: str | None = None) -> bytes:
    """The bytes of ``path``, refused before reading when it holds more than ``limit``.

    ``where`` names the file in the message (default: the path).

    The size is checked twice: by ``fstat`` (a plain file) and by reading at
    most one byte more than allowed (a FIFO or a file still growing).

    Raises:
        ConfigError: the file is too large.
        OSError: it cannot be opened or read (callers word a missing file their way).
    """
    with path.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        shown = max(size, len(data))
        raise ConfigError(
            f"{where or path}: {shown:,} bytes is more than a config file may hold ({limit:,}); "
            "is it the right file?"
        )
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_depth(text: str) -> int:
    """How deeply lists and objects nest in JSON ``text`` (brackets inside strings ignored).

    Escaped backslashes go first, then escaped quotes: every quote left opens
    or closes a string, so the text outside strings is every other piece
    between quotes. (A regular expression matching each string cost ~50 ms
    on a reply with 1,000 clients' rows; this is ~8.)
    """
    plain = text.replace("\\\\", "").replace('\\"', "")
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall("".join(plain.split('"')[::2])):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(
    data: bytes | str, where: str, max_depth: int = MAX_DEPTH, allow_nan: bool = False
) -> Any:
    """Parse JSON ``data``; ``where`` starts every message.

    Refuses, besides invalid JSON, nesting deeper than ``max_depth`` (before
    parsing) and, unless ``allow_nan``, ``NaN``/``Infinity``, which are not
    JSON and which no setting means. Also the reader of JSON that peers send
    (command results, the training child's messages): Python's own parser
    ends in a RecursionError, not a ValueError, on a message nested a
    hundred thousand deep.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    # No more opening brackets than max_depth: no deeper either (spares the scan of the
    # thousand small results of a fan-out, each of which it cost ~15 µs).
    opening = text.count("[") + text.count("{")
    if opening > max_depth and json_depth(text) > max_depth:
        raise ConfigError(f"{where}: nested more than {max_depth} levels deep; not a config file")
    try:
        if allow_nan:
            return json.loads(text)
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:  # JSONDecodeError, a refused constant, an integer of 5,000 digits
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply; not a config file") from None


def load_json(path: Path, where: str | None = None) -> Any:
    """Read and parse the JSON file ``path`` within the bounds above.

    Raises:
        ConfigError: too large, too deep, or not JSON.
        OSError: it cannot be read (a missing file included).
    """
    return parse_json(read_bounded(path), where or str(path))


class BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses deep nesting and alias expansion beyond the bounds above."""

    max_depth = MAX_DEPTH
    max_values = MAX_YAML_VALUES

    def __init__(self, stream: str) -> None:
        """Read ``stream``."""
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Compose one node, refusing nesting beyond ``max_depth`` as it happens."""
        self._depth += 1
        try:
            if self._depth > self.max_depth:
                line = self.get_mark().line + 1
                raise ConfigError(f"line {line}: nested more than {self.max_depth} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        """The document's node, refused when its aliases would expand it too far."""
        node: yaml.Node | None = super().get_single_node()
        if node is not None and expanded_size(node, self.max_values) > self.max_values:
            raise ConfigError(
                f"its anchors and aliases expand to more than {self.max_values:,} values "
                "(a 'billion laughs' document?); write the values out instead"
            )
        return node


def expanded_size(node: yaml.Node, limit: int) -> int:
    """How many nodes ``node`` stands for once every alias is expanded (stops past ``limit``).

    Aliases share their anchor's node, so a memo by node identity makes this
    linear in the composed graph however far it would expand. An anchor comes
    before its aliases in the document, so this walk (in document order)
    meets every aliased node before its aliases: it recurses no deeper than
    the composer did, whose depth :class:`BoundedLoader` bounds.
    """
    sizes: dict[int, int] = {}

    def size(each: yaml.Node) -> int:
        known = sizes.get(id(each))
        if known is not None:
            return known
        sizes[id(each)] = limit + 1  # a node reached again while it is being counted: a cycle
        total = 1
        if isinstance(each, yaml.SequenceNode):
            children: list[yaml.Node] = list(each.value)
        elif isinstance(each, yaml.MappingNode):
            children = [part for pair in each.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        sizes[id(each)] = total
        return total

    return size(node)


def parse_yaml(text: str, where: str, loader: type[BoundedLoader] = BoundedLoader) -> Any:
    """Parse YAML ``text`` with ``loader`` (a :class:`BoundedLoader`); ``where`` starts messages."""
    try:
        return yaml.load(text, Loader=loader)  # noqa: S506  unsafe-ok: a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ValueError as exc:  # a value PyYAML cannot build: a date of month 13, 5,000 digits
        raise ConfigError(f"{where}: not valid YAML ({exc})") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def _at(mark: yaml.Mark | None) -> str:
    return "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """What PyYAML found wrong and where, on one line: its own text names the text as
    ``"<unicode string>"`` and draws a caret under a copy of the line, which one line of
    error flattens into noise."""
    problem = f"{exc.problem or 'cannot be read'}{_at(exc.problem_mark)}"
    if exc.context:
        problem += f" ({exc.context}{_at(exc.context_mark)})"
    return problem
