"""flserverd.commands.AdminCommands against a small fake server: parsing, permissions,
confirmations, the audit, and the replies' text and data."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pytest

from flcore import status as st
from flcore.crossvalmatrix import MatrixCell, ValidationMatrix
from flcore.federation import CommandResult, MachineInfo
from flcore.feed import ClientRow, CommandSeen, RunInfo
from flcore.identity import ROLE_MEMBER, ROLE_SUPER
from flcore.status import ClientStatus
from flcore.tokens import token_id, token_key
from flserverd.admins import AdminLogins
from flserverd.commands import MAX_LINE, AdminCommands, Reply, ignored_note
from flserverd.registry import RegisteredClient
from flserverd.runstore import RunStore
from flserverd.server import CommandError, FLServer
from flserverd.transfer import FileChunk
from flserverd.views import client_row

T = TypeVar("T")
ADMIN = "admin@lead.org"


def client(instance: str, **status: Any) -> RegisteredClient:
    return RegisteredClient(
        token_key=token_key(f"token-{instance}"),
        client_name=instance.split("_")[0],
        instance=instance,
        org="org",
        connected_at=1.0,
        last_heartbeat=2.0,
        connected=True,
        status=ClientStatus(**status),
        machine=MachineInfo(device="cpu"),
    )


@dataclass
class FakeRegistry:
    registered: list[RegisteredClient]

    def clients(self) -> list[RegisteredClient]:
        return sorted(self.registered, key=lambda c: c.instance)

    def by_instance(self, instance: str) -> RegisteredClient | None:
        return next((c for c in self.registered if c.instance == instance), None)


@dataclass
class FakeDB:
    audited: list[tuple[str, str, bool]] = field(default_factory=list)
    full: bool = False

    def audit_entries(self, entries: list[tuple[float, str, str, bool]]) -> None:
        if self.full:
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            raise error
        self.audited.extend((user, line, ok) for _, user, line, ok in entries)


@dataclass
class FakeBus:
    published: list[object] = field(default_factory=list)

    def publish(self, body: object) -> None:
        self.published.append(body)


@dataclass
class FakeCrossValidation:
    result: ValidationMatrix

    def matrix(self, names: Iterable[str], bystanders: dict[str, str]) -> ValidationMatrix:
        notes = {**self.result.notes, **bystanders}
        return ValidationMatrix(
            self.result.run_number, self.result.rows, self.result.columns, self.result.cells, notes
        )


@dataclass
class FakeServer:
    """What the commands use of FLServer, recorded; clients answer from ``answers``."""

    registry: FakeRegistry
    answers: dict[str, CommandResult] = field(default_factory=dict)
    run_number: int = 0
    starting: bool = False
    busy: bool = False
    db: FakeDB = field(default_factory=FakeDB)
    bus: FakeBus = field(default_factory=FakeBus)
    calls: list[tuple[list[str], str, dict[str, object]]] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    shutdown_requested: asyncio.Event = field(default_factory=asyncio.Event)
    stopped_by: str = ""
    aborted: list[str] = field(default_factory=list)
    run: RunInfo | None = None
    shutting_down: bool = False
    crossval: FakeCrossValidation | None = None
    admins: AdminLogins = field(default_factory=AdminLogins)
    modes: dict[str, str] = field(default_factory=dict)
    store: RunStore | None = None
    sites_asked: asyncio.Event = field(default_factory=asyncio.Event)
    sites_answer: asyncio.Event | None = None
    """While set and not yet set off, the sites have not answered a command sent them."""
    startup: Any = field(
        default_factory=lambda: SimpleNamespace(max_upload_mb=10, checkpoint_dirs=())
    )

    async def call(
        self, clients: list[RegisteredClient], name: str, args: dict[str, object], timeout: float
    ) -> list[tuple[RegisteredClient, CommandResult]]:
        self.calls.append(([c.instance for c in clients], name, args))
        self.sites_asked.set()
        if self.sites_answer is not None:
            await self.sites_answer.wait()
        return [(c, self.answers[c.instance]) for c in clients]

    def require_run(self) -> int:
        if not self.run_number:
            raise CommandError("FL run number has not been set: use set_run_number <N> first")
        return self.run_number

    def set_run_number(self, number: int) -> bool:
        self.run_number = number
        return False

    def run_view(self) -> RunInfo:
        return self.run or RunInfo(self.run_number, st.NOT_STARTED)

    def client_rows(self) -> list[ClientRow]:
        return [client_row(c) for c in self.registry.clients()]

    def abort_training(self, reason: str) -> bool:
        self.aborted.append(reason)
        return False

    def stop_soon(self, user: str) -> None:
        self.stopped_by = user
        self.shutdown_requested.set()

    def active_training(self) -> None:
        return None

    def leaving(self, clients: Iterable[RegisteredClient]) -> None:
        self.left.extend(c.instance for c in clients)

    async def departures(self, wait: float) -> list[str]:
        return []

    def crossval_for(self, run_number: int) -> FakeCrossValidation:
        assert self.crossval is not None and run_number == self.run_number
        return self.crossval

    def metric_modes(self, number: int) -> dict[str, str]:
        return self.modes


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def commands(server: FakeServer) -> AdminCommands:
    return AdminCommands(cast(FLServer, server))


def execute(
    server: FakeServer,
    line: str,
    role: str = ROLE_SUPER,
    confirmed: bool = False,
    interactive: bool = False,
    answered: str = "",
) -> Reply:
    return run(
        commands(server).execute(
            ADMIN, role, line, 5.0, confirmed, interactive=interactive, answered=answered
        )
    )


def two_sites() -> FakeServer:
    return FakeServer(FakeRegistry([client("site-b"), client("site-a")]))


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", "empty command"),
        ("frobnicate", "unknown command 'frobnicate'"),
        ('deploy "unclosed', "cannot parse the command"),
        ("check_status", "usage: check_status server [clients] | client [instance...]"),
        (
            "check_status server extra",
            "usage: check_status server [clients] | client [instance...]",
        ),
        ("set_run_number x", "usage: set_run_number <N>"),
        ("set_run_number 0", "usage: set_run_number <N>"),
        ("set_run_number \u00b2", "usage: set_run_number <N>"),  # isdigit() says yes, int() no
        ("set_run_number 1000000000", "from 1 to 999999999"),
        ("start_mgpu client 99 site-a", "between 1 and 64"),
        ("start_mgpu client \u00b2 site-a", "between 1 and 64"),
        ("start_mgpu client 0 site-a", "between 1 and 64"),
        ("show_run 99999999999999999999", "usage: show_run <N> [page]"),
        ("show_run " + "9" * 300, "usage: show_run <N> [page]"),
        ("validate", "usage: validate all | <instance> <instance>..."),
        ("start client", "FL run number has not been set"),
    ],
)
def test_bad_command_lines_get_a_clear_answer_and_are_audited(line: str, expected: str) -> None:
    server = two_sites()
    reply = execute(server, line)
    assert not reply.ok and expected in reply.text
    assert server.db.audited == [(ADMIN, line, False)]
    assert server.bus.published == [CommandSeen(ADMIN, line, False)]


def test_members_may_only_look() -> None:
    server = two_sites()
    server.answers = {i: CommandResult("c", True, "ok", {}) for i in ("site-a", "site-b")}
    denied = execute(server, "abort client", role=ROLE_MEMBER)
    assert not denied.ok and "permission denied" in denied.text and "'member' role" in denied.text
    assert server.calls == []
    assert execute(server, "check_status client", role=ROLE_MEMBER).ok


def test_check_status_client_keeps_identity_fields_the_servers() -> None:
    server = two_sites()
    reported = {"status": "training started", "round": 3, "instance": "forged", "samples": "x"}
    server.answers = {
        "site-a": CommandResult("c1", True, "training started", reported),
        "site-b": CommandResult("", False, "no reply within 5s (see set_timeout)"),
    }
    reply = execute(server, "check_status client")
    assert reply.ok
    rows = reply.data["clients"]
    assert rows["site-a"]["status"] == "training started" and rows["site-a"]["round"] == 3
    assert rows["site-a"]["instance"] == "site-a"  # a client cannot rename itself
    assert rows["site-a"]["samples"] == 0  # wrong type: ignored
    lines = reply.text.splitlines()
    # A token id, never the token: check_status is read by people and scripts.
    assert lines[0].startswith(
        f"instance:site-a : client name: site-a\ttoken: {token_id('token-site-a')}\t"
    )
    assert "status: training started\tround: 3" in lines[0]
    assert "(no reply: no reply within 5s (see set_timeout))" in lines[1]


def test_unknown_instances_are_named_with_the_registered_ones() -> None:
    reply = execute(two_sites(), "abort client site-a nowhere")
    assert not reply.ok
    assert reply.text == "unknown client instance nowhere (registered: site-a, site-b)"


def test_commands_for_clients_carry_the_run_and_report_each_client() -> None:
    server = two_sites()
    server.run_number = 4
    server.answers = {
        "site-a": CommandResult("c", True, "Starting the client...", {"gpus": 2}),
        "site-b": CommandResult("c", False, "this site has 0 GPU(s)"),
    }
    reply = execute(server, "start_mgpu client 2 site-a")
    assert reply.ok and server.calls == [(["site-a"], "start", {"run_number": 4, "gpus": 2})]
    both = execute(server, "start client")
    assert not both.ok  # one client refused
    assert both.text == (
        "instance:site-a : Starting the client...\ninstance:site-b : this site has 0 GPU(s)\n"
    )
    assert both.data["clients"]["site-a"] == {
        "gpus": 2,
        "ok": True,
        "text": "Starting the client...",
    }


def test_a_sites_text_cannot_add_a_line_to_a_reply() -> None:
    """A site's reply or error with line breaks once added lines that read as another
    site's result, and the console logged each as a line of its own."""
    server = two_sites()
    server.run_number = 4
    forged = "Starting the client...\ninstance:site-b : Starting the client...\r\nx"
    server.answers = {
        "site-a": CommandResult("c", True, forged, {"error": "boom\ninstance:site-b : ok"}),
        "site-b": CommandResult("c", False, "this site has 0 GPU(s)"),
    }
    lines = execute(server, "start client").text.splitlines()
    assert lines == [
        "instance:site-a : Starting the client... ⏎ instance:site-b : Starting the client... "
        "⏎  ⏎ x",
        "instance:site-b : this site has 0 GPU(s)",
    ]
    status = execute(server, "check_status client").text.splitlines()
    assert len(status) == 2 and "error: boom ⏎ instance:site-b : ok" in status[0]


def test_shutting_clients_down_asks_first_then_remembers_who_agreed() -> None:
    server = two_sites()
    server.answers = {
        "site-a": CommandResult("c", True, "Shutdown the client..."),
        "site-b": CommandResult("c", False, "client disconnected before replying"),
    }
    asked = execute(server, "shutdown client")
    # The server's question says what happens (it used to be the bare question).
    assert not asked.ok and asked.confirm_prompt.splitlines() == [
        "Shut down: all clients (2)",
        "This shuts down:",
        "  site-a: training not started",
        "  site-b: training not started",
        "  Their client daemons exit; each site must start its own again.",
        "Are you sure (Y/N):",
    ]
    assert asked.data["confirm"]["title"] == "Shut down: all clients (2)"
    assert server.calls == [] and server.db.audited == []  # not run, so not audited yet
    done = execute(server, "shutdown client", confirmed=True)
    assert not done.ok and server.left == ["site-a"]
    assert server.db.audited == [(ADMIN, "shutdown client", False)]


def test_the_server_stops_only_once_its_answer_went_out() -> None:
    server = two_sites()
    asked = execute(server, "shutdown server")
    assert "2 client(s) still registered (site-a, site-b)" in asked.confirm_prompt
    reply = execute(server, "shutdown server", confirmed=True)
    assert reply.ok and reply.text == "Shutting down the server..."
    assert not server.shutdown_requested.is_set()
    assert server.aborted == [f"server shut down by {ADMIN}"]
    assert reply.then is not None
    reply.then()  # what the admin servicer runs when the reply has been sent
    assert server.shutdown_requested.is_set() and server.stopped_by == ADMIN


def test_after_a_shutdown_nothing_else_changes_the_server() -> None:
    server = two_sites()
    cmds = commands(server)

    async def scenario() -> tuple[Reply, Reply, Reply]:
        stop = await cmds.execute(ADMIN, ROLE_SUPER, "shutdown server", 5.0, True)
        again = await cmds.execute("deputy@lead.org", ROLE_SUPER, "shutdown server", 5.0, True)
        look = await cmds.execute("deputy@lead.org", ROLE_SUPER, "help", 5.0, True)
        return stop, again, look

    stop, again, look = run(scenario())
    assert stop.ok and not again.ok and again.text == "the server is shutting down"
    assert look.ok  # looking still works
    assert [line for _, line, _ in server.db.audited] == [
        "shutdown server",
        "shutdown server",
        "help",
    ]


def test_a_full_disk_keeps_the_audit_in_memory_and_in_order() -> None:
    server = two_sites()
    cmds = commands(server)
    server.db.full = True

    async def scenario() -> list[Reply]:
        lines = ["help", "set_run_number 3"]
        replies = [await cmds.execute(ADMIN, ROLE_SUPER, line, 5.0, False) for line in lines]
        server.db.full = False
        replies.append(await cmds.execute(ADMIN, ROLE_SUPER, "abort server", 5.0, False))
        return replies

    replies = run(scenario())
    assert [r.ok for r in replies] == [True, True, False]  # the commands ran all the same
    assert server.db.audited == [
        (ADMIN, "help", True),
        (ADMIN, "set_run_number 3", True),
        (ADMIN, "abort server", False),
    ]


def test_abort_server_when_nothing_trains() -> None:
    server = two_sites()
    reply = execute(server, "abort server")
    assert not reply.ok and reply.text == "the server is not training"
    asked = execute(server, "abort server", interactive=True)
    assert not asked.confirm_prompt  # nothing to stop: nothing to ask


def training_sites() -> FakeServer:
    """site-a trains with cross_validate on, site-b trains, site-c failed, site-d is idle."""
    sites = [
        client("site-a", status=st.STARTED, run_number=1, round=3, app="app", cross_validate=True),
        client("site-b", status=st.STARTED, run_number=1, round=3, app="app"),
        client("site-c", status=st.FAILED, run_number=1, round=2, error="boom"),
        client("site-d"),
    ]
    run = RunInfo(1, st.STARTED, "app", current_round=3, num_rounds=10)
    return FakeServer(FakeRegistry(sites), run_number=1, run=run)


def test_the_server_decides_what_an_abort_asks_and_says() -> None:
    """Issue 10, defect 8 and issue 11: one place decides the question, and it names what
    really happens; a script (not interactive) is not asked, as in Clara."""
    server = training_sites()
    aborting = CommandResult("c", True, "Aborting the client...")
    server.answers = {f"site-{i}": aborting for i in "abcd"}
    asked = execute(server, "abort client", interactive=True)
    assert not asked.ok and server.calls == [] and server.db.audited == []
    question = asked.data["confirm"]
    assert question["title"] == "Abort training: all clients (4)"
    assert question["heading"] == "This stops:" and question["verb"] == "Abort"
    assert question["lines"] == [
        "site-a: training started, round 3 (app)",
        "site-b: training started, round 3 (app)",
        "Their training processes stop at once.",
        "site-a then move on to cross-site validation (cross_validate is on); abort again to "
        "stop that too.",
        "Not training, left as they are: site-c, site-d.",
    ]
    assert asked.confirm_prompt.endswith("\nAre you sure (Y/N):")
    idle = execute(server, "abort client site-c site-d", interactive=True)
    assert not idle.confirm_prompt  # nothing of theirs trains: no question, their replies say so
    assert server.calls == [(["site-c", "site-d"], "abort", {})]
    done = execute(server, "abort client site-b", interactive=True, confirmed=True)
    assert done.ok and server.calls[-1] == (["site-b"], "abort", {})
    script = execute(server, "abort client site-a")
    assert script.ok and not script.confirm_prompt
    on_server = execute(server, "abort server", interactive=True)
    assert on_server.data["confirm"]["lines"][0] == "Run 1 (app) on the server, at round 3 of 10."


def test_a_confirmation_of_a_question_that_changed_since_is_asked_again() -> None:
    """The console's dialog may stay open: "Abort training: all clients (4)" confirmed after
    a fifth site had joined and started stopped the fifth too; the answer was to the old
    question. Rounds moving on change nothing the answer commits to."""
    server = training_sites()
    server.answers = {f"site-{i}": CommandResult("c", True, "Aborting") for i in "abcde"}
    asked = execute(server, "abort client", interactive=True).data["confirm"]
    assert asked["acts_on"] == ["abort client", "site-a", "site-b"]
    assert server.run is not None
    server.run = replace(server.run, current_round=4)
    for site in server.registry.registered:
        if site.status.status == st.STARTED:
            site.status = replace(site.status, round=4)
    same = execute(server, "abort client", interactive=True).data["confirm"]
    assert same["digest"] == asked["digest"] and same["lines"] != asked["lines"]
    server.registry.registered.append(
        client("site-e", status=st.STARTED, run_number=1, round=4, app="app")
    )
    again = execute(
        server, "abort client", interactive=True, confirmed=True, answered=asked["digest"]
    )
    assert not again.ok and server.calls == [] and server.db.audited == []
    assert again.data["confirm"]["title"] == (
        "Abort training: all clients (5) (changed since you were asked)"
    )
    assert "  site-e: training started, round 4 (app)" in again.confirm_prompt.splitlines()
    digest = again.data["confirm"]["digest"]
    done = execute(server, "abort client", interactive=True, confirmed=True, answered=digest)
    assert done.ok and server.calls == [
        (["site-a", "site-b", "site-c", "site-d", "site-e"], "abort", {})
    ]
    older = execute(server, "shutdown server", confirmed=True)  # a client that names no question
    assert older.ok


def test_a_confirmation_names_a_site_still_training_an_older_run() -> None:
    """An abort stops whatever a site trains; a site still on an earlier run is listed with
    that run, so the admin is not led to think it trains the current one."""
    sites = [
        client("site-a", status=st.STARTED, run_number=2, round=1, app="app"),
        client("site-b", status=st.STARTED, run_number=1, round=7, app="old"),
    ]
    run = RunInfo(2, st.STARTED, "app", current_round=1, num_rounds=10)
    server = FakeServer(FakeRegistry(sites), run_number=2, run=run)
    lines = execute(server, "abort client", interactive=True).data["confirm"]["lines"]
    assert lines[:2] == [
        "site-a: training started, round 1 (app)",
        "site-b: training started, round 7 of run 1, not the current run (old)",
    ]
    shutdown = execute(server, "shutdown client site-b", interactive=True)
    assert shutdown.data["confirm"]["lines"][0] == lines[1]


def test_set_run_number_reports_a_new_folder() -> None:
    server = two_sites()
    reply = execute(server, "set_run_number 12")
    assert reply.ok and reply.text == "Create a new run folder: run_12"
    assert reply.data == {"run_number": 12, "existed": False} and server.run_number == 12


def test_validate_renders_the_matrix_and_names_bystanders() -> None:
    sites = [client("site-a", run_number=3, cross_validate=True), client("site-c", run_number=3)]
    server = FakeServer(FakeRegistry(sites))
    server.run_number = 3
    server.crossval = FakeCrossValidation(
        ValidationMatrix(
            3,
            ["global", "site-a", "site-c"],
            ["site-a", "site-c"],
            {
                "global": {"site-a": MatrixCell({"val_accuracy": 0.91234, "loss": 0.3}, "")},
                "site-a": {"site-a": MatrixCell({}, "cannot fetch the model: gone")},
            },
        )
    )
    reply = execute(server, "validate all", role=ROLE_MEMBER)
    assert reply.ok
    assert reply.text.splitlines() == [
        "Cross-site validation of run 3 (val_accuracy)",
        "model \\ site  site-a    site-c",
        "global        0.9123",
        "site-a        error",
        "site-c",
        "model of site-a on site-a: cannot fetch the model: gone",
        "site-c: does not take part (cross_validate is off)",
    ]
    assert reply.data["metric"] == "val_accuracy" and reply.data["metric_modes"] == {}
    assert reply.data["cells"]["global"]["site-a"]["metrics"]["val_accuracy"] == 0.91234
    server.modes = {"loss": "min"}  # the app's validation metric comes first, with its way
    reply = execute(server, "validate all", role=ROLE_MEMBER)
    assert reply.text.splitlines()[:3] == [
        "Cross-site validation of run 3 (loss)",
        "model \\ site  site-a    site-c",
        "global        0.3000",
    ]
    assert reply.data["metric"] == "loss" and reply.data["metric_modes"] == {"loss": "min"}


def test_help_lists_every_command() -> None:
    reply = execute(two_sites(), "help", role=ROLE_MEMBER)
    assert reply.ok and "shutdown server | client [instance...]" in reply.text
    assert "set_timeout <seconds>" in reply.text
    assert set(reply.data["commands"]) >= {"check_status", "deploy", "start", "validate"}


async def no_chunks() -> AsyncIterator[FileChunk]:
    chunks: list[FileChunk] = []
    for chunk in chunks:
        yield chunk


def test_uploads_by_members_are_refused_and_audited(tmp_path: Path) -> None:
    server = two_sites()
    reply = run(commands(server).upload("viewer@lead.org", ROLE_MEMBER, "app", 10, no_chunks()))
    assert not reply.ok and "permission denied" in reply.text
    assert "which may only run help, check_status" in reply.text  # as every other refusal
    assert server.db.audited == [("viewer@lead.org", "upload_folder app", False)]


def test_what_is_audited_is_bounded_and_a_long_line_is_refused_whole() -> None:
    """A member's upload with a 4 MiB app name went whole into the audit, the server's log
    and every console's feed; a line over the limit was cut and carried out in part (a cut
    name can be another site's)."""
    server = two_sites()
    name = "a" * 4_000_000
    run(commands(server).upload("viewer@lead.org", ROLE_MEMBER, name, 10, no_chunks()))
    [(_, audited, _)] = server.db.audited
    assert audited.startswith("upload_folder aaa") and len(audited) <= MAX_LINE
    sites = " ".join(f"flclient{n}" for n in range(1000))
    reply = execute(server, f"abort client {sites}")
    assert not reply.ok and "more than the 4,096 a command may have" in reply.text
    assert server.calls == []


APP = Path(__file__).resolve().parents[2] / "examples" / "apps" / "digits_fedavg"


def test_a_command_whose_admin_gave_up_runs_to_its_end_and_is_audited() -> None:
    """The admin's call reached its deadline while the sites were waited for: the command
    was cut off after some sites had it, and what was carried out never reached the audit
    trail. One that waits for its turn when its admin gives up runs nothing."""
    server = two_sites()
    server.answers = {site: CommandResult("c", True, "Starting") for site in ("site-a", "site-b")}
    server.run_number = 1

    async def scenario() -> None:
        cmds = commands(server)
        server.sites_answer = asyncio.Event()
        started = asyncio.ensure_future(cmds.execute(ADMIN, ROLE_SUPER, "start client", 5.0, False))
        waiting = asyncio.ensure_future(
            cmds.execute(ADMIN, ROLE_SUPER, "start client site-a", 5.0, False)
        )
        await server.sites_asked.wait()  # the first is with the sites, the second waits
        started.cancel()
        waiting.cancel()
        await asyncio.gather(started, waiting, return_exceptions=True)
        server.sites_answer.set()
        await asyncio.gather(*cmds._turns)
        assert server.calls == [(["site-a", "site-b"], "start", {"run_number": 1, "gpus": 0})]
        assert server.db.audited == [(ADMIN, "start client", True)]
        assert not cmds._one_at_a_time.locked()

    run(scenario())


async def app_files(count: int, sent: asyncio.Event | None = None) -> AsyncIterator[FileChunk]:
    """The digits app's files as an upload streams them, with notes up to ``count`` files;
    ``sent`` is set once the last chunk was taken."""
    files = sorted(p for p in APP.rglob("*") if p.is_file())
    for path in files:
        yield str(path.relative_to(APP)), 0, path.read_bytes(), True
    for n in range(count - len(files)):
        yield f"resources/note{n:04}.md", 0, b"a note", True
    if sent is not None:
        sent.set()


def uploading(tmp_path: Path) -> tuple[FakeServer, AdminCommands]:
    server = two_sites()
    server.store = RunStore(tmp_path)
    return server, commands(server)


def test_an_upload_reply_fits_whatever_the_name_and_the_files(tmp_path: Path) -> None:
    """An app name of a million NULs came back quoted whole, and an upload of thousands of
    long paths listed every one: past gRPC's 4 MiB the admin was told the upload failed,
    though it had replaced the app."""
    _, cmds = uploading(tmp_path)
    refused = run(cmds.upload(ADMIN, ROLE_SUPER, "\x00" * 1_100_000, 10, app_files(4)))
    assert not refused.ok and refused.text.startswith("upload refused: app name '\\x00")
    assert len(refused.text) < 300
    done = run(cmds.upload(ADMIN, ROLE_SUPER, "app", 10, app_files(150)))
    assert done.ok and done.text == f"Created folder {tmp_path / 'transfer' / 'app'}"
    assert done.data["file_count"] == 150 and len(done.data["files"]) == 100


def test_an_upload_is_put_in_place_one_command_at_a_time(tmp_path: Path) -> None:
    """A deploy copying transfer/<app> while an upload replaced it took half of each
    version; an upload also went through after shutdown server."""
    server, cmds = uploading(tmp_path)
    target = tmp_path / "transfer" / "app"

    async def scenario() -> Reply:
        sent = asyncio.Event()
        async with cmds._one_at_a_time:  # another admin's command, under way
            upload = asyncio.ensure_future(
                cmds.upload(ADMIN, ROLE_SUPER, "app", 10, app_files(4, sent))
            )
            await sent.wait()  # the upload has every byte and waits for its turn
            assert not upload.done() and not target.exists()
        return await upload

    assert run(scenario()).ok and target.is_dir()
    server.shutting_down = True
    late = run(cmds.upload(ADMIN, ROLE_SUPER, "other", 10, app_files(4)))
    assert not late.ok and late.text == "the server is shutting down"
    assert not (tmp_path / "transfer" / "other").exists()
    assert list((tmp_path / "transfer").glob(".upload-*")) == []


def test_the_ignored_parts_of_an_upload_are_named_up_to_ten() -> None:
    assert ignored_note({"models", "README.md"}) == (
        "(ignored README.md, models: only config/ and resources/ are kept)"
    )
    many = ignored_note({f"f{n:04}" for n in range(10_000)})
    assert many.startswith("(ignored f0000, f0001,") and "f0009 and 9990 more:" in many
