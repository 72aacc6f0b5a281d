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
