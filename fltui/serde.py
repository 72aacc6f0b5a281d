"""Wire messages of the ``Events`` feed to :mod:`fltui.feed` data: the console's one serde module.

Only this module and :mod:`fltui.adminclient` see generated protobuf code;
the rest of the console works on plain dataclasses.
"""

from __future__ import annotations

from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from fltui.feed import (
    Body,
    ClientGone,
    ClientRow,
    CommandSeen,
    FeedEvent,
    Heartbeat,
    LogEntry,
    RoundRecord,
    RunInfo,
    ServerInfo,
    Snapshot,
)


def server_from_proto(message: admin_pb2.ServerInfo) -> ServerInfo:
    """The server's identity and heartbeat timing."""
    return ServerInfo(
        project=message.project,
        name=message.name,
        fed_target=message.fed_target,
        admin_target=message.admin_target,
        started_at=message.started_at,
        version=message.version,
        heart_beat_timeout_s=message.heart_beat_timeout_s,
        heartbeat_interval_s=message.heartbeat_interval_s,
    )


def client_from_proto(message: admin_pb2.ClientState) -> ClientRow:
    """One row of the clients table."""
    return ClientRow(
        instance=message.instance,
        client_name=message.client_name,
        token=message.token,
        org=message.org,
        status=message.status,
        last_heartbeat=message.last_heartbeat,
        connected_at=message.connected_at,
        run_number=message.run_number,
        round=message.round,
        samples=message.samples,
        device=message.device,
        gpu_count=message.gpu_count,
        error=message.error,
        traceback=message.traceback,
        app=message.app,
        hostname=message.hostname,
        connected=message.connected,
    )


def run_from_proto(message: admin_pb2.RunState) -> RunInfo:
    """The run and its round progress."""
    return RunInfo(
        run_number=message.run_number,
        server_status=message.server_status,
        app=message.app,
        start_round=message.start_round,
        current_round=message.current_round,
        num_rounds=message.num_rounds,
        min_num_clients=message.min_num_clients,
        max_num_clients=message.max_num_clients,
        updates_received=message.updates_received,
        contributed=tuple(message.contributed),
        awaited=tuple(message.awaited),
        wait_deadline=message.wait_deadline,
        history=tuple(
            RoundRecord(r.round, dict(r.metrics), r.clients, r.seconds) for r in message.history
        ),
        failed_sites=tuple(message.failed_sites),
        phase=message.phase,
        best_metric=message.best_metric,
    )


def log_from_proto(message: common_pb2.LogRecord) -> LogEntry:
    """One log line."""
    return LogEntry(message.time, message.level, message.logger, message.message, message.source)


def event_from_proto(message: admin_pb2.Event) -> FeedEvent | None:
    """One feed event, or None for a kind this console does not know (a newer server)."""
    kind = message.WhichOneof("body")
    body: Body
    if kind == "snapshot":
        snap = message.snapshot
        body = Snapshot(
            server=server_from_proto(snap.server),
            run=run_from_proto(snap.run),
            clients=tuple(client_from_proto(c) for c in snap.clients),
            logs=tuple(log_from_proto(line) for line in snap.logs),
        )
    elif kind == "client":
        body = client_from_proto(message.client)
    elif kind == "client_gone":
        body = ClientGone(message.client_gone.instance, message.client_gone.reason)
    elif kind == "run":
        body = run_from_proto(message.run)
    elif kind == "log":
        body = log_from_proto(message.log)
    elif kind == "heartbeat":
        body = Heartbeat(message.heartbeat.instance, message.heartbeat.time)
    elif kind == "command":
        body = CommandSeen(message.command.user, message.command.line, message.command.ok)
    else:
        return None
    return FeedEvent(message.seq, message.time, body)
