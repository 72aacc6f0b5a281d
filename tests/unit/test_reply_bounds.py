"""Replies and snapshots fit one gRPC message however much the sites wrote
(flserverd.commands.fit_reply, flserverd.views.fit_snapshot), and what sites send is clipped
(flcore.feed.clip, clip_end)."""

from __future__ import annotations

import json

from flcore.feed import (
    ClientRow,
    FeedEvent,
    LogEntry,
    RunInfo,
    ServerInfo,
    Snapshot,
    clip,
    clip_end,
)
from flcore.feedwire import event_to_proto
from flcore.tls import MAX_MESSAGE_BYTES
from flserverd.commands import MAX_REPLY_BYTES, Reply, fit_reply
from flserverd.views import SNAPSHOT_CLIENT_BYTES, SNAPSHOT_LOG_BYTES, fit_snapshot

TRACE = "Traceback (most recent call last):\n" + "  frame\n" * 8000 + "ValueError: at the end"


def _size(reply: Reply) -> int:
    return len(reply.text.encode()) + len(json.dumps(reply.data).encode())


def test_clip_keeps_the_start_and_clip_end_the_end_each_within_its_limit() -> None:
    assert clip("short", 10) == "short" and clip_end("short", 10) == "short"
    head, tail = clip(TRACE, 1000), clip_end(TRACE, 1000)
    assert len(head) <= 1000 and head.startswith("Traceback") and "characters cut" in head
    assert len(tail) <= 1000 and tail.endswith("ValueError: at the end")


def test_a_small_reply_is_left_alone() -> None:
    reply = Reply(True, "ok", {"clients": {"a": {"traceback": "short"}}})
    assert fit_reply(reply) is reply


def test_a_reply_with_many_long_tracebacks_fits_and_says_so() -> None:
    rows = {f"site_{i}": {"status": "training failed", "traceback": TRACE} for i in range(60)}
    lines = "\n".join(f"instance:site_{i} : error: {'e' * 4000}" for i in range(60))
    reply = Reply(True, lines, {"clients": rows})
    assert _size(reply) > MAX_MESSAGE_BYTES
    fitted = fit_reply(reply)
    assert _size(fitted) <= MAX_REPLY_BYTES
    assert fitted.data["truncated"] is True and "shortened to fit" in fitted.text
    row = fitted.data["clients"]["site_59"]
    assert row["status"] == "training failed"
    assert row["traceback"].endswith("ValueError: at the end")  # the end is what matters


def test_a_reply_whose_text_alone_is_too_big_still_fits() -> None:
    fitted = fit_reply(Reply(True, "x" * (8 * 1024 * 1024), {"n": ["y" * 5_000_000]}))
    assert _size(fitted) <= MAX_REPLY_BYTES and fitted.data["truncated"] is True


def _snapshot(clients: int, logs: int) -> Snapshot:
    return Snapshot(
        server=ServerInfo("p", "server"),
        run=RunInfo(),
        clients=tuple(
            ClientRow(f"site_{i}", "site", error="e" * 4096, traceback=TRACE[-16384:])
            for i in range(clients)
        ),
        logs=tuple(LogEntry(float(i), "INFO", "x", f"{i} " + "l" * 4090, "s") for i in range(logs)),
    )


def test_a_snapshot_keeps_every_client_and_the_newest_logs_within_its_budget() -> None:
    fitted = fit_snapshot(_snapshot(clients=300, logs=2000))
    assert len(fitted.clients) == 300
    assert sum(len(c.traceback) + len(c.error) for c in fitted.clients) < SNAPSHOT_CLIENT_BYTES
    assert fitted.clients[0].traceback.endswith("ValueError: at the end")
    assert sum(len(line.message) for line in fitted.logs) <= SNAPSHOT_LOG_BYTES
    assert fitted.logs[-1].message.startswith("1999 ")  # newest kept, in order
    assert [line.time for line in fitted.logs] == sorted(line.time for line in fitted.logs)


def _wire_bytes(snapshot: Snapshot) -> int:
    return event_to_proto(FeedEvent(1, 0.0, snapshot)).ByteSize()


def test_a_snapshot_of_four_byte_characters_still_fits_one_message() -> None:
    """Budgets once counted characters: four instances of one kit sending the most the server
    keeps, all in emoji, made a 4.5 MB snapshot and no console could open its feed."""
    wide = "\U0001f600"  # four bytes in UTF-8, one character
    rows = tuple(
        ClientRow(
            f"site_{i}",
            "site",
            error=wide * 4096,
            traceback=wide * 16384,
            detail=wide * 4096,
        )
        for i in range(4)
    )
    logs = tuple(LogEntry(float(i), "INFO", "x", wide * 4096, "site_0") for i in range(2000))
    snapshot = Snapshot(ServerInfo("p", "server"), RunInfo(), clients=rows, logs=logs)
    assert _wire_bytes(snapshot) > MAX_MESSAGE_BYTES
    fitted = fit_snapshot(snapshot)
    assert _wire_bytes(fitted) < MAX_MESSAGE_BYTES
    assert len(fitted.clients) == 4 and fitted.logs[-1] == logs[-1]


def test_a_small_snapshot_is_whole() -> None:
    snapshot = _snapshot(clients=3, logs=10)
    assert fit_snapshot(snapshot) == snapshot
