"""The rows of the server's read-only listings, as the server writes and the console reads them.

The server sends each listing (``list_runs``, ``show_run N``, ``list_apps``,
``list_admins``) as JSON in a command reply's data; these records are that
JSON's one definition. The server builds them and turns them into JSON with
``asdict``/:meth:`AdminLine.as_json`; a reader decodes the data once with
``from_json`` and works on the records. Decoding never fails: a field that
is missing or of the wrong type (a server of another version) reads as
empty, so a listing shows what it can.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

JSON = Mapping[str, Any]
"""A JSON object as ``json.loads`` gives it, before it is decoded."""


def _text(data: JSON, key: str) -> str:
    value = data.get(key)
    return "" if value is None else str(value)


def _number(data: JSON, key: str) -> float:
    value = data.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _count(data: JSON, key: str) -> int:
    value = data.get(key)
    if isinstance(value, float):
        return int(value) if math.isfinite(value) else 0  # 1e999 in the JSON reads as infinity
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _flag(data: JSON, key: str) -> bool:
    return bool(data.get(key))


_READERS: dict[str, Callable[[JSON, str], object]] = {
    "str": _text,
    "int": _count,
    "float": _number,
    "bool": _flag,
}
Flat = TypeVar("Flat", bound="DataclassInstance")


def _flat(record: type[Flat], data: JSON) -> Flat:
    """A dataclass of text, numbers and flags, each field read by its type under its name."""
    return record(**{f.name: _READERS[str(f.type)](data, f.name) for f in fields(record)})


def _objects(data: JSON, key: str) -> list[JSON]:
    value = data.get(key)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _object(data: JSON, key: str) -> JSON:
    value = data.get(key)
    return value if isinstance(value, Mapping) else {}


def _metrics(data: JSON) -> dict[str, float]:
    return {
        str(name): float(value)
        for name, value in _object(data, "metrics").items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


@dataclass(frozen=True)
class PageCount:
    """Which page a listing is, of how many, and how many items there are in all."""

    page: int = 1
    pages: int = 1
    total: int | None = None
    """None when the reply did not say."""

    @classmethod
    def from_json(cls, data: JSON) -> PageCount:
        """The page a reply's data says it is."""
        total = data.get("total")
        return cls(
            page=max(_count(data, "page"), 1),
            pages=max(_count(data, "pages"), 1),
            total=int(total) if isinstance(total, int) and not isinstance(total, bool) else None,
        )


@dataclass(frozen=True)
class RunLine:
    """One run as ``list_runs`` shows it."""

    run_number: int
    app: str
    rounds: str
    """Rounds trained of the run's rounds: ``3/10``."""
    status: str
    ending: str
    best: str
    started_at: float
    """When the run first started (a continuation after a stop keeps it)."""
    ended_at: float
    resumed_at: float = 0.0
    """When the run last continued after it stopped before its end (0: it never did; also
    what an older server's reply gives)."""

    @classmethod
    def from_json(cls, data: JSON) -> RunLine:
        """A run as the reply's data has it."""
        return _flat(cls, data)


@dataclass(frozen=True)
class SiteResult:
    """What one site sent for one round: its sample count and its metrics."""

    samples: int
    metrics: dict[str, float]

    @classmethod
    def from_json(cls, data: JSON) -> SiteResult:
        """A site's result as the reply's data has it."""
        return cls(_count(data, "samples"), _metrics(data))


@dataclass
class RoundLine:
    """One round of a run: the weighted metrics and what each site sent."""

    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    final: bool = False
    sites: dict[str, SiteResult] = field(default_factory=dict)
    """By instance."""

    @classmethod
    def from_json(cls, data: JSON) -> RoundLine:
        """A round as the reply's data has it."""
        return cls(
            round=_count(data, "round"),
            metrics=_metrics(data),
            seconds=_number(data, "seconds"),
            final=_flag(data, "final"),
            sites={
                str(site): SiteResult.from_json(result)
                for site, result in _object(data, "sites").items()
                if isinstance(result, Mapping)
            },
        )


@dataclass(frozen=True)
class AppLine:
    """An uploaded app: its size, files and content hash."""

    name: str
    size: int
    files: int
    sha256: str
    """The digest sites approve the app by (:mod:`flcore.appreview`)."""
    uploaded_at: float

    @classmethod
    def from_json(cls, data: JSON) -> AppLine:
        """An app as the reply's data has it."""
        return _flat(cls, data)


@dataclass(frozen=True)
class AdminActivity:
    """What one admin is doing now, across their logins."""

    role: str
    logins: int
    consoles: int
    """Consoles with the live feed open."""
    last_used: float
    last_command: str = ""
    last_command_at: float = 0.0
    last_ok: bool = False


@dataclass(frozen=True)
class AdminLine:
    """One admin as ``list_admins`` shows them."""

    user: str
    activity: AdminActivity

    def as_json(self) -> dict[str, Any]:
        """The admin as the reply's data says it: the user beside the activity's fields."""
        return {"user": self.user, **asdict(self.activity)}

    @classmethod
    def from_json(cls, data: JSON) -> AdminLine:
        """An admin as the reply's data has it."""
        return cls(_text(data, "user"), _flat(AdminActivity, data))


Line = TypeVar("Line")


@dataclass(frozen=True)
class LinesPage(Generic[Line]):
    """A page of ``list_runs``, ``list_apps`` or ``list_admins``: the page and its lines."""

    count: PageCount
    lines: tuple[Line, ...]

    @classmethod
    def from_json(cls, data: JSON, key: str, line: Callable[[JSON], Line]) -> LinesPage[Line]:
        """The page in a reply's data, its lines under ``key``, each read by ``line``."""
        return cls(PageCount.from_json(data), tuple(map(line, _objects(data, key))))


def runs_page(data: JSON) -> LinesPage[RunLine]:
    """A page of ``list_runs``."""
    return LinesPage.from_json(data, "runs", RunLine.from_json)


def apps_page(data: JSON) -> LinesPage[AppLine]:
    """A page of ``list_apps``."""
    return LinesPage.from_json(data, "apps", AppLine.from_json)


def admins_page(data: JSON) -> LinesPage[AdminLine]:
    """A page of ``list_admins``."""
    return LinesPage.from_json(data, "admins", AdminLine.from_json)


@dataclass(frozen=True)
class RunPage:
    """A page of ``show_run N``: the run and some of its rounds."""

    count: PageCount
    run: RunLine
    rounds: tuple[RoundLine, ...]

    @classmethod
    def from_json(cls, data: JSON) -> RunPage:
        """The page in a reply's data."""
        return cls(
            PageCount.from_json(data),
            RunLine.from_json(_object(data, "run")),
            tuple(map(RoundLine.from_json, _objects(data, "rounds"))),
        )
