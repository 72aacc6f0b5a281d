"""The console's logic without a screen: store, serde, completion, filters, targets, draft."""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import cast

import pytest
from google.protobuf.message import Message

from fladmin.client import AdminClient, CommandReply
from flcore import status as st
from flcore.feed import ClientGone, ClientRow, FeedEvent, Heartbeat, LogEntry, RunInfo, Snapshot
from flcore.feedwire import event_from_proto
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flserverd.commands import COMMANDS
from flserverd.confirm import Confirmation, question
from fltui.cli import execute, parse_args
from fltui.completion import complete
from fltui.logfilter import LogFilter
from fltui.status import LEFT, LOST, OFFLINE, ONLINE, REVOKED, STALE, age, health
from fltui.store import BEAT, DOWN, GONE, KEPT_GONE, KEPT_HISTORIES, UP, Store
from fltui.targets import target_choices
from fltui.vocabulary import COMMAND_NAMES, READ_ONLY, refusal
from fltui.widgets.logview import one_line
from fltui.widgets.roundpane import best_label
from fltui.wizard.draft import Draft, section
from provision import (
    PasswordsFile,
    ProvisionError,
    WrittenKit,
    parse_project,
)
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
    assert changes.beats and changes.clients == {"b"} and changes.statuses
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


def test_heartbeat_history_survives_a_server_restart() -> None:
    """Issue 10, defect 6: a restarted server's first snapshot lists no site yet."""
    store = snapshot_store(ClientRow("a", "a", last_heartbeat=NOW - 9))
    store.apply(FeedEvent(11, NOW, Heartbeat("a", NOW - 4)))
    before = list(store.beats["a"])
    store.apply(FeedEvent(1, NOW, Snapshot(SERVER, RunInfo(), ())))  # the restarted server
    store.apply(FeedEvent(2, NOW, ClientRow("a", "a", connected=True, last_heartbeat=NOW)))
    assert list(store.beats["a"])[: len(before)] == before
    assert [b.kind for b in store.beats["a"]][-1] == UP


def test_best_names_only_rounds_the_run_has() -> None:
    """Issue 10, defect 11: the final validation reports as round num_rounds."""
    run = RunInfo(num_rounds=8, best_metric="val_accuracy=0.7889 (round 8)")
    assert best_label(run) == "0.7889 (final model)"
    assert best_label(replace(run, best_metric="0.7000 (round 5)")) == "0.7000 (round 5)"


def test_a_member_may_run_only_read_only_commands() -> None:
    assert refusal("abort", "member") == "member role: read-only (abort needs the super role)"
    assert refusal("check_status", "member") is None
    assert refusal("set_timeout", "member") is None
    assert refusal("abort", "super") is None
    assert refusal("delete_run", "member") == (
        "member role: read-only (delete_run needs the super role)"
    )


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
            clients=[admin_pb2.ClientState(instance="a", client_name="a", token_id="t")],
            logs=[common_pb2.LogRecord(time=NOW, level="INFO", message="hi", source="server")],
        ),
    )
    event = event_from_proto(snapshot)
    assert event is not None and isinstance(event.body, Snapshot)
    assert event.body.run.awaited == ("a",)
    assert event.body.run.history[0].metrics == {"val_accuracy": 0.5}
    assert event.body.clients[0].token_id == "t" and event.body.server.heartbeat_interval_s == 2
    gone = event_from_proto(admin_pb2.Event(seq=6, client_gone=admin_pb2.ClientGone(instance="a")))
    assert gone is not None and gone.body == ClientGone("a", "")


def test_health_and_ages_read_as_glyph_word_and_tone() -> None:
    row = ClientRow("a", "a", last_heartbeat=NOW - 2)
    assert health(row, NOW, 1.0, gone=None) is ONLINE
    assert health(row, NOW + 10, 1.0, gone=None) is STALE
    assert health(ClientRow("a", "a", connected=False), NOW, 1.0, gone=None) is OFFLINE
    assert health(row, NOW, 1.0, gone="no heartbeat for 601s") is LOST
    # A client that logged out (shutdown, SIGTERM) left on purpose: no alarm colour.
    assert health(row, NOW, 1.0, gone=st.LOGGED_OUT) is LEFT
    assert health(row, NOW, 1.0, gone=st.REVOKED) is REVOKED  # not an outage: it cannot return
    assert ONLINE.label == "● online" and LOST.tone == "error" and LEFT.tone == "muted"
    assert [age(s) for s in (0.4, 99, 100, 6000, 200_000)] == ["0s", "99s", "1m", "1h", "2d"]


@pytest.mark.parametrize(
    ("typed", "completed"),
    [
        ("ch", "check_status"),
        ("check_status ", "check_status server"),
        ("check_status cl", "check_status client"),
        ("check_status server ", "check_status server clients"),
        ("check_status server clients ", None),
        ("abort server ", None),
        ("abort client flclient1 ", "abort client flclient1 flclient2"),
        ("deploy d", "deploy digits_fedavg"),
        ("deploy digits_fedavg c", "deploy digits_fedavg client"),
        ("validate ", "validate all"),
        ("start_mgpu client 2 f", "start_mgpu client 2 flclient1"),
        ("set_run_number 1", None),
        ("dele", "delete_run"),
        ("delete_run 3", None),
        ("nonsense", None),
    ],
)
def test_command_completion(typed: str, completed: str | None) -> None:
    apps = ["digits_fedavg"]
    assert complete(typed, ["flclient1", "flclient2"], apps, apps) == completed


def test_deploy_completes_the_servers_apps_and_upload_the_local_ones() -> None:
    local, remote = ["only_here"], ["on_server"]
    assert complete("deploy o", [], local, remote) == "deploy on_server"
    assert complete("upload_folder o", [], local, remote) == "upload_folder only_here"
    assert complete("list_r", [], local, remote) == "list_runs"
    assert complete(":ru"[1:], [], local, remote) == "runs"


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
    careful = target_choices(store, ["flclient2", "flclient1_1"], careful=True)
    assert [c.value for c in careful] == ["client flclient2 flclient1_1", "client", "server"]
    # What a stop does is the server's to say (flserverd.confirm), from the same picture.
    abort = asked(store, "abort server")
    assert abort.title == "Abort training: the server"
    assert abort.lines[0] == "Run 1 (digits_fedavg) on the server, at round 3 of 10."
    shutdown = asked(store, "shutdown client flclient2")
    assert shutdown.title == "Shut down: flclient2"
    assert shutdown.heading == "This shuts down:"
    assert shutdown.lines[0] == "flclient2: training started, round 3 (digits_fedavg)"
    assert "each site must start its own again" in shutdown.lines[-1]
    assert asked(store, "shutdown client").title == "Shut down: all clients (5)"


def test_an_abort_lists_only_what_runs_and_says_where_training_sites_go() -> None:
    """Issue 10, defect 8: a confirmation says what will really happen."""
    store = Store()
    for event in recorded_events():
        store.apply(event)
    abort = asked(store, "abort client")
    assert abort.heading == "This stops:"
    listed = [line.split(":")[0] for line in abort.lines if ": training" in line]
    assert listed == ["flclient1", "flclient2", "flclient1_1"]  # not the failed, not the idle
    # Only the site that takes part in cross-site validation moves on to it.
    moving = [line for line in abort.lines if "cross-site validation" in line]
    assert moving == [
        "flclient2 then move on to cross-site validation (cross_validate is on); abort again "
        "to stop that too."
    ]
    assert abort.lines[-1] == "Not training, left as they are: flclient3, site-b."
    # Nothing of site-b's trains: the server asks nothing, and its reply says so.
    assert question(["abort", "client", "site-b"], rows(store, ["site-b"]), store.run, []) is None


def rows(store: Store, names: list[str]) -> list[ClientRow]:
    return [row for name, row in store.clients.items() if not names or name in names]


def asked(store: Store, line: str) -> Confirmation:
    """The server's question for ``line`` about the recorded picture."""
    words = line.split()
    found = question(words, rows(store, words[2:]), store.run, list(store.clients))
    assert found is not None
    return found


def test_draft_checks_give_flprovisions_messages(tmp_path: Path) -> None:
    draft = Draft.new(tmp_path / "ws")
    draft.name = "bad name"
    problem = draft.check_name()
    assert problem is not None and problem.startswith("project.yml: 'name'")
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
    # A site may not take a name flstack uses itself (the server's among them).
    reserved = draft.check_client({"name": "server", "org": "b", "email": ""}, 1) or ""
    assert reserved.startswith("project.yml: clients[1]: 'name' must not be a word flstack uses")
    assert reserved.endswith("got 'server'")
    draft.settings["heartbeat_interval"] = "700"
    assert "'heartbeat_interval' must be smaller" in (draft.check_settings() or "")
    draft.settings["heartbeat_interval"] = "1"
    assert draft.project() == parse_project(draft.mapping())
    assert section({"email": "", "org": " x "}) == {"org": "x"}


def test_passwords_file_is_created_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "passwords.txt"
    kit = WrittenKit("a", "client", tmp_path / "a.zip", "x")
    old = os.umask(0)
    try:
        PasswordsFile(path).write([kit])
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "===> password: x for a.zip\n"
    with pytest.raises(ProvisionError, match="already exists"):
        PasswordsFile(path)


def test_log_lines_cannot_reach_the_terminal_with_control_characters() -> None:
    assert one_line("a\x1b[31mred\nb\tc\x07") == "a�[31mred ⏎ b    c�"


# --------------------------------------------------------------------------- feed strings


def _poison(message: Message) -> None:
    """Put an escape sequence (and a newline) into every string of ``message``, deeply."""
    for spec in message.DESCRIPTOR.fields:
        value = getattr(message, spec.name)
        if spec.message_type is not None and spec.message_type.GetOptions().map_entry:
            text = spec.message_type.fields_by_name["value"].type == spec.TYPE_STRING
            value["metric\x1b[2J"] = POISON if text else 1.0
        elif spec.type == spec.TYPE_STRING:
            if spec.is_repeated:
                value.append(POISON)
            else:
                setattr(message, spec.name, POISON)
        elif spec.type == spec.TYPE_MESSAGE:
            _poison(value.add() if spec.is_repeated else value)


POISON = "x\x1b[2J\x9b\x07\n"


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if is_dataclass(value):
        return [s for f in fields(value) for s in _strings(getattr(value, f.name))]
    if isinstance(value, tuple | list):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    return []


@pytest.mark.parametrize(
    "kind",
    ["snapshot", "client", "client_gone", "run", "log", "heartbeat", "command", "stopping"],
)
def test_every_string_of_the_feed_is_made_printable(kind: str) -> None:
    message = admin_pb2.Event(seq=1, time=NOW)
    _poison(getattr(message, kind))
    event = event_from_proto(message)
    assert event is not None
    strings = _strings(event.body)
    assert strings
    for text in strings:
        assert not any((ord(c) < 32 and c not in "\n\t") or 127 <= ord(c) < 160 for c in text), text
    assert "x\ufffd[2J\ufffd\ufffd\n" in strings  # the newline stays: tracebacks keep their lines


# --------------------------------------------------------------------------- the wizard's draft


def saved_workspace(root: Path, clients: tuple[str, ...] = ("site-a", "site-b")) -> Draft:
    """A project provisioned by the wizard's draft into ``root``."""
    draft = Draft.new(root)
    draft.name = "demo"
    draft.server["org"] = "lead"
    draft.clients = [{"name": name, "org": "h", "email": ""} for name in clients]
    draft.provision()
    return draft


def test_a_refused_run_leaves_project_yml_as_it_was(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    saved_workspace(workspace)
    saved = (workspace / "project.yml").read_text()
    draft = Draft.open(workspace)
    draft.server["org"] = "other"
    draft.clients.append({"name": "site-c", "org": "h", "email": ""})
    with pytest.raises(ProvisionError, match=r"server\.org 'lead' -> 'other'"):
        draft.provision()
    assert (workspace / "project.yml").read_text() == saved
    draft.server["org"] = "lead"  # the run is accepted again: the saved file never lied
    assert [kit.name for kit in draft.provision().written] == ["site-c"]
    assert [c["name"] for c in Draft.open(workspace).clients] == ["site-a", "site-b", "site-c"]


def test_a_workspace_holding_a_project_not_opened_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    saved_workspace(workspace)
    fresh = Draft.new(workspace)
    fresh.name = "demo"
    fresh.server["org"] = "lead"
    fresh.clients = [{"name": "site-c", "org": "h", "email": ""}]
    problem = fresh.workspace_problem()
    assert problem == (
        f"{workspace} holds a project.yml that is not the one open here: "
        "Open loads it, or choose another folder"
    )
    with pytest.raises(ProvisionError, match="not the one open here"):
        fresh.provision()
    assert ("client", "site-a") in Draft.open(workspace).issued
    assert Draft.open(workspace).workspace_problem() is None


def test_who_has_a_kit_is_read_from_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    saved_workspace(workspace)
    draft = Draft.open(workspace)
    assert draft.locked and draft.is_issued("client", "site-a")
    draft.set_workspace(tmp_path / "elsewhere")
    assert not draft.locked and draft.workspace_problem() is None
    draft.set_workspace(Path(f"{workspace}/"))
    assert draft.locked and draft.is_issued("client", "site-b")


def test_a_first_run_cut_short_in_the_wizard_can_be_run_again(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "packages" / "site-a.zip").mkdir(parents=True)
    draft = Draft.new(workspace)
    draft.name = "demo"
    draft.server["org"] = "lead"
    draft.clients = [{"name": "site-a", "org": "h", "email": ""}]
    with pytest.raises(IsADirectoryError):
        draft.provision()
    assert not (workspace / "project.yml").exists()
    assert draft.workspace_problem() is None and not draft.issued
    (workspace / "packages" / "site-a.zip").rmdir()
    assert [kit.name for kit in draft.provision().written] == ["server", "site-a"]
    assert draft.is_opened and draft.locked


def test_kits_are_kept_when_project_yml_cannot_be_saved(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "project.yml").mkdir(parents=True)  # in the way of the file
    draft = Draft.new(workspace)
    draft.name = "demo"
    draft.server["org"] = "lead"
    result = draft.provision()
    assert [kit.name for kit in result.written] == ["server"] and result.written[0].password
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith(f"{workspace / 'project.yml'}: cannot write it (")


def test_an_unreadable_workspace_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    too_long = tmp_path / ("w" * 300)  # stat raises, as it does without permission
    draft = Draft.new(too_long)
    assert (draft.workspace_problem() or "").startswith(f"{too_long}: cannot look into it (")
    assert not draft.issued


@pytest.mark.timeout(90)
def test_a_script_uses_the_admin_client_without_loading_the_console() -> None:
    """Issue 11: the admin client moved out of fltui, so a script need not import the console."""
    from tests.unit.test_import_hygiene import loaded_by

    loaded = loaded_by("fladmin")
    assert "fladmin" in loaded
    assert loaded & {"fltui", "textual", "torch", "flapp"} == set()


def test_fltui_help_names_the_wizard(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    assert "fltui provision [WORKSPACE]" in capsys.readouterr().out


def test_the_consoles_vocabulary_is_the_servers() -> None:
    """The console refuses a member's command before asking only where the server would."""
    assert set(COMMAND_NAMES) == set(COMMANDS) | {"set_timeout"}
    assert {n for n, spec in COMMANDS.items() if spec.read_only} | {"set_timeout"} == READ_ONLY


def test_dropped_rows_between_snapshots_are_bounded() -> None:
    """A console open for days over sites that come and go (or a server naming ever new
    ones) kept every dropped row until the next snapshot, which comes only at a reconnect."""
    store = Store()
    seq = 1
    store.apply(FeedEvent(seq, NOW, Snapshot(SERVER, RunInfo(), (), ())))
    for number in range(KEPT_GONE + 3):
        name = f"site-{number}"
        store.apply(FeedEvent(seq + 1, NOW, ClientRow(name, name, last_heartbeat=NOW)))
        store.apply(FeedEvent(seq + 2, NOW, ClientGone(name, "no heartbeat for 31s")))
        seq += 2
    assert len(store.clients) == len(store.gone) == KEPT_GONE
    assert "site-2" not in store.clients and "site-3" in store.clients
    assert len(store.beats) <= KEPT_GONE + KEPT_HISTORIES
    again = ClientRow("site-3", "site-3", last_heartbeat=NOW)
    store.apply(FeedEvent(seq + 1, NOW, again))  # back: a row like any other
    assert "site-3" not in store.gone and store.clients["site-3"] == again


class ScriptedClient:
    """Answers each command with the next reply given; notes whether each was confirmed."""

    def __init__(self, *replies: CommandReply) -> None:
        self.replies = list(replies)
        self.confirmed: list[bool] = []

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        self.confirmed.append(confirmed)
        return self.replies.pop(0)


def test_fltui_cmd_answers_again_a_question_that_changed_and_gives_up_at_the_third() -> None:
    """The server asks again when what a shutdown acts on changed before the answer came; a
    script with --yes printed that second question as the command's failure."""
    asked = CommandReply(
        "shutdown client", False, "", {}, 0, "", "Shut down: …\nAre you sure (Y/N):"
    )
    done = CommandReply("shutdown client", True, "instance:a : Shutdown the client...", {}, 1, "")
    client = ScriptedClient(asked, asked, done)
    reply = asyncio.run(execute(cast(AdminClient, client), "shutdown client", assume_yes=True))
    assert reply is done and client.confirmed == [False, True, True]
    client = ScriptedClient(asked, asked, asked, asked)
    reply = asyncio.run(execute(cast(AdminClient, client), "shutdown client", assume_yes=True))
    assert not reply.ok and client.confirmed == [False, True, True, True]
    assert reply.text == (
        "shutdown cancelled: what it acts on kept changing while it was asked: run it again"
    )
