"""flcore.feedwire's batches: what queued up for a console travels as one message, bounded."""

from __future__ import annotations

from flcore.feed import (
    MAX_BATCH_EVENTS,
    MAX_TEXT,
    Body,
    ClientGone,
    ClientRow,
    CommandSeen,
    FeedEvent,
    Heartbeat,
    LogEntry,
    RoundRecord,
    RunInfo,
    ServerStopping,
)
from flcore.feedwire import MAX_BATCH_BYTES, events_from_proto, feed_messages
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.tls import MAX_MESSAGE_BYTES


def _events(*bodies: Body) -> list[FeedEvent]:
    return [FeedEvent(seq, 1000.0 + seq, body) for seq, body in enumerate(bodies, 1)]


def _received(messages: list[admin_pb2.Event]) -> list[FeedEvent]:
    """What a console decodes from these messages after they crossed the wire."""
    events: list[FeedEvent] = []
    for message in messages:
        events.extend(events_from_proto(admin_pb2.Event.FromString(message.SerializeToString())))
    return events


def _beats(count: int) -> list[FeedEvent]:
    return _events(*(Heartbeat(f"flclient{i:04d}:1", 2000.0 + i) for i in range(count)))


def test_events_that_queued_together_cross_as_one_message_in_order() -> None:
    events = _events(
        Heartbeat("flclient1:1", 1.5),
        ClientRow("flclient1:1", "flclient1", status="training started", round=3),
        LogEntry(2.0, "INFO", "flclient1.train", "epoch 1 done", "flclient1:1"),
        RunInfo(run_number=2, current_round=3, history=(RoundRecord(2, {"acc": 0.5}, 2),)),
        Heartbeat("flclient2:1", 2.5),
        CommandSeen("admin@x.org", "check_status server", True),
        ClientGone("flclient2:1", "no heartbeat"),
        ServerStopping("admin@x.org", admin=True),
    )
    messages = list(feed_messages(events))
    assert len(messages) == 1 and messages[0].WhichOneof("body") == "batch"
    assert (messages[0].seq, messages[0].time) == (events[-1].seq, events[-1].time)
    assert _received(messages) == events


def test_an_event_alone_goes_as_itself() -> None:
    (message,) = feed_messages(_beats(1))
    assert message.WhichOneof("body") == "heartbeat"
    assert _received([message]) == _beats(1)


def test_batches_are_bounded_in_count() -> None:
    events = _beats(2 * MAX_BATCH_EVENTS + 1)
    messages = list(feed_messages(events))
    assert [len(m.batch.events) for m in messages[:2]] == [MAX_BATCH_EVENTS] * 2
    assert messages[2].WhichOneof("body") == "heartbeat"
    assert _received(messages) == events


def test_batches_are_bounded_in_bytes_under_the_message_limit() -> None:
    assert MAX_BATCH_BYTES < MAX_MESSAGE_BYTES
    line = "x" * MAX_TEXT
    row = ClientRow("a:1", "a", error=line, traceback=line * 4, detail=line)
    events = _events(*([row] * 200 + [LogEntry(1.0, "ERROR", "x", line, "a:1")] * 300))
    messages = list(feed_messages(events))
    assert len(messages) > 1
    assert all(m.ByteSize() <= MAX_BATCH_BYTES for m in messages)
    assert all(m.ByteSize() > MAX_BATCH_BYTES / 2 for m in messages[:-1])  # filled, not split
    assert _received(messages) == events


def test_a_console_skips_what_it_does_not_know_inside_a_batch_and_never_nests() -> None:
    """A kind from a newer server is skipped as it is alone; a batch inside a batch is not
    opened; past MAX_BATCH_EVENTS nothing is read. Each leaves a gap in the sequence
    numbers, which makes the console fetch a fresh snapshot."""
    inner = admin_pb2.Event(
        seq=2, batch=admin_pb2.EventBatch(events=[admin_pb2.Event(seq=1, time=1.0)])
    )
    known = admin_pb2.Event(seq=4, heartbeat=admin_pb2.HeartbeatSeen(instance="a:1", time=3.0))
    message = admin_pb2.Event(
        seq=4, batch=admin_pb2.EventBatch(events=[admin_pb2.Event(seq=1), inner, known])
    )
    assert events_from_proto(message) == [FeedEvent(4, 0.0, Heartbeat("a:1", 3.0))]
    assert events_from_proto(admin_pb2.Event(seq=9)) == []

    beats = [admin_pb2.Event(seq=i, heartbeat=known.heartbeat) for i in range(1, 1202)]
    flood = admin_pb2.Event(seq=1201, batch=admin_pb2.EventBatch(events=beats))
    assert len(events_from_proto(flood)) == MAX_BATCH_EVENTS


def test_a_site_string_in_a_batch_is_cleaned_for_the_terminal() -> None:
    events = _events(Heartbeat("evil\x1b[2J:1", 1.0), Heartbeat("b:1", 2.0))
    received = _received(list(feed_messages(events)))
    assert [e.body for e in received] == [Heartbeat("evil\ufffd[2J:1", 1.0), Heartbeat("b:1", 2.0)]


def test_batches_nested_deep_are_read_as_nothing_without_recursion() -> None:
    """Deeper than this the protobuf parser refuses the message itself (its depth limit)."""
    message = admin_pb2.Event(seq=1, heartbeat=admin_pb2.HeartbeatSeen(instance="a:1"))
    for depth in range(2, 40):
        message = admin_pb2.Event(seq=depth, batch=admin_pb2.EventBatch(events=[message]))
    received = admin_pb2.Event.FromString(message.SerializeToString())
    assert events_from_proto(received) == []
