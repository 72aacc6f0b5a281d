"""The server's clients and rounds as the feed shows them (see :mod:`flcore.feed`)."""

from __future__ import annotations

from flcore.feed import ClientRow, RoundRecord
from flserverd.registry import RegisteredClient
from flserverd.statedb import RoundSummary


def client_row(s: RegisteredClient) -> ClientRow:
    """A registered client as one row of the clients table, as it is now."""
    return ClientRow(
        instance=s.instance,
        client_name=s.client_name,
        token=s.token,
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
