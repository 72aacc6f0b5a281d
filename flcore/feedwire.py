"""The live feed on the wire: :mod:`flcore.feed` data to and from ``flstack_admin.proto``.

The server converts what it publishes here and the console converts what it
receives here, so both ends agree by construction. Only this module, the
servicers and the admin client see generated protobuf code. Every string
received passes :func:`flcore.feed.printable` here, once, so no pane of the
console can draw a site's escape sequence.

Events that queued up for one console travel as one ``EventBatch`` message
(:func:`feed_messages`), bounded in count and bytes: one gRPC message per
event made the feed a write and a turn of the server's loop per heartbeat,
and any longer turn queued heartbeats behind it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict

from flcore.feed import (
    MAX_BATCH_EVENTS,
    MAX_TEXT,
    MAX_TRACEBACK,
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
    ServerStopping,
    Snapshot,
    Tick,
    clip,
    clip_end,
    printable,
)
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.tls import MAX_MESSAGE_BYTES

MAX_BATCH_BYTES = MAX_MESSAGE_BYTES // 4
"""The most bytes of events one batch holds, well under the feed's message limit (a
single event larger than this, which the server's own bounds do not make, goes alone)."""
_IN_BATCH = 6
"""Bytes an event costs inside a batch beyond its own: a field tag and a length."""


def server_to_proto(info: ServerInfo) -> admin_pb2.ServerInfo:
    """The server's identity and heartbeat timing, for the wire."""
    return admin_pb2.ServerInfo(**asdict(info))


def _shown(text: str) -> str:
    """A string of the server's as the console keeps it: at most what the server itself
    keeps of one (a broken server's megabyte strings would fill the admin's memory), safe
    to draw."""
    return printable(clip(text, MAX_TEXT))


LAST_STAMP = 1e11
"""Later than any time a server means (the year 5138): a stamp beyond it, or a NaN, is no
time, and drawing it (an age, a clock) took the console down."""


def _stamp(value: float) -> float:
    """A time from the server, or 0 (unknown) when it is none."""
    return value if 0.0 <= value < LAST_STAMP else 0.0


def _seconds(value: float, default: float) -> float:
    """A positive duration from the server, or ``default`` when it is none."""
    return value if 0.0 < value < LAST_STAMP else default


def server_from_proto(message: admin_pb2.ServerInfo) -> ServerInfo:
    """The server's identity and heartbeat timing."""
    return ServerInfo(
        project=_shown(message.project),
        name=_shown(message.name),
        fed_target=_shown(message.fed_target),
        admin_target=_shown(message.admin_target),
        started_at=_stamp(message.started_at),
        version=_shown(message.version),
        heart_beat_timeout_s=_seconds(message.heart_beat_timeout_s, 600.0),
        heartbeat_interval_s=_seconds(message.heartbeat_interval_s, 60.0),
    )


def client_to_proto(row: ClientRow) -> admin_pb2.ClientState:
    """One row of the clients table, for the wire."""
    return admin_pb2.ClientState(**asdict(row))


def client_from_proto(message: admin_pb2.ClientState) -> ClientRow:
    """One row of the clients table."""
    return ClientRow(
        instance=_shown(message.instance),
        client_name=_shown(message.client_name),
        token_id=_shown(message.token_id),
        org=_shown(message.org),
        status=_shown(message.status),
        last_heartbeat=_stamp(message.last_heartbeat),
        connected_at=_stamp(message.connected_at),
        run_number=message.run_number,
        round=message.round,
        samples=message.samples,
        device=_shown(message.device),
        gpu_count=message.gpu_count,
        error=_shown(message.error),
        traceback=printable(clip_end(message.traceback, MAX_TRACEBACK)),
        app=_shown(message.app),
        hostname=_shown(message.hostname),
        connected=message.connected,
        detail=_shown(message.detail),
        cross_validate=message.cross_validate,
    )


def run_to_proto(run: RunInfo) -> admin_pb2.RunState:
    """The run and its round progress, for the wire."""
    fields = asdict(run)
    fields["history"] = [admin_pb2.RoundMetrics(**asdict(r)) for r in run.history]
    return admin_pb2.RunState(**fields)


def _names(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(_shown(value) for value in values)


def run_from_proto(message: admin_pb2.RunState) -> RunInfo:
    """The run and its round progress."""
    return RunInfo(
        run_number=message.run_number,
        server_status=_shown(message.server_status),
        app=_shown(message.app),
        start_round=message.start_round,
        current_round=message.current_round,
        num_rounds=message.num_rounds,
        min_num_clients=message.min_num_clients,
        max_num_clients=message.max_num_clients,
        updates_received=message.updates_received,
        contributed=_names(message.contributed),
        awaited=_names(message.awaited),
        wait_deadline=_stamp(message.wait_deadline),
        history=tuple(
            RoundRecord(
                r.round,
                {_shown(k): v for k, v in r.metrics.items()},
                r.clients,
                r.seconds,
                {_shown(k): v for k, v in r.outliers.items()},
            )
            for r in message.history
        ),
        failed_sites=_names(message.failed_sites),
        phase=_shown(message.phase),
        best_metric=_shown(message.best_metric),
        reason=_shown(message.reason),
        site_errors={_shown(k): _shown(v) for k, v in message.site_errors.items()},
        blocked=_shown(message.blocked),
        fault=_shown(message.fault),
    )


def log_to_proto(entry: LogEntry) -> common_pb2.LogRecord:
    """One log line, for the wire."""
    return common_pb2.LogRecord(**asdict(entry))


def log_from_proto(message: common_pb2.LogRecord) -> LogEntry:
    """One log line."""
    return LogEntry(
        _stamp(message.time),
        _shown(message.level),
        _shown(message.logger),
        _shown(message.message),
        _shown(message.source),
    )


def event_to_proto(event: FeedEvent) -> admin_pb2.Event:
    """One feed event, for the wire."""
    out = admin_pb2.Event(seq=event.seq, time=event.time)
    body = event.body
    if isinstance(body, Snapshot):
        out.snapshot.CopyFrom(
            admin_pb2.Snapshot(
                server=server_to_proto(body.server),
                run=run_to_proto(body.run),
                clients=[client_to_proto(c) for c in body.clients],
                logs=[log_to_proto(line) for line in body.logs],
            )
        )
    elif isinstance(body, ClientRow):
        out.client.CopyFrom(client_to_proto(body))
    elif isinstance(body, ClientGone):
        out.client_gone.CopyFrom(admin_pb2.ClientGone(instance=body.instance, reason=body.reason))
    elif isinstance(body, RunInfo):
        out.run.CopyFrom(run_to_proto(body))
    elif isinstance(body, LogEntry):
        out.log.CopyFrom(log_to_proto(body))
    elif isinstance(body, Heartbeat):
        out.heartbeat.CopyFrom(admin_pb2.HeartbeatSeen(instance=body.instance, time=body.time))
    elif isinstance(body, ServerStopping):
        out.stopping.CopyFrom(admin_pb2.ServerStopping(by=body.by, admin=body.admin))
    elif isinstance(body, Tick):
        out.tick.SetInParent()
    else:
        out.command.CopyFrom(admin_pb2.CommandAudit(user=body.user, line=body.line, ok=body.ok))
    return out


def feed_messages(events: Sequence[FeedEvent]) -> Iterator[admin_pb2.Event]:
    """The wire messages for events that queued up together, in their order: an event
    alone as itself, more as batches of at most ``MAX_BATCH_EVENTS`` events and
    ``MAX_BATCH_BYTES`` bytes."""
    pending: list[admin_pb2.Event] = []
    size = 0
    for event in events:
        message = event_to_proto(event)
        cost = message.ByteSize() + _IN_BATCH
        if pending and (len(pending) >= MAX_BATCH_EVENTS or size + cost > MAX_BATCH_BYTES):
            yield _packed(pending)
            pending, size = [], 0
        pending.append(message)
        size += cost
    if pending:
        yield _packed(pending)


def _packed(messages: list[admin_pb2.Event]) -> admin_pb2.Event:
    if len(messages) == 1:
        return messages[0]
    last = messages[-1]
    return admin_pb2.Event(
        seq=last.seq, time=last.time, batch=admin_pb2.EventBatch(events=messages)
    )


def events_from_proto(message: admin_pb2.Event) -> list[FeedEvent]:
    """The events one wire message carries, in order: itself, a batch's (at most
    ``MAX_BATCH_EVENTS``), or none for a kind this console does not know (a newer server;
    the gap in sequence numbers it leaves makes the console take a fresh snapshot)."""
    if message.WhichOneof("body") == "batch":
        inner = message.batch.events[:MAX_BATCH_EVENTS]
        return [event for event in map(event_from_proto, inner) if event is not None]
    event = event_from_proto(message)
    return [] if event is None else [event]


def event_from_proto(message: admin_pb2.Event) -> FeedEvent | None:
    """One feed event, or None for a kind this console does not know (a newer server) and
    for a batch (only :func:`events_from_proto` opens one, so a batch never nests)."""
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
        gone = message.client_gone
        body = ClientGone(_shown(gone.instance), _shown(gone.reason))
    elif kind == "run":
        body = run_from_proto(message.run)
    elif kind == "log":
        body = log_from_proto(message.log)
    elif kind == "heartbeat":
        body = Heartbeat(_shown(message.heartbeat.instance), _stamp(message.heartbeat.time))
    elif kind == "command":
        command = message.command
        body = CommandSeen(_shown(command.user), _shown(command.line), command.ok)
    elif kind == "stopping":
        body = ServerStopping(_shown(message.stopping.by), message.stopping.admin)
    elif kind == "tick":
        body = Tick()
    else:
        return None
    return FeedEvent(message.seq, _stamp(message.time), body)
