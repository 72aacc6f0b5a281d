"""The server's clients and rounds as the feed shows them (see :mod:`flcore.feed`)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flcore import status as st
from flcore.feed import ClientRow, LogEntry, RoundRecord, Snapshot, clip, clip_end
from flcore.status import ClientStatus
from flserverd.registry import ClientRegistry, RegisteredClient
from flserverd.statedb import RoundSummary, RunRecord


def client_row(s: RegisteredClient, run_number: int = 0, run_started: float = 0.0) -> ClientRow:
    """A registered client as one row of the clients table, as it is now.

    Given the server's run (``run_number``, started at ``run_started``), a
    client that is not training describes that run: what it said about an
    earlier run, or before this one started (stopped, failed, its samples),
    is no longer true, and the row reads ``training not started``.
    """
    status = s.status
    busy = status.status in st.ACTIVE or status.status == st.STOPPING
    earlier = status.run_number != run_number or s.status_at < run_started
    if run_number and not busy and earlier:
        status = ClientStatus(app=status.app, cross_validate=status.cross_validate)
    return ClientRow(
        instance=s.instance,
        client_name=s.client_name,
        token_id=s.token_id,
        org=s.org,
        status=status.status,
        last_heartbeat=s.last_heartbeat,
        connected_at=s.connected_at,
        run_number=status.run_number,
        round=status.round,
        samples=status.samples,
        device=s.machine.device,
        gpu_count=s.machine.gpu_count,
        error=status.error,
        traceback=status.traceback,
        app=status.app,
        hostname=s.machine.hostname,
        connected=s.connected,
        detail=status.detail,
        cross_validate=status.cross_validate,
    )


def row_data(row: ClientRow) -> dict[str, Any]:
    """A row as the data of a command's reply: ``dataclasses.asdict`` without its deep copy
    (every field is a plain value), which for 1,000 rows was most of a reply's time."""
    return dict(vars(row))


class RosterText:
    """``check_status server``'s lines of registered clients (Clara's layout).

    They name each client, its instance and its token, which change only when
    a client registers or is removed (the registry's ``version``), not with
    a heartbeat or a status: they are written again only then.
    """

    def __init__(self) -> None:
        self._version = -1
        self._lines: list[str] = []

    def lines(self, registry: ClientRegistry) -> list[str]:
        """One line per registered client, by instance name."""
        if registry.version != self._version:
            self._lines = [
                f"client name:{c.client_name}\tinstance name:{c.instance}\ttoken: {c.token_id}"
                for c in registry.clients()
            ]
            self._version = registry.version
        return self._lines


OUTLIERS_SHOWN = 5
"""Outlier scores per round in the feed (the highest); metrics.jsonl has every update's."""


def round_record(summary: RoundSummary) -> RoundRecord:
    """A completed round as the feed shows it."""
    return RoundRecord(
        round=summary.round,
        metrics=dict(summary.metrics),
        clients=len(summary.clients),
        seconds=summary.duration_s,
        outliers=dict(summary.ranked_scores[:OUTLIERS_SHOWN]),
    )


def best_text(run: RunRecord) -> str:
    """The best model so far, as ``val_accuracy=0.9412 (round 7)``.

    The metrics of round *r* describe the model the sites received at its
    start, so the best names the round it was the input of; the final
    validation reports as round ``num_rounds``, which the run does not have:
    that best is the final model's, and says so.
    """
    if run.best_value is None or run.best_round is None:
        return ""
    where = "final model" if run.best_round >= run.num_rounds else f"round {run.best_round}"
    name = f"{run.metric}=" if run.metric else ""
    return f"{name}{run.best_value:.4f} ({where})"


SNAPSHOT_LOG_BYTES = 1024 * 1024
"""The newest log lines that fit here go into a console's snapshot (the ring holds more)."""
SNAPSHOT_CLIENT_BYTES = 2 * 1024 * 1024
"""Client rows above this shed their tracebacks, then their errors, in the snapshot."""
ROW_OVERHEAD = 128
"""Bytes a row or a log line costs on the wire beyond its texts (numbers, field tags)."""
SHED_STEPS = ((1024, 1024, 1024), (0, 256, 256), (0, 0, 0))
"""(traceback, error, detail) characters each row keeps at each step of shedding."""


def _utf8_bytes(*texts: str) -> int:
    """Bytes on the wire, not characters: a site's text may be all four-byte characters."""
    return sum(len(text.encode("utf-8", "surrogatepass")) for text in texts)


def _row_bytes(row: ClientRow) -> int:
    texts = (row.instance, row.client_name, row.org, row.status, row.device, row.error)
    return ROW_OVERHEAD + _utf8_bytes(*texts, row.traceback, row.app, row.hostname, row.detail)


def _log_bytes(line: LogEntry) -> int:
    return ROW_OVERHEAD + _utf8_bytes(line.message, line.logger, line.source)


def fit_snapshot(snapshot: Snapshot) -> Snapshot:
    """A snapshot that fits one gRPC message however much the sites wrote.

    A site controls its error, traceback and log lines; many instances each
    sending the most the server keeps would make a snapshot larger than the
    message limit, and no console could connect. The newest log lines are
    kept up to :data:`SNAPSHOT_LOG_BYTES`; client rows above
    :data:`SNAPSHOT_CLIENT_BYTES` keep only the end of their tracebacks, then
    less of their errors and details. Both budgets count UTF-8 bytes. Every
    row is kept, and the next change of a row sends it whole.
    """
    logs: list[LogEntry] = []
    budget = SNAPSHOT_LOG_BYTES
    for line in reversed(snapshot.logs):
        budget -= _log_bytes(line)
        if budget < 0:
            break
        logs.append(line)
    clients = snapshot.clients
    for traceback, error, detail in SHED_STEPS:
        if sum(_row_bytes(row) for row in clients) <= SNAPSHOT_CLIENT_BYTES:
            break
        clients = tuple(
            replace(
                row,
                traceback=clip_end(row.traceback, traceback) if traceback else "",
                error=clip(row.error, error) if error else "",
                detail=clip(row.detail, detail) if detail else "",
            )
            for row in snapshot.clients
        )
    return replace(snapshot, clients=clients, logs=tuple(reversed(logs)))
