"""The server's clients and rounds as the feed shows them (see :mod:`flcore.feed`)."""

from __future__ import annotations

from flcore import status as st
from flcore.feed import ClientRow, RoundRecord
from flcore.status import ClientStatus
from flserverd.registry import RegisteredClient
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
        token=s.token,
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


def round_record(summary: RoundSummary) -> RoundRecord:
    """A completed round as the feed shows it."""
    return RoundRecord(
        round=summary.round,
        metrics=dict(summary.metrics),
        clients=len(summary.clients),
        seconds=summary.duration_s,
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
