"""The console's logic without a screen: store, serde, completion, filters, targets, draft."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from flcore.feed import ClientGone, ClientRow, FeedEvent, Heartbeat, LogEntry, RunInfo, Snapshot
from flcore.feedwire import event_from_proto
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from fltui.completion import complete
from fltui.logfilter import LogFilter
from fltui.status import LOST, OFFLINE, ONLINE, STALE, age, health, short_token
from fltui.store import BEAT, DOWN, GONE, UP, Store
from fltui.targets import describe_stop, target_choices
from fltui.widgets.logview import printable
from fltui.wizard.draft import Draft, section
from fltui.wizard.kits import save_passwords
from provision import parse_project
from tests.tui.recorded import NOW, SERVER, recorded_events


def snapshot_store(*rows: ClientRow, seq: int = 10) -> Store:
    store = Store(log_limit=100)
    store.apply(FeedEvent(seq, NOW, Snapshot(SERVER, RunInfo(), rows)))
    store.take_changes()
    return store


def test_store_folds_deltas_and_skips_what_the_snapshot_had() -> None:
    store = snapshot_store(ClientRow("a", "a", last_heartbeat=NOW - 5))
    assert store.apply(FeedEvent(9, NOW, Heartbeat("a", NOW)))  # queued before the snapshot
    assert store.clients["a"].last_heartbeat == NOW - 5
    assert store.apply(FeedEvent(11, NOW, Heartbeat("a", NOW)))
    assert store.clients["a"].last_heartbeat == NOW
    assert store.apply(FeedEvent(12, NOW, ClientRow("b", "b", connected=True)))
    changes = store.take_changes()
    assert changes.beating == {"a"} and changes.clients == {"b"} and changes.statuses
    assert not store.take_changes()


def test_store_tells_a_gap_and_keeps_gone_clients_until_the_next_snapshot() -> None:
    store = snapshot_store(ClientRow("a", "a"))
    assert not store.apply(FeedEvent(12, NOW, Heartbeat("a", NOW)))  # 11 went missing
    assert store.apply(FeedEvent(13, NOW, ClientGone("a", "heartbeat timeout")))
    assert store.gone == {"a": "heartbeat timeout"} and "a" in store.clients
    store.apply(FeedEvent(20, NOW, Snapshot(SERVER, RunInfo(), ())))
    assert store.clients == {} and store.gone == {}


def test_heartbeat_history_marks_links_going_down_and_up() -> None:
    store = snapshot_store(ClientRow("a", "a", last_heartbeat=NOW - 9))
    store.apply(FeedEvent(11, NOW, ClientRow("a", "a", connected=False, last_heartbeat=NOW - 8)))
    store.apply(FeedEvent(12, NOW, ClientRow("a", "a", connected=True, last_heartbeat=NOW - 7)))
    store.apply(FeedEvent(13, NOW, Heartbeat("a", NOW - 6)))
    store.apply(FeedEvent(14, NOW, ClientGone("a", "shutdown")))
    assert [b.kind for b in store.beats["a"]] == [BEAT, DOWN, UP, BEAT, GONE]


def test_logs_are_bounded_and_a_resubscription_does_not_repeat_them() -> None:
    store = snapshot_store()
    lines = [LogEntry(NOW + i, "INFO", "x", f"line {i}", "server") for i in range(150)]
    for seq, line in enumerate(lines, start=11):
        store.apply(FeedEvent(seq, NOW, line))
    assert len(store.logs) == 100 and store.logs[-1].message == "line 149"
    assert store.take_changes().reset  # nobody drew 150 lines: the next repaint redraws all
    store.apply(FeedEvent(500, NOW, Snapshot(SERVER, RunInfo(), (), tuple(lines[-20:]))))
    assert len(store.logs) == 100 and store.logs[-1].message == "line 149"


def test_serde_converts_every_event_kind() -> None:
    snapshot = admin_pb2.Event(
        seq=5,
        time=NOW,
        snapshot=admin_pb2.Snapshot(
            server=admin_pb2.ServerInfo(project="p", name="s", heartbeat_interval_s=2),
            run=admin_pb2.RunState(
                run_number=1,
                awaited=["a"],
                history=[admin_pb2.RoundMetrics(round=0, metrics={"val_accuracy": 0.5})],
            ),
            clients=[admin_pb2.ClientState(instance="a", client_name="a", token="t")],
            logs=[common_pb2.LogRecord(time=NOW, level="INFO", message="hi", source="server")],
        ),
    )
    event = event_from_proto(snapshot)
    assert event is not None and isinstance(event.body, Snapshot)
    assert event.body.run.awaited == ("a",)
    assert event.body.run.history[0].metrics == {"val_accuracy": 0.5}
    assert event.body.clients[0].token == "t" and event.body.server.heartbeat_interval_s == 2
    gone = event_from_proto(admin_pb2.Event(seq=6, client_gone=admin_pb2.ClientGone(instance="a")))
    assert gone is not None and gone.body == ClientGone("a", "")


def test_health_and_ages_read_as_glyph_word_and_tone() -> None:
    row = ClientRow("a", "a", last_heartbeat=NOW - 2)
    assert health(row, NOW, 1.0, gone=False) is ONLINE
    assert health(row, NOW + 10, 1.0, gone=False) is STALE
    assert health(ClientRow("a", "a", connected=False), NOW, 1.0, gone=False) is OFFLINE
    assert health(row, NOW, 1.0, gone=True) is LOST
    assert ONLINE.label == "● online" and LOST.tone == "error"
    assert [age(s) for s in (0.4, 99, 100, 6000, 200_000)] == ["0s", "99s", "1m", "1h", "2d"]
    assert short_token("5c1e0a2f-4c1e-4f6a-9b1d-3e5f7a9c0b2d") == "5c1e0a2f…"


@pytest.mark.parametrize(
    ("typed", "completed"),
    [
        ("ch", "check_status"),
        ("check_status ", "check_status server"),
        ("check_status cl", "check_status client"),
        ("abort client flclient1 ", "abort client flclient1 flclient2"),
        ("deploy d", "deploy digits_fedavg"),
        ("deploy digits_fedavg c", "deploy digits_fedavg client"),
        ("validate ", "validate all"),
        ("start_mgpu client 2 f", "start_mgpu client 2 flclient1"),
        ("set_run_number 1", None),
        ("nonsense", None),
    ],
)
def test_command_completion(typed: str, completed: str | None) -> None:
    assert complete(typed, ["flclient1", "flclient2"], ["digits_fedavg"]) == completed


def test_log_filter_words() -> None:
    entry = LogEntry(NOW, "WARNING", "flclientd.session", "Lost the server", "flclient1")
    assert LogFilter.parse("src:flclient1 lost").accepts(entry)
    assert LogFilter.parse("@flclient1 @server level:warning").accepts(entry)
    assert not LogFilter.parse("level:error").accepts(entry)
    assert not LogFilter.parse("@server").accepts(entry)
    assert LogFilter.parse("session").accepts(entry)  # the logger name counts too
    assert not LogFilter.parse("")  # the empty filter lets all through
    assert LogFilter.parse("level:loud").text == "level:loud"


def test_targets_and_what_stops() -> None:
    store = Store()
    for event in recorded_events():
        store.apply(event)
    choices = target_choices(store, ["flclient2", "flclient1_1"])
    assert [c.value for c in choices] == ["server", "client", "client flclient2 flclient1_1"]
    assert choices[1].label == "all clients (5)"
    assert describe_stop(store, ["abort", "server"])[0] == (
        "Run 1 (digits_fedavg) on the server, at round 3 of 10."
    )
    lines = describe_stop(store, ["shutdown", "client", "flclient2"])
    assert lines[0] == "flclient2: training started, round 3 (digits_fedavg)"
    assert "each site must start its own again" in lines[-1]


def test_draft_checks_give_flprovisions_messages(tmp_path: Path) -> None:
    draft = Draft.new(tmp_path / "ws")
    draft.name = "bad name"
    assert draft.check_name() is not None and draft.check_name().startswith("project.yml: 'name'")
    draft.name = "ok"
    assert draft.check_name() is None
    assert draft.check_server() == "project.yml: server: missing required key 'org'"
    draft.server["org"] = "lead"
    draft.server["fed_port"] = "80x2"
    assert draft.check_server() == "project.yml: server: 'fed_port' must be an integer, got '80x2'"
    draft.server["fed_port"] = "8002"
    draft.clients = [{"name": "site-a", "org": "a", "email": ""}]
    assert draft.check_client({"name": "site-a", "org": "b", "email": ""}, 1) == (
        "project.yml: clients[1]: duplicate client name 'site-a'"
    )
    assert draft.check_client({"name": "server", "org": "b", "email": ""}, 1) == (
        "project.yml: clients[1]: duplicate client name 'server'"
    )
    draft.settings["heartbeat_interval"] = "700"
    assert "'heartbeat_interval' must be smaller" in (draft.check_settings() or "")
    draft.settings["heartbeat_interval"] = "1"
    assert draft.project() == parse_project(draft.mapping())
    assert section({"email": "", "org": " x "}) == {"org": "x"}


def test_passwords_file_is_created_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "passwords.txt"
    old = os.umask(0)
    try:
        save_passwords(path, ["===> password: x for a.zip"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "===> password: x for a.zip\n"
    with pytest.raises(FileExistsError):
        save_passwords(path, ["again"])


def test_log_lines_cannot_reach_the_terminal_with_control_characters() -> None:
    assert printable("a\x1b[31mred\nb\tc\x07") == "a�[31mred ⏎ b    c�"
