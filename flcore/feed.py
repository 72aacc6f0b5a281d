"""The server's live feed as plain data: what the server publishes and the console draws.

The server's event bus carries these frozen dataclasses, ``check_status``
builds its JSON from them, and the console's panes are drawn from them. The
wire messages (``flstack_admin.proto``) are converted in one place,
:mod:`flcore.feedwire`, in both directions, so the tests that replay a
recorded run drive the console without a server.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from flcore.status import ACTIVE, FINISHED

ORDINARY_ENDS = ("aborted by ", "start aborted by ", "server shut down by ")
"""Reasons of runs stopped on purpose; any other reason is a failure."""


def ended_on_purpose(reason: str) -> bool:
    """Whether a stopped run's reason is an ordinary end (it finished, an admin aborted it or
    shut the server down) rather than a failure."""
    return reason == FINISHED or reason.startswith(ORDINARY_ENDS)


_CONTROLS = {
    code: "\ufffd"
    for code in (
        *range(0x20),
        *range(0x7F, 0xA0),
        # Bidirectional marks, embeddings, overrides and isolates: in a terminal that applies
        # them, a site's host name or error could reorder the rest of the line it is on.
        0x061C,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
    if code not in (9, 10)
}


MAX_TEXT = 4096
"""The most of one error message or log line the server keeps and relays."""
MAX_TRACEBACK = 16384
"""The most of a traceback the server keeps: its end, where the exception is."""
MAX_LABEL = 128
"""The most of a short label a site sends (device, app, logger, host name)."""
MAX_BATCH_EVENTS = 1000
"""The most events one feed message carries. What queued up for a console while its
last message was written goes out together (1,000 sites heartbeating every second
make 1,000 events a second); a console reads no more than this from one message."""
STALE_AFTER_BEATS = 3
"""A client is stale after missing this many heartbeats in a row."""
STALE_MIN_S = 5.0


def stale_after(heartbeat_interval: float) -> float:
    """Seconds without a heartbeat after which a client looks stale (to the console and to
    the server's metrics alike)."""
    return max(STALE_AFTER_BEATS * heartbeat_interval, STALE_MIN_S)


def clip(text: str, limit: int) -> str:
    """The start of ``text``, at most ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"… ({len(text) - limit + 40:,} characters cut)"
    return text[: max(0, limit - 40)] + note[:40]


def clip_end(text: str, limit: int) -> str:
    """The end of ``text`` (a traceback's exception is at its end), saying how much was cut."""
    if len(text) <= limit:
        return text
    note = f"({len(text) - limit + 40:,} characters cut) …"
    return note[:40] + text[len(text) - max(0, limit - 40) :]


def printable(text: str) -> str:
    """``text`` safe to draw on a terminal: control characters become ``\ufffd``.

    The feed carries what sites wrote (host names, errors, tracebacks, log
    lines); an escape sequence among them must not reach the admin's
    terminal. C0 and C1 controls and DEL go; newlines and tabs stay, so a
    traceback keeps its lines.
    """
    return text.translate(_CONTROLS)


_RAW_CONTROL = re.compile("[" + "".join(re.escape(chr(code)) for code in _CONTROLS) + "]")
_ESCAPED_CONTROL = re.compile(
    r"\\(?:[bfr]|u(?:00(?:[01]|7[fF]|[89])|061[cC]|200[eEfF]|202[a-eA-E]|206[6-9]))"
)
"""A JSON escape that may decode to a control (``\\u0009``, ``\\u000a`` and an escaped
backslash before ``u00..`` match too: a false alarm only costs the walk it would save)."""


def json_printable(text: str) -> bool:
    """Whether no string (key or value) that the JSON ``text`` holds has a character that
    :func:`printable` replaces, so that its parsed value is safe to draw as it is.

    A reply with 1,000 clients' rows holds ~20,000 strings: cleaning each
    costs the admin ~50 ms, two scans of the text ~4 ms. Both controls
    written raw (DEL and C1 may be) and escaped ones (``\\u001b``) count.
    """
    return _RAW_CONTROL.search(text) is None and _ESCAPED_CONTROL.search(text) is None


@dataclass(frozen=True)
class ServerInfo:
    """Who the server is and the heartbeat timing that decides when a site looks stale."""

    project: str
    name: str
    fed_target: str = ""
    admin_target: str = ""
    started_at: float = 0.0
    version: str = ""
    heart_beat_timeout_s: float = 600.0
    heartbeat_interval_s: float = 60.0


@dataclass(frozen=True)
class ClientRow:
    """One connected client instance, as the server last described it."""

    instance: str
    client_name: str
    token_id: str = ""
    """A short public name of the client's login token (flcore.tokens.token_id)."""
    org: str = ""
    status: str = "training not started"
    last_heartbeat: float = 0.0
    connected_at: float = 0.0
    run_number: int = 0
    round: int = -1
    samples: int = 0
    device: str = ""
    gpu_count: int = 0
    error: str = ""
    traceback: str = ""
    app: str = ""
    hostname: str = ""
    connected: bool = True
    detail: str = ""
    cross_validate: bool = False
    """The site takes part in cross-site validation: an abort moves it on to that."""


@dataclass(frozen=True)
class RoundRecord:
    """Sample-weighted metrics of one round (the round ``num_rounds`` is the final validation),
    and the highest outlier scores of its updates, by instance."""

    round: int
    metrics: dict[str, float] = field(default_factory=dict)
    clients: int = 0
    seconds: float = 0.0
    outliers: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInfo:
    """The current run and the progress of its round."""

    run_number: int = 0
    server_status: str = "training not started"
    app: str = ""
    start_round: int = 0
    current_round: int = -1
    num_rounds: int = 0
    min_num_clients: int = 0
    max_num_clients: int = 0
    updates_received: int = 0
    contributed: tuple[str, ...] = ()
    awaited: tuple[str, ...] = ()
    wait_deadline: float = 0.0
    history: tuple[RoundRecord, ...] = ()
    failed_sites: tuple[str, ...] = ()
    phase: str = ""
    best_metric: str = ""
    reason: str = ""
    site_errors: dict[str, str] = field(default_factory=dict)
    """The first line of each failed site's error."""
    blocked: str = ""
    """Why the training run cannot complete its round now ("" when it can)."""
    fault: str = ""
    """Why training is paused now (e.g. "server disk full: ..."); empty while it is not."""

    def ending(self) -> str:
        """How a run that no longer trains ended, in a few words ("" while it trains).

        ``finished``, ``aborted by <admin>``, ``failed: <why>``, each followed
        by the sites that failed on the way and the first line of their error.
        """
        if self.server_status in ACTIVE:
            return ""
        parts = [self.end_reason()] if self.reason else []
        if self.failed_sites:
            parts.append(f"failed sites: {self.failed_sites_text()}")
        return " · ".join(parts)

    def end_reason(self) -> str:
        """Why the run stopped: ``finished``, ``aborted by <admin>``, ``failed: <why>``."""
        return self.reason if ended_on_purpose(self.reason) else f"failed: {self.reason}"

    def failed_sites_text(self) -> str:
        """``flclient3 (no DATA_ROOT set), flclient4``: each failed site and its error."""
        errors = self.site_errors
        return ", ".join(
            f"{site} ({errors[site]})" if site in errors else site for site in self.failed_sites
        )


@dataclass(frozen=True)
class ServerStopping:
    """The server is about to stop (the last event of every feed), and who asked."""

    by: str
    """The admin who ran ``shutdown server``, or what else stopped it (the event's time
    says when)."""
    admin: bool = False
    """An admin asked (the server stays down); else a signal did (it may be restarting)."""


@dataclass(frozen=True)
class LogEntry:
    """A log line of the server, of a site (source = instance) or of this console."""

    time: float
    level: str
    logger: str
    message: str
    source: str


@dataclass(frozen=True)
class Snapshot:
    """Everything at once: the first event of every subscription."""

    server: ServerInfo
    run: RunInfo
    clients: tuple[ClientRow, ...] = ()
    logs: tuple[LogEntry, ...] = ()


@dataclass(frozen=True)
class ClientGone:
    """The server dropped a client (heartbeat timeout, shutdown, removal)."""

    instance: str
    reason: str


@dataclass(frozen=True)
class Heartbeat:
    """A heartbeat arrived from a client."""

    instance: str
    time: float


@dataclass(frozen=True)
class CommandSeen:
    """An admin (maybe another one) ran a command."""

    user: str
    line: str
    ok: bool


@dataclass(frozen=True)
class Tick:
    """Nothing happened for a while, and the server says so: a feed that stays quiet
    otherwise tells a server that is alive from one that stopped. Never on the bus: each
    feed sends its own, numbered 0 (outside the sequence), stamped as it is sent."""


Body = (
    Snapshot
    | ClientRow
    | ClientGone
    | RunInfo
    | LogEntry
    | Heartbeat
    | CommandSeen
    | ServerStopping
    | Tick
)


@dataclass(frozen=True)
class FeedEvent:
    """One event of the feed; ``seq`` numbers follow each other within a subscription."""

    seq: int
    time: float
    body: Body
