"""The console's picture of the server, folded from the live feed.

The feed worker applies every event here as it arrives (cheap dictionary
work, no drawing); a timer takes the accumulated :class:`Changes` a few
times a second and the panes repaint only what changed. That split is what
keeps the screen calm with a thousand clients heartbeating at once.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress
from dataclasses import dataclass, field, replace

from flcore.feed import (
    ClientGone,
    ClientRow,
    CommandSeen,
    FeedEvent,
    Heartbeat,
    LogEntry,
    RunInfo,
    ServerInfo,
    ServerStopping,
    Snapshot,
)
from fltui.connection import Shutdown

LOG_LIMIT = 5_000
BEAT_HISTORY = 240
DEFAULT_HEARTBEAT_INTERVAL = 60.0
KEPT_HISTORIES = 1_000
"""Heartbeat histories kept for instances the server no longer lists (they may come back)."""
KEPT_GONE = 1_000
"""Rows of dropped clients kept until the next snapshot: the oldest go beyond this, so a
console open for days over sites that come and go (or a server that names ever new ones)
keeps a bounded table."""
OWN_PENDING = 32
"""Own command lines remembered until the feed's audit of them arrives."""
AUDIT = "admin"

BEAT = "beat"
DOWN = "down"
UP = "up"
GONE = "gone"


@dataclass(frozen=True)
class Beat:
    """A moment in a client's heartbeat history: a heartbeat, or its link going down or up."""

    time: float
    kind: str


@dataclass
class Changes:
    """What changed since the panes were last drawn."""

    reset: bool = False
    server: bool = False
    run: bool = False
    clients: set[str] = field(default_factory=set)
    statuses: bool = False
    """A client's training status or app changed (which keys make sense may change)."""
    logs: list[LogEntry] = field(default_factory=list)
    beats: bool = False

    def __bool__(self) -> bool:
        return bool(
            self.reset
            or self.server
            or self.run
            or self.clients
            or self.logs
            or self.beats
        )


class Store:
    """Current server info, run, clients, recent logs and heartbeat history."""

    def __init__(self, log_limit: int = LOG_LIMIT) -> None:
        """Start empty; ``log_limit`` bounds the log lines kept."""
        self.server: ServerInfo | None = None
        self.run = RunInfo()
        self.clients: dict[str, ClientRow] = {}
        self.gone: dict[str, str] = {}
        """Clients the server dropped since the last snapshot, with the reason."""
        self.logs: deque[LogEntry] = deque(maxlen=log_limit)
        self._log_limit = log_limit
        self.beats: dict[str, deque[Beat]] = {}
        self.seq = 0
        self.log_total = 0
        """Log lines added since the start: a view that read ``n`` has ``log_total - n`` new."""
        self.user = ""
        """The logged-in admin: the feed's audit of their own commands is not logged twice."""
        self.shutdown: Shutdown | None = None
        """The admin's ``shutdown server`` the feed announced: the server stays down."""
        self.stopped_by = ""
        """What else stopped the server, as the feed announced it (it may come back)."""
        self._own: deque[str] = deque(maxlen=OWN_PENDING)
        self._changes = Changes()

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a client's heartbeats, as the server configures them."""
        if self.server is None or self.server.heartbeat_interval_s <= 0:
            return DEFAULT_HEARTBEAT_INTERVAL
        return self.server.heartbeat_interval_s

    def take_changes(self) -> Changes:
        """Hand over what changed and start collecting afresh."""
        changes, self._changes = self._changes, Changes()
        return changes

    def apply(self, event: FeedEvent) -> bool:
        """Fold one event in.

        Returns:
            False when a sequence number was skipped: the picture may be wrong
            and the caller should resubscribe for a fresh snapshot.
        """
        body = event.body
        if isinstance(body, Snapshot):
            self._apply_snapshot(body)
            self.seq = event.seq
            return True
        if event.seq <= self.seq:
            return True  # already part of the snapshot
        in_order = event.seq == self.seq + 1
        self.seq = event.seq
        if isinstance(body, ClientRow):
            self._apply_client(body)
        elif isinstance(body, Heartbeat):
            self._apply_heartbeat(body)
        elif isinstance(body, LogEntry):
            self.add_log(body)
        elif isinstance(body, RunInfo):
            self.run = body
            self._changes.run = True
        elif isinstance(body, ClientGone):
            self._apply_gone(body, event.time)
        elif isinstance(body, CommandSeen):
            self._apply_command(body, event.time)
        elif isinstance(body, ServerStopping):
            if body.admin:
                self.shutdown = Shutdown(body.by, event.time)
            else:
                self.stopped_by = body.by
        return in_order

    def sending(self, line: str) -> None:
        """Our own command is on its way: its audit in the feed repeats what we log."""
        self._own.append(line.strip())

    def not_sent(self, line: str) -> None:
        """Our command was not carried out after all (cancelled, link lost): no audit comes."""
        with suppress(ValueError):
            self._own.remove(line.strip())

    def new_logs(self, seen: int) -> list[LogEntry]:
        """Lines added after the first ``seen`` (those still kept)."""
        fresh = min(self.log_total - seen, len(self.logs))
        return list(self.logs)[-fresh:] if fresh > 0 else []

    def _apply_command(self, seen: CommandSeen, when: float) -> None:
        if seen.user == self.user and seen.line in self._own:
            self._own.remove(seen.line)  # the console logged it with its reply already
            return
        verdict = "ok" if seen.ok else "failed"
        self.add_log(
            LogEntry(when, "INFO", "audit", f"{seen.user}: {seen.line} ({verdict})", AUDIT)
        )

    def add_log(self, entry: LogEntry) -> None:
        """Add a log line (the feed's, or one the console writes about its own doings)."""
        self.logs.append(entry)
        self.log_total += 1
        pending = self._changes.logs
        pending.append(entry)
        if len(pending) > self._log_limit // 2:  # nobody drew them for a while: redraw all
            pending.clear()
            self._changes.reset = True

    def _apply_snapshot(self, snap: Snapshot) -> None:
        self.server = snap.server
        self.run = snap.run
        self.clients = {row.instance: row for row in snap.clients}
        self.gone.clear()
        self.shutdown = None
        self.stopped_by = ""
        self._keep_histories()
        for row in snap.clients:
            history = self.beats.get(row.instance)
            if row.last_heartbeat and (not history or history[-1].time < row.last_heartbeat):
                self._beat(row.instance, Beat(row.last_heartbeat, BEAT))
        seen = set(self.logs)  # a resubscription repeats lines we have; keep ours and theirs once
        fresh = [line for line in snap.logs if line not in seen]
        self.logs.extend(fresh)
        self.log_total += len(fresh)
        self._changes = Changes(reset=True, server=True, run=True, beats=True)

    def _keep_histories(self) -> None:
        """Keep every listed client's heartbeat history, and a bounded number of others'.

        After a server restart the first snapshot lists only the sites that
        are back; the others come back over the next seconds, and their
        history (the gap included) is what an operator wants to see.
        """
        others = [name for name in self.beats if name not in self.clients]
        for name in others[: max(len(others) - KEPT_HISTORIES, 0)]:
            del self.beats[name]

    def _apply_client(self, row: ClientRow) -> None:
        old = self.clients.get(row.instance)
        if old is None or old.connected != row.connected:
            self._beat(row.instance, Beat(row.last_heartbeat, UP if row.connected else DOWN))
        if old is None or (old.status, old.app) != (row.status, row.app):
            self._changes.statuses = True
        self.clients[row.instance] = row
        self.gone.pop(row.instance, None)
        self._changes.clients.add(row.instance)

    def _apply_heartbeat(self, beat: Heartbeat) -> None:
        row = self.clients.get(beat.instance)
        if row is None:
            return
        if beat.time > row.last_heartbeat:
            self.clients[beat.instance] = replace(row, last_heartbeat=beat.time)
        self._beat(beat.instance, Beat(beat.time, BEAT))

    def _apply_gone(self, gone: ClientGone, when: float) -> None:
        if gone.instance not in self.clients:
            return
        self.gone[gone.instance] = gone.reason
        self._beat(gone.instance, Beat(when, GONE))
        self._changes.clients.add(gone.instance)
        self._changes.statuses = True
        if len(self.gone) > KEPT_GONE:  # the oldest dropped row goes (in the order dropped)
            oldest = next(iter(self.gone))
            del self.gone[oldest]
            del self.clients[oldest]
            self._changes.clients.add(oldest)
            self._keep_histories()

    def _beat(self, instance: str, beat: Beat) -> None:
        history = self.beats.get(instance)
        if history is None:
            history = self.beats[instance] = deque(maxlen=BEAT_HISTORY)
        history.append(beat)
        self._changes.beats = True
