"""A recorded feed of a run in progress, for snapshots and the documentation's screenshot.

Round 3 of 10 of run 1: two sites training, one that failed with a
traceback, a second instance gone silent, a site whose link flaps, round
metrics for the chart and a few log lines. Every time is relative to
:data:`NOW`, the frozen clock of the tests.
"""

from __future__ import annotations

from flcore.feed import (
    ClientRow,
    FeedEvent,
    Heartbeat,
    LogEntry,
    RoundRecord,
    RunInfo,
    ServerInfo,
    Snapshot,
)

NOW = 1_750_000_000.0
INTERVAL = 5.0
TRACEBACK = """Traceback (most recent call last):
  File "/opt/flstack/venv/lib/python3.11/site-packages/flclientd/worker/child.py", line 88, in train
    loss.backward()
RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"""

SERVER = ServerInfo(
    project="hospitals",
    name="server",
    fed_target="fl.example.org:8002",
    admin_target="fl.example.org:8003",
    started_at=NOW - 3600,
    version="0.1.0",
    heart_beat_timeout_s=600,
    heartbeat_interval_s=INTERVAL,
)


def _client(instance: str, **changes: object) -> ClientRow:
    name = instance.split("_")[0]
    base = {
        "instance": instance,
        "client_name": name,
        "token_id": "",
        "org": f"org-{name}",
        "status": "training started",
        "last_heartbeat": NOW - 2,
        "connected_at": NOW - 3000,
        "run_number": 1,
        "round": 3,
        "samples": 1437,
        "device": "cpu",
        "app": "digits_fedavg",
        "hostname": f"{name}.example.org",
    }
    base.update(changes)
    return ClientRow(**base)  # type: ignore[arg-type]


CLIENTS = (
    _client("flclient1", token_id="5c1e0a2f"),
    _client(
        "flclient2",
        token_id="9d3b7e41",
        samples=2210,
        cross_validate=True,
        device="cuda x2 (NVIDIA H100 80GB HBM3)",
        gpu_count=2,
        last_heartbeat=NOW - 4,
    ),
    _client(
        "flclient3",
        token_id="e7f60b12",
        status="training failed",
        round=2,
        error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
        traceback=TRACEBACK,
        device="cuda x1 (NVIDIA A100)",
        gpu_count=1,
    ),
    _client(
        "flclient1_1",
        token_id="0a1b2c3d",
        last_heartbeat=NOW - 40,
        round=2,
        samples=690,
    ),
    _client(
        "site-b",
        client_name="site-b",
        token_id="77aa88bb",
        status="training not started",
        round=-1,
        run_number=0,
        samples=0,
        last_heartbeat=NOW - 125,
        app="",
    ),
)

RUN = RunInfo(
    run_number=1,
    server_status="training started",
    app="digits_fedavg",
    start_round=0,
    current_round=3,
    num_rounds=10,
    min_num_clients=2,
    max_num_clients=100,
    updates_received=1,
    contributed=("flclient1",),
    awaited=("flclient2", "flclient1_1"),
    wait_deadline=NOW + 8,
    history=(
        RoundRecord(0, {"val_accuracy": 0.1111, "val_loss": 2.3026}, 3, 14.0),
        RoundRecord(1, {"val_accuracy": 0.7500, "val_loss": 0.6665}, 3, 1.1),
        RoundRecord(2, {"val_accuracy": 0.9361, "val_loss": 0.2067}, 2, 1.6),
    ),
    failed_sites=("flclient3",),
    site_errors={"flclient3": "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"},
    phase="training",
    best_metric="val_accuracy=0.9361 (round 2)",
)

LOGS = (
    LogEntry(NOW - 30, "INFO", "flserverd.training", "round 2 aggregated from 2 updates", "server"),
    LogEntry(NOW - 29, "INFO", "flserverd.training", "round 3 started (digits_fedavg)", "server"),
    LogEntry(NOW - 25, "INFO", "flclientd.agent", "round 3: training 1 epoch", "flclient1"),
    LogEntry(NOW - 24, "INFO", "flclientd.agent", "round 3: training 1 epoch", "flclient2"),
    LogEntry(
        NOW - 20, "ERROR", "flclientd.worker", "training failed: CUDA out of memory", "flclient3"
    ),
    LogEntry(NOW - 12, "WARNING", "flclientd.session", "lost the server; reconnecting", "site-b"),
    LogEntry(
        NOW - 6, "INFO", "flclientd.agent", "round 3: update sent (1437 samples)", "flclient1"
    ),
    LogEntry(
        NOW - 5, "INFO", "flserverd.training", "round 3: update 1 of min 2 from flclient1", "server"
    ),
)


def _beats() -> list[object]:
    """Regular heartbeats for healthy sites; the second instance stops; site-b flaps."""
    bodies: list[object] = []
    for step in range(24, 0, -1):
        when = NOW - step * INTERVAL + 3
        for row in CLIENTS[:3]:
            bodies.append(Heartbeat(row.instance, when))
        if step > 8:
            bodies.append(Heartbeat("flclient1_1", when))
        if step % 6 not in (1, 2):
            bodies.append(Heartbeat("site-b", when))
    for when, connected in ((NOW - 70, False), (NOW - 55, True), (NOW - 12, False)):
        bodies.append(
            _client(
                "site-b",
                client_name="site-b",
                token_id="77aa88bb",
                status="training not started",
                round=-1,
                run_number=0,
                samples=0,
                connected=connected,
                last_heartbeat=when,
                app="",
            )
        )
    return sorted(bodies, key=lambda b: getattr(b, "time", getattr(b, "last_heartbeat", 0.0)))


def recorded_events() -> list[FeedEvent]:
    """The snapshot, then the heartbeats of the last two minutes, in sequence."""
    events = [FeedEvent(100, NOW - 130, Snapshot(SERVER, RUN, CLIENTS, LOGS))]
    for seq, body in enumerate(_beats(), start=101):
        events.append(FeedEvent(seq, NOW, body))  # type: ignore[arg-type]
    return events


# --------------------------------------------------------------------------- the server's listings

RUNS = {
    "runs": [
        {
            "run_number": 3,
            "app": "digits_fedavg",
            "rounds": "3/10",
            "status": "training started",
            "ending": "",
            "best": "val_accuracy=0.9361 (round 2)",
            "started_at": NOW - 600,
            "ended_at": 0.0,
        },
        {
            "run_number": 2,
            "app": "digits_custom",
            "rounds": "4/10",
            "status": "training stopped",
            "ending": "aborted by admin@lead.org · failed sites: flclient3 (no DATA_ROOT set)",
            "best": "val_accuracy=0.8811 (round 3)",
            "started_at": NOW - 7200,
            "ended_at": NOW - 6600,
        },
        {
            "run_number": 1,
            "app": "digits_fedavg",
            "rounds": "10/10",
            "status": "training stopped",
            "ending": "finished",
            "best": "val_accuracy=0.9744 (final model)",
            "started_at": NOW - 86400,
            "ended_at": NOW - 84000,
        },
    ],
    "page": 1,
    "pages": 1,
    "total": 3,
}
"""What ``list_runs`` answers: three runs, one training, one aborted, one finished."""


def _site(samples: int, accuracy: float, loss: float) -> dict[str, object]:
    return {"samples": samples, "metrics": {"train_loss": loss, "val_accuracy": accuracy}}


RUN_ONE = {
    "run": RUNS["runs"][2],  # type: ignore[index]
    "rounds": [
        {
            "round": r,
            "metrics": {"train_loss": 2.1 / (r + 1), "val_accuracy": 0.1 + 0.09 * r},
            "seconds": 1.5,
            "final": False,
            "sites": {
                "flclient1": _site(1437, 0.1 + 0.09 * r, 2.0 / (r + 1)),
                "flclient2": _site(2210, 0.11 + 0.09 * r, 2.2 / (r + 1)),
            },
        }
        for r in range(3)
    ],
    "page": 1,
    "pages": 4,
    "total": 11,
}
"""What ``show_run 1`` answers: its first rounds, each site's result under its round."""

APPS = {
    "apps": [
        {
            "name": "digits_custom",
            "size": 9216,
            "files": 5,
            "sha256": "3f1c" * 16,
            "uploaded_at": NOW - 7300,
        },
        {
            "name": "digits_fedavg",
            "size": 4210,
            "files": 3,
            "sha256": "9a0e" * 16,
            "uploaded_at": NOW - 700,
        },
    ],
    "page": 1,
    "pages": 1,
    "total": 2,
}

ADMINS = {
    "admins": [
        {
            "user": "admin@lead.org",
            "role": "super",
            "logins": 2,
            "consoles": 1,
            "last_used": NOW - 3,
            "last_command": "start client",
            "last_command_at": NOW - 590,
            "last_ok": True,
        },
        {
            "user": "viewer@lead.org",
            "role": "member",
            "logins": 1,
            "consoles": 1,
            "last_used": NOW - 40,
            "last_command": "list_runs",
            "last_command_at": NOW - 40,
            "last_ok": True,
        },
    ],
    "page": 1,
    "pages": 1,
    "total": 2,
}
LISTINGS = {"list_runs": RUNS, "show_run 1": RUN_ONE, "list_apps": APPS, "list_admins": ADMINS}
"""The recorded server's answers to the read-only listings, by command line."""
