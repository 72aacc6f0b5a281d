"""The server's clients and rounds as the feed shows them (see :mod:`flcore.feed`)."""

from __future__ import annotations

from dataclasses import replace

from flcore.feed import ClientRow, LogEntry, RoundRecord, Snapshot, clip, clip_end
from flserverd.registry import RegisteredClient
from flserverd.statedb import RoundSummary


def client_row(s: RegisteredClient) -> ClientRow:
    """A registered client as one row of the clients table, as it is now."""
    return ClientRow(
        instance=s.instance,
        client_name=s.client_name,
        token_id=s.token_id,
        org=s.org,
        status=s.status.status,
        last_heartbeat=s.last_heartbeat,
        connected_at=s.connected_at,
        run_number=s.status.run_number,
        round=s.status.round,
        samples=s.status.samples,
        device=s.machine.device,
        gpu_count=s.machine.gpu_count,
        error=s.status.error,
        traceback=s.status.traceback,
        app=s.status.app,
        hostname=s.machine.hostname,
        connected=s.connected,
        detail=s.status.detail,
    )


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


SNAPSHOT_LOG_BYTES = 1024 * 1024
"""The newest log lines that fit here go into a console's snapshot (the ring holds more)."""
SNAPSHOT_CLIENT_BYTES = 2 * 1024 * 1024
"""Client rows above this shed their tracebacks, then their errors, in the snapshot."""
ROW_OVERHEAD = 128
"""Bytes a row or a log line costs on the wire beyond its texts (numbers, field tags)."""
SHED_STEPS = ((1024, 1024), (0, 256), (0, 0))
"""(traceback, error) characters each row keeps at each step of shedding."""


def _row_bytes(row: ClientRow) -> int:
    texts = (row.instance, row.client_name, row.org, row.status, row.device, row.error)
    return ROW_OVERHEAD + sum(len(t) for t in (*texts, row.traceback, row.app, row.hostname))


def _log_bytes(line: LogEntry) -> int:
    return ROW_OVERHEAD + len(line.message) + len(line.logger) + len(line.source)


def fit_snapshot(snapshot: Snapshot) -> Snapshot:
    """A snapshot that fits one gRPC message however much the sites wrote.

    A site controls its error, traceback and log lines; many instances each
    sending the most the server keeps would make a snapshot larger than the
    message limit, and no console could connect. The newest log lines are
    kept up to :data:`SNAPSHOT_LOG_BYTES`; client rows above
    :data:`SNAPSHOT_CLIENT_BYTES` keep only the end of their tracebacks, then
    less of their errors. Every row is kept, and the next change of a row
    sends it whole.
    """
    logs: list[LogEntry] = []
    budget = SNAPSHOT_LOG_BYTES
    for line in reversed(snapshot.logs):
        budget -= _log_bytes(line)
        if budget < 0:
            break
        logs.append(line)
    clients = snapshot.clients
    for traceback, error in SHED_STEPS:
        if sum(_row_bytes(row) for row in clients) <= SNAPSHOT_CLIENT_BYTES:
            break
        clients = tuple(
            replace(
                row,
                traceback=clip_end(row.traceback, traceback) if traceback else "",
                error=clip(row.error, error) if error else "",
            )
            for row in snapshot.clients
        )
    return replace(snapshot, clients=clients, logs=tuple(reversed(logs)))
