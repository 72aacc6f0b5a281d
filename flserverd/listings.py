"""What the read-only listing commands show: the runs, one run's rounds per site, the apps,
the admins logged in.

Each listing is one page, bounded so that no reply comes near gRPC's 4 MiB
message limit however many runs, rounds, sites or apps the server has:
runs and apps 50 to a page, a run's rounds as many as keep the page under
:data:`MAX_CELLS` site results, every string clipped. The page number is
the command's last word (``list_runs 2``), and each reply says how to get
the next. The same facts come as data for ``--json`` and the console.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flcore import status as st
from flcore.appreview import app_digest, app_files
from flcore.feed import RunInfo
from flcore.folders import human_size
from flcore.listingrecords import AppLine, RoundLine, RunLine, SiteResult
from flserverd.admins import AdminLogins
from flserverd.runstore import RunStore
from flserverd.statedb import RunRecord, StateDB
from flserverd.views import best_text

PAGE = 50
"""Runs, apps and admins listed per page."""
MAX_CELLS = 2_000
"""Site results (one site's metrics of one round) per page of ``show_run``."""
MAX_METRICS = 16
"""Metrics shown per result (sites choose their metrics' names and number)."""
MAX_NAME = 64
MAX_TEXT = 200
MAX_ENDING = 4096
"""How a run ended, as show_run gives it: a reason and each failed site's first error line
(each at most 4 KiB as a site sends it), bounded so that the reply stays small."""
STATUS_CELL = 80
"""The status column of list_runs: one run's long failure must not widen every row
(show_run has the whole text)."""


def clip(text: str, limit: int = MAX_TEXT) -> str:
    """At most ``limit`` characters."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def when(stamp: float) -> str:
    """``YYYY-mm-dd HH:MM:SS`` in the server's local time, ``-`` for never."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "-"


def bounded_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """A site's metrics with their number and names bounded, in name order."""
    return {clip(name, MAX_NAME): value for name, value in sorted(metrics.items())[:MAX_METRICS]}


def metrics_text(metrics: dict[str, float]) -> str:
    """``val_accuracy=0.9361 val_loss=0.2067``."""
    return " ".join(f"{name}={value:.4f}" for name, value in metrics.items())


@dataclass(frozen=True)
class Page:
    """Which page of how many, of ``total`` items, ``size`` to a page."""

    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        """How many pages there are (at least one, maybe empty)."""
        return max(1, math.ceil(self.total / self.size))

    @property
    def start(self) -> int:
        """Index of the first item of the page."""
        return (self.number - 1) * self.size

    def footer(self, noun: str, command: str) -> str:
        """``runs 1-50 of 120 (page 1 of 3; list_runs 2 for the next)``."""
        if not self.total:
            return f"no {noun}"
        last = min(self.start + self.size, self.total)
        text = f"{noun} {self.start + 1}-{last} of {self.total} (page {self.number} of {self.pages}"
        if self.number < self.pages:
            text += f"; {command} {self.number + 1} for the next"
        return text + ")"

    def as_json(self) -> dict[str, int]:
        """The page as the reply's data says it."""
        return {"page": self.number, "pages": self.pages, "total": self.total}


class PageError(ValueError):
    """A page number that is not one; the message says which pages there are."""


def page_of(word: str | None, total: int, size: int) -> Page:
    """The page a command's last word names (the first when none); PageError otherwise."""
    pages = max(1, math.ceil(total / size))
    if word is None:
        return Page(1, size, total)
    if not (word.isascii() and word.isdigit() and 1 <= int(word) <= pages):
        raise PageError(f"page must be a whole number from 1 to {pages}, got {word!r}")
    return Page(int(word), size, total)


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, the last one not."""
    body = [list(header), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(header) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in body
    ]


# ---------------------------------------------------------------------- runs


def run_numbers(store: RunStore, db_numbers: Iterable[int]) -> list[int]:
    """Every run the server has, newest first: a ``run_N`` folder or a record."""
    folders = {
        int(path.name[4:])
        for path in store.workspace.glob("run_*")
        if path.is_dir() and path.name[4:].isdigit()
    }
    return sorted(folders | set(db_numbers), reverse=True)


def run_line(
    number: int, record: RunRecord | None, view: RunInfo | None, app: str, limit: int = MAX_TEXT
) -> RunLine:
    """A run from its record (or, for the current run, the server's view of it: how it
    ended, or why it is paused now), how it ended clipped at ``limit`` characters."""
    if record is None:
        return RunLine(number, app, "-", st.NOT_STARTED, "", "", 0.0, 0.0)
    status = view.server_status if view is not None else record.status
    ending = (
        view.ending() or view.fault
        if view is not None
        else RunInfo(
            number,
            record.status,
            reason=record.reason,
            failed_sites=tuple(record.failed_sites),
            site_errors=dict(record.failures),
        ).ending()
    )
    done = max(min(record.next_round, record.num_rounds) - record.start_round, 0)
    return RunLine(
        run_number=number,
        app=record.app or app,
        rounds=f"{done}/{record.num_rounds - record.start_round}",
        status=status,
        ending=clip(ending, limit),
        best=best_text(record),
        started_at=record.started_at,
        ended_at=record.ended_at if status not in st.ACTIVE else 0.0,
        resumed_at=record.resumed_at,
    )


def runs_text(lines: Sequence[RunLine], page: Page) -> str:
    """The runs as a table, newest first, and the page they are."""
    rows = [
        (
            str(r.run_number),
            r.app or "-",
            r.rounds,
            clip(r.status + (f" ({r.ending})" if r.ending else ""), STATUS_CELL),
            r.best or "-",
            when(r.started_at),
            when(r.ended_at),
        )
        for r in lines
    ]
    header = ("run", "app", "rounds", "status", "best", "started", "ended")
    body = table(header, rows) if rows else []
    return "\n".join([*body, page.footer("runs", "list_runs")])


def runs_data(lines: Sequence[RunLine], page: Page) -> dict[str, Any]:
    """The runs as the reply's data."""
    return {"runs": [asdict(line) for line in lines], **page.as_json()}


# ---------------------------------------------------------------------- one run


def rounds_of(db: StateDB, run_number: int, page: Page) -> list[RoundLine]:
    """The completed rounds of a run on ``page`` (the final validation last), without the
    sites yet."""
    return [
        RoundLine(s.round, bounded_metrics(s.metrics), s.duration_s, s.final)
        for s in db.round_records_from(run_number, page.start, page.size)
    ]


def rounds_per_page(sites: int) -> int:
    """Rounds that fit a page of ``show_run`` when each has ``sites`` results."""
    return max(1, min(PAGE, MAX_CELLS // max(sites, 1)))


def add_sites(db: StateDB, run_number: int, rounds: Sequence[RoundLine]) -> None:
    """Fill in what each site sent for these rounds (the updates folded into them)."""
    if not rounds:
        return
    by_round = {r.round: r for r in rounds}
    first, last = min(by_round), max(by_round)
    for round_number, instance, samples, metrics_json in db.folds(run_number, first, last):
        line = by_round.get(round_number)
        if line is None:
            continue
        try:
            metrics = json.loads(metrics_json)
        except ValueError:
            metrics = {}
        numbers = (
            {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}
            if isinstance(metrics, dict)
            else {}
        )
        line.sites[clip(instance, MAX_NAME)] = SiteResult(samples, bounded_metrics(numbers))


def run_text(number: int, header: RunLine, rounds: Sequence[RoundLine], page: Page) -> str:
    """One run, round by round, each site's result under its round."""
    status = header.status + (f" ({header.ending})" if header.ending else "")
    lines = [f"Run {number} · {header.app or 'no app'} · {status}"]
    if header.resumed_at:
        lines.append(f"Started {when(header.started_at)}, continued {when(header.resumed_at)}")
    if header.best:
        lines.append(f"Best global model: {header.best}")
    for line in rounds:
        name = "final validation" if line.final else f"round {line.round}"
        took = f" · {line.seconds:.1f}s" if line.seconds else ""
        lines.append(f"{name}: {metrics_text(line.metrics) or '(no metrics)'}{took}")
        # A final validation runs on each site's validation data; the count it reports is
        # its training samples, which weigh its metrics, not the samples it validated.
        count = "weight {}" if line.final else "{} samples"
        for site, result in sorted(line.sites.items()):
            said = count.format(result.samples)
            lines.append(f"  {site}: {said} {metrics_text(result.metrics)}".rstrip())
    lines.append(page.footer("rounds", f"show_run {number}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------- apps


def app_names(store: RunStore) -> list[str]:
    """Apps in ``transfer/``, by name (uploads in progress are hidden folders)."""
    return sorted(
        p.name for p in store.transfer.iterdir() if p.is_dir() and not p.name.startswith(".")
    )


class AppDigests:
    """App digests (the one sites approve), computed again only when the app's folder was
    replaced (an upload)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[int, int], tuple[int, int, str]]] = {}

    def line(self, folder: Path) -> AppLine:
        """The app in ``folder`` (reads every file the first time and after an upload)."""
        info = folder.stat()
        key = (info.st_ino, info.st_mtime_ns)
        known = self._known.get(folder.name)
        if known is None or known[0] != key:
            found = app_files(folder)
            size = sum(path.stat().st_size for _, path in found)
            known = (key, (size, len(found), app_digest(found)))
            self._known[folder.name] = known
        size, count, digest = known[1]
        return AppLine(folder.name, size, count, digest, info.st_mtime)


def apps_text(lines: Sequence[AppLine], page: Page) -> str:
    """The apps as a table."""
    rows = [
        (a.name, human_size(a.size), str(a.files), when(a.uploaded_at), a.sha256) for a in lines
    ]
    body = table(("app", "size", "files", "uploaded", "sha256"), rows) if rows else []
    return "\n".join([*body, page.footer("apps", "list_apps")])


# ---------------------------------------------------------------------- admins


def admins_text(logins: AdminLogins, users: Sequence[str], page: Page) -> str:
    """The admins logged in as a table."""
    rows = []
    for user in users:
        seen = logins.seen(user)
        last = seen.last_command
        rows.append(
            (
                user,
                seen.role,
                str(seen.consoles),
                str(seen.logins),
                when(seen.last_used),
                f"{last} ({'ok' if seen.last_ok else 'failed'}) at {when(seen.last_command_at)}"
                if last
                else "-",
            )
        )
    header = ("admin", "role", "consoles", "logins", "last seen", "last command")
    body = table(header, rows) if rows else []
    return "\n".join([*body, page.footer("admins logged in", "list_admins")])
