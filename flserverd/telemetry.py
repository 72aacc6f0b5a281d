"""The server's Prometheus metrics (docs/operations.md, "Metrics", lists them).

Imported only when the site turned the endpoint on; it follows the live
feed and the model exchange (:mod:`flserverd.watching`). Counters count
from the daemon's start, as Prometheus expects. Gauges that depend on the
time (a site goes stale by saying nothing) or on the disk are computed when
Prometheus scrapes, in the endpoint's thread, from what the watcher noted
under a lock.

Labels stay few: kinds, outcomes and reasons are fixed sets, admin commands
are the server's own command names (anything else is ``other``), and the
only per-site label is the kit name, which provisioning bounds. No token,
instance number, path or free text becomes a label.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flcore import status as st
from flcore.exporter import status_family
from flcore.federation import MetricsReport, SubmitHeader, SubmitOutcome, UploadKind, Verdict
from flcore.feed import (
    Body,
    ClientGone,
    ClientRow,
    CommandSeen,
    Heartbeat,
    RoundRecord,
    RunInfo,
    Snapshot,
    stale_after,
)
from flserverd.commands import COMMANDS
from flserverd.server import FLServer
from flserverd.training import MIN_UPDATES_FOR_OUTLIERS, OUTLIER_SCORE

ROUND_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
"""Seconds: a round of a small model on CPUs takes seconds, of a 3D network hours."""
RUN_STATUSES = (st.NOT_STARTED, st.STARTING, st.STARTED, st.PAUSED, st.STOPPED)
CLIENT_STATES = ("online", "stale", "offline", "lost")

REJECTIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (reason, re.compile(pattern))
    for reason, pattern in (
        ("revoked", r"discarded: .*revoked|certificate .* revoked"),
        ("metrics", r"^too many metrics|^metric "),
        ("wrong_run", r"^update is for run \d+|^run \d+ does not exist"),
        ("manifest", r"does not match the global model|has no global model"),
        ("no_samples", r"reports no training samples"),
    )
)
"""Why an upload was rejected, as a bounded label, from the verdict's words (the exchange's
tests pin each of them). Anything else the stream carried is ``content`` (a chunk out of
place, a value not finite, a size that does not add up) or, for a header that could not be
read, ``unreadable``."""


def rejection_reason(header: SubmitHeader | None, message: str) -> str:
    """The label of a rejected upload."""
    if header is None:
        return "unreadable"
    for reason, pattern in REJECTIONS:
        if pattern.search(message):
            return reason
    return "content"


def removal_reason(reason: str) -> str:
    """The label of a client's removal, in the console's words for it."""
    if reason == st.LOGGED_OUT:
        return "logged_out"
    if reason == st.REVOKED:
        return "revoked"
    if reason.startswith("no heartbeat"):
        return "heartbeat_timeout"
    return "other"


def command_name(line: str) -> str:
    """The label of an audited command line: the command, or ``other``."""
    words = line.split(maxsplit=1)
    return words[0] if words and words[0] in COMMANDS else "other"


def _label(kind: str) -> str:
    return kind.replace(" ", "_")


@dataclass
class _Seen:
    """What the feed said, for the gauges computed at scrape time."""

    run: RunInfo = field(default_factory=RunInfo)
    heartbeat_interval: float = 60.0
    clients: dict[str, ClientRow] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)
    """Instances dropped for silence and not back, and their kit names."""
    heard: dict[str, float] = field(default_factory=dict)
    """When each instance last beat, by the monotonic clock: its silence is measured on it,
    so that a step of the wall clock (NTP, a resumed VM) makes no site stale, nor hides a
    silent one."""


class ServerTelemetry:
    """Follows the feed and the exchange; ``collectors()`` is what the endpoint serves."""

    def __init__(self, server: FLServer) -> None:
        self._server = server
        self._lock = threading.Lock()
        self._seen = _Seen()
        self._last_round: dict[int, int] = {}
        """Per run, the newest round whose duration was observed."""
        self.uploads = Counter(
            "flstack_server_uploads",
            "Uploads (updates and best local models) by verdict",
            ["kind", "outcome"],
            registry=None,
        )
        self.rejections = Counter(
            "flstack_server_uploads_rejected",
            "Rejected uploads by reason",
            ["kind", "reason"],
            registry=None,
        )
        self.reports = Counter(
            "flstack_server_metrics_reports",
            "Validation reports (final model, cross-site) by verdict",
            ["kind", "outcome"],
            registry=None,
        )
        self.received = Counter(
            "flstack_server_received_bytes",
            "Model bytes received from clients",
            ["kind"],
            registry=None,
        )
        self.sent = Counter(
            "flstack_server_sent_bytes",
            "Model and app bytes sent to clients",
            ["kind"],
            registry=None,
        )
        self.commands = Counter(
            "flstack_server_admin_commands",
            "Admin commands carried out, by command and outcome",
            ["command", "outcome"],
            registry=None,
        )
        self.removals = Counter(
            "flstack_server_clients_removed",
            "Client registrations ended, by reason",
            ["reason"],
            registry=None,
        )
        self.stalls = Counter(
            "flstack_server_uploads_stalled",
            "Uploads given up because nothing moved for a while (the client sends them again)",
            ["kind"],
            registry=None,
        )
        self.rounds = Counter("flstack_server_rounds_completed", "Rounds aggregated", registry=None)
        self.outlier_score = Gauge(
            "flstack_server_round_outlier_score_max",
            "The highest outlier score among the updates of the last aggregated round (about 1: "
            "typical; 0: no round aggregated yet)",
            registry=None,
        )
        self.outliers = Counter(
            "flstack_server_outlier_updates",
            f"Updates that scored {OUTLIER_SCORE:g} or more in a round of at least "
            f"{MIN_UPDATES_FOR_OUTLIERS} (the server's log names each one's site)",
            registry=None,
        )
        self.round_seconds = Histogram(
            "flstack_server_round_duration_seconds",
            "Time from a round's start to its aggregation",
            buckets=ROUND_BUCKETS,
            registry=None,
        )
        for outcome in SubmitOutcome:
            self.uploads.labels("update", outcome.value)

    def collectors(self) -> list[Collector]:
        """Everything the endpoint serves of the server's own."""
        return [
            self,
            self.uploads,
            self.rejections,
            self.reports,
            self.received,
            self.sent,
            self.commands,
            self.removals,
            self.stalls,
            self.rounds,
            self.round_seconds,
            self.outlier_score,
            self.outliers,
        ]

    # ------------------------------------------------------------------ exchange

    def upload_judged(self, instance: str, header: SubmitHeader | None, verdict: Verdict) -> None:
        """Count a verdict on an upload."""
        kind = _label(header.kind.value) if header is not None else "unknown"
        self.uploads.labels(kind, verdict.outcome.value).inc()
        if verdict.outcome is SubmitOutcome.REJECTED:
            self.rejections.labels(kind, rejection_reason(header, verdict.message)).inc()

    def report_judged(self, instance: str, report: MetricsReport, verdict: Verdict) -> None:
        """Count a verdict on a metrics report."""
        self.reports.labels(_label(report.kind.value), verdict.outcome.value).inc()

    def moved(self, outward: bool, what: str, size: int) -> None:
        """Count bytes that moved."""
        (self.sent if outward else self.received).labels(_label(what)).inc(size)

    def stalled(self, kind: UploadKind) -> None:
        """Count an upload given up for not moving."""
        self.stalls.labels(_label(kind.value)).inc()

    # ------------------------------------------------------------------ feed

    def seen(self, body: Body) -> None:
        """Note what the feed says."""
        if isinstance(body, RunInfo):
            self._run(body)
        elif isinstance(body, ClientRow):
            with self._lock:
                self._seen.clients[body.instance] = body
                self._seen.lost.pop(body.instance, None)
                self._heard(body.instance, body.last_heartbeat)
        elif isinstance(body, Heartbeat):
            with self._lock:
                row = self._seen.clients.get(body.instance)
                if row is not None:
                    self._seen.clients[body.instance] = _beat(row, body.time)
                    self._heard(body.instance, body.time)
        elif isinstance(body, ClientGone):
            self._gone(body)
        elif isinstance(body, CommandSeen):
            self.commands.labels(command_name(body.line), "ok" if body.ok else "failed").inc()
        elif isinstance(body, Snapshot):
            with self._lock:
                self._seen.heartbeat_interval = body.server.heartbeat_interval_s
                self._seen.clients = {row.instance: row for row in body.clients}
                self._seen.heard = {}
                for row in body.clients:
                    self._heard(row.instance, row.last_heartbeat)
            self._run(body.run)

    def _heard(self, instance: str, beat: float) -> None:
        """Note a beat the feed stamped ``beat`` on the wall clock: as long ago on the
        monotonic clock as it is now on the wall clock (a beat just published: now)."""
        if beat:
            self._seen.heard[instance] = time.monotonic() - max(0.0, time.time() - beat)
        else:
            self._seen.heard.pop(instance, None)

    def _gone(self, gone: ClientGone) -> None:
        self.removals.labels(removal_reason(gone.reason)).inc()
        with self._lock:
            row = self._seen.clients.pop(gone.instance, None)
            self._seen.heard.pop(gone.instance, None)
            if gone.reason not in (st.LOGGED_OUT, st.REVOKED):
                self._seen.lost[gone.instance] = row.client_name if row else gone.instance

    def _run(self, run: RunInfo) -> None:
        """Keep the run's state; observe each round newly aggregated (the history repeats
        the latest rounds in every run event; a fresh start of the same run begins again)."""
        with self._lock:
            self._seen.run = run
        number = run.run_number
        if run.server_status == st.STARTING:
            self._last_round[number] = -1
            return
        completed = [r for r in run.history if r.round < run.num_rounds]
        if number not in self._last_round:  # rounds of an earlier process of the server
            self._last_round[number] = max((r.round for r in completed), default=-1)
            return
        for record in completed:
            if record.round > self._last_round[number]:
                self._last_round[number] = record.round
                self._completed(record)

    def _completed(self, record: RoundRecord) -> None:
        """A round newly aggregated: its duration and its outliers. The feed carries the
        highest scores of a round only (flserverd.views.OUTLIERS_SHOWN), which holds every
        update at or above OUTLIER_SCORE unless more than that many stand out at once."""
        self.rounds.inc()
        self.round_seconds.observe(record.seconds)
        self.outlier_score.set(max(record.outliers.values(), default=0.0))
        if record.clients >= MIN_UPDATES_FOR_OUTLIERS:
            self.outliers.inc(sum(1 for s in record.outliers.values() if s >= OUTLIER_SCORE))

    # ------------------------------------------------------------------ scrape

    def collect(self) -> Iterator[Metric]:
        """The gauges, as they are now (called in the endpoint's thread)."""
        with self._lock:
            run = self._seen.run
            rows = list(self._seen.clients.values())
            lost = dict(self._seen.lost)
            heard = dict(self._seen.heard)
            stale_s = stale_after(self._seen.heartbeat_interval)
        yield from self._client_gauges(rows, lost, heard, stale_s)
        yield from _run_gauges(run)
        yield from self._disk_gauges(run.run_number)

    def _client_gauges(
        self,
        rows: list[ClientRow],
        lost: dict[str, str],
        heard: dict[str, float],
        stale_s: float,
    ) -> Iterator[Metric]:
        now = time.monotonic()
        states = dict.fromkeys(CLIENT_STATES, 0)
        last_beat: dict[str, float] = {}
        for row in rows:
            if not row.connected:
                states["offline"] += 1
            elif row.instance in heard and now - heard[row.instance] > stale_s:
                states["stale"] += 1
            else:
                states["online"] += 1
            last_beat[row.client_name] = max(
                last_beat.get(row.client_name, 0.0), row.last_heartbeat
            )
        states["lost"] = len(lost)
        clients = GaugeMetricFamily(
            "flstack_server_clients",
            "Client instances by health: online, stale (silent for 3 heartbeats), offline "
            "(registered, control stream down), lost (dropped for silence, not back)",
            labels=["state"],
        )
        for state, count in states.items():
            clients.add_metric([state], count)
        yield clients
        beats = GaugeMetricFamily(
            "flstack_server_site_last_heartbeat_timestamp_seconds",
            "When a site (kit) was last heard from, for each registered site",
            labels=["site"],
        )
        for site, when in sorted(last_beat.items()):
            beats.add_metric([site], when)
        yield beats

    def _disk_gauges(self, run_number: int) -> Iterator[Metric]:
        files, size = self._server.store.spool_usage(run_number) if run_number else (0, 0)
        yield GaugeMetricFamily(
            "flstack_server_spool_bytes", "Bytes of uploads being received now", value=size
        )
        yield GaugeMetricFamily(
            "flstack_server_spool_files", "Uploads being received now", value=files
        )
        usage = shutil.disk_usage(self._server.workspace)
        yield GaugeMetricFamily(
            "flstack_server_disk_free_bytes",
            "Free bytes on the file system of the server's workspace",
            value=usage.free,
        )
        yield GaugeMetricFamily(
            "flstack_server_disk_size_bytes",
            "Size of the file system of the server's workspace",
            value=usage.total,
        )


def _beat(row: ClientRow, when: float) -> ClientRow:
    return replace(row, last_heartbeat=when)


def _run_gauges(run: RunInfo) -> Iterator[Metric]:
    values = {
        "flstack_server_run_number": ("The run the server holds (0: none set)", run.run_number),
        "flstack_server_round": ("The round being trained (-1: none)", run.current_round),
        "flstack_server_rounds": ("The run's num_rounds", run.num_rounds),
        "flstack_server_round_updates_received": (
            "Updates counted in the current round",
            run.updates_received,
        ),
        "flstack_server_round_clients_awaited": (
            "Clients the current round still waits for",
            len(run.awaited),
        ),
    }
    for name, (text, value) in values.items():
        yield GaugeMetricFamily(name, text, value=value)
    yield status_family(
        "flstack_server_run_status", "The server's", RUN_STATUSES, run.server_status
    )
