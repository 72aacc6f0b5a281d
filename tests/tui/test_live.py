"""The console against a real server: the harness's flserverd and two flclientd sites.

The tests share one cluster (see conftest.py) and run in file order: look,
train from the keys, look as a member, lose only the console's link (the
sites stay online), then shut a client and the server down and reconnect
to the restarted server when asked.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, OptionList, ProgressBar

from fladmin.client import CommandReply
from fladmin.link import AdminLink
from flcore.appreview import review_app
from fldev.cluster import ADMIN, MEMBER, SERVER_READY, Cluster, free_ports
from fldev.poll import wait_for
from fltui.app import ConsoleApp
from fltui.connection import CONNECTED, DISCONNECTED, SHUT_DOWN
from fltui.screens.client import ClientScreen
from fltui.screens.dialogs import ChoiceScreen, ConfirmScreen, PromptScreen
from fltui.screens.listings import AdminsScreen, AppsScreen, RunScreen, RunsScreen
from fltui.screens.login import LoginScreen
from fltui.screens.sitelogs import SiteLogScreen
from fltui.screens.validation import ValidationScreen
from fltui.widgets.clients import ClientsTable
from tests.tui.helpers import burst, shown
from tests.tui.proxy import Proxy

# One shared cluster, used in file order: keep these tests on one xdist worker.
pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(180),
    pytest.mark.xdist_group("tui-live-cluster"),
]


class RecordingLink(AdminLink):
    """The real link, keeping every reply so tests can wait for one."""

    def __init__(self, startup: Path, user: str) -> None:
        super().__init__(startup, user)
        self.replies: list[CommandReply] = []
        self.logins = 0

    async def login(self) -> None:
        self.logins += 1
        await super().login()

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        outcome = await super().execute(line, confirmed)
        self.replies.append(outcome)
        return outcome

    def reply(self, line: str) -> CommandReply | None:
        """The last answer to ``line`` (not a question: the server asks before some)."""
        return next(
            (o for o in reversed(self.replies) if o.line == line and not o.confirm_prompt), None
        )


class ProxiedLink(RecordingLink):
    """The real link, dialling the admin port through a :class:`Proxy` the test can cut."""

    def __init__(self, startup: Path, user: str, port: int) -> None:
        super().__init__(startup, user)
        self.kit = replace(self.kit, admin_port=port)
        self.target = self.kit.admin_target


def open_console(cluster: Cluster, user: str = ADMIN) -> tuple[ConsoleApp, RecordingLink]:
    """The console for one of the cluster's admin kits."""
    link = RecordingLink(cluster.kit(user), user)
    return ConsoleApp(link, flush_s=0.1), link


async def choose(pilot: Any, label_part: str) -> None:
    """Pick the option containing ``label_part`` in the open picker."""
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ChoiceScreen))
    options = pilot.app.screen.query_one("OptionList")
    labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
    options.highlighted = next(i for i, label in enumerate(labels) if label_part in label)
    await pilot.press("enter")


async def ok(pilot: Any, link: RecordingLink, line: str, timeout: float = 30.0) -> CommandReply:
    """Wait for the reply to ``line`` and insist it succeeded."""
    outcome: CommandReply = await wait_for(
        pilot, lambda: link.reply(line), timeout, f"reply to {line}"
    )
    assert outcome.ok, f"{line}: {outcome.text}"
    return outcome


def test_clients_appear_with_tokens_and_heartbeats_tick(live: Cluster) -> None:
    tokens = {c["instance"]: c["token_id"] for c in live.status()["clients"]}

    async def scenario() -> None:
        app, _ = open_console(live)
        async with app.run_test(size=(120, 36)) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: sorted(table.shown) == ["flclient1", "flclient2"])
            header = str(app.dashboard.query_one("#header-title").render())
            assert "itest" in header and f"{ADMIN} (super)" in header and "no run set" in header
            for instance, token in tokens.items():
                assert str(table.get_cell(instance, "token")) == token
                assert str(table.get_cell(instance, "health")) == "● online"
            table.move_cursor(row=table.get_row_index("flclient2"))
            detail = app.dashboard.query_one("#client-detail")
            await wait_for(pilot, lambda: tokens["flclient2"] in str(detail.render()))
            beats = len(app.store.beats["flclient1"])
            await wait_for(pilot, lambda: len(app.store.beats["flclient1"]) >= beats + 2)
            age = str(table.get_cell("flclient1", "beat"))
            assert age.endswith("s") and int(age[:-1]) <= 3

    asyncio.run(scenario())


ROUNDS = 10_000
"""More rounds than any machine trains before the test aborts the run (40 were done on a fast
one before the abort key came, and abort found nothing to stop)."""


def test_run_from_the_keys(live: Cluster) -> None:
    live.configure("config_fed_server.json", num_rounds=ROUNDS, min_num_clients=2)

    async def scenario() -> None:
        app, link = open_console(live)
        store = app.store
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: app.connected and len(store.clients) == 2)
            await pilot.press("n")
            await shown(pilot, app, PromptScreen)
            await pilot.press("1", "enter")
            await ok(pilot, link, "set_run_number 1")
            await wait_for(pilot, lambda: store.run.run_number == 1)
            await pilot.press("u")
            await choose(pilot, "digits_fedavg")
            await ok(pilot, link, "upload_folder digits_fedavg")
            await pilot.press("d")
            await choose(pilot, "digits_fedavg")
            await choose(pilot, "the server")
            await ok(pilot, link, "deploy digits_fedavg server")
            await pilot.press("d")
            await choose(pilot, "digits_fedavg")
            await choose(pilot, "all clients (2)")
            await ok(pilot, link, "deploy digits_fedavg client")
            await wait_for(pilot, lambda: store.run.app == "digits_fedavg")
            await pilot.press("s")
            await choose(pilot, "the server")
            await ok(pilot, link, "start server")
            await pilot.press("s")
            await choose(pilot, "all clients")
            await ok(pilot, link, "start client")
            bar = app.dashboard.query_one("#round-bar", ProgressBar)
            await wait_for(pilot, lambda: (bar.progress or 0) >= 1, 90, "round 1")
            assert bar.total == ROUNDS
            await wait_for(pilot, lambda: store.run.history, 10, "round metrics")
            assert "Round" in str(app.dashboard.query_one("#round-title").render())

            await pilot.press("v")
            await shown(pilot, app, ValidationScreen)
            empty = str(app.screen.query_one("#validation-empty").render())
            assert empty == "No cross-site validation results for run 1."
            await pilot.press("escape")

            await pilot.press("a")
            await choose(pilot, "the server")
            await shown(pilot, app, ConfirmScreen)
            assert app.screen.focused is app.screen.query_one("#confirm-cancel")
            stops = str(app.screen.query_one("#confirm-stops").render())  # the server's words
            assert stops.startswith("• Run 1 (digits_fedavg) on the server, at round ")
            await pilot.press("tab", "enter")
            await ok(pilot, link, "abort server")
            await wait_for(pilot, lambda: store.run.server_status == "training stopped", 30)

    asyncio.run(scenario())


def test_runs_apps_and_admins_views_show_the_servers_listings(live: Cluster) -> None:
    """Issue 10: ``:runs`` (enter: the run's rounds per site), ``:apps``, ``:admins``, and
    the header says who aborted the run (after test_run_from_the_keys)."""

    async def scenario() -> None:
        app, _ = open_console(live)
        async with app.run_test(size=(160, 40)) as pilot:
            await wait_for(pilot, lambda: app.connected and app.store.run.run_number == 1)
            header = app.dashboard.query_one("#header-title")
            assert f"■ training stopped (aborted by {ADMIN})" in str(header.render())
            burst(app, ":runs", "enter")
            runs = await shown(pilot, app, RunsScreen)
            table = runs.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 1, 30, "the runs")
            row = [str(cell) for cell in table.get_row_at(0)]
            assert row[:2] == ["1", "digits_fedavg"] and row[3] == "■ stopped"
            assert row[7] == f"aborted by {ADMIN}"
            await pilot.press("enter")
            run = await shown(pilot, app, RunScreen)
            rounds = run.query_one(DataTable)
            await wait_for(pilot, lambda: rounds.row_count >= 3, 30, "round 0 and its sites")
            assert [str(rounds.get_row_at(i)[1]) for i in range(3)] == [
                "all (weighted)",
                "  flclient1",
                "  flclient2",
            ]
            await pilot.press("escape", "escape")
            burst(app, ":apps", "enter")
            apps = await shown(pilot, app, AppsScreen)
            table = apps.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count == 1, 30, "the apps")
            copy = live.root / "server" / "transfer" / "digits_fedavg"
            assert str(table.get_row_at(0)[-1]) == review_app(copy, "").digest
            await pilot.press("escape")
            burst(app, ":admins", "enter")
            admins = await shown(pilot, app, AdminsScreen)
            table = admins.query_one(DataTable)
            await wait_for(pilot, lambda: table.row_count >= 1, 30, "the admins")
            mine = next(
                [str(c) for c in table.get_row_at(i)]
                for i in range(table.row_count)
                if str(table.get_row_at(i)[0]) == ADMIN
            )
            assert mine[1] == "super" and int(mine[2]) >= 1  # this console follows the feed
            assert mine[5].startswith("list_apps (ok, ")

    asyncio.run(scenario())


def test_member_sees_dangerous_keys_dimmed(live: Cluster) -> None:
    if not live.run_state()["run_number"]:
        # validate works for a member once a run number is set (by a super admin); other
        # tests of this module set one, but this test must not depend on running after them
        live.ok("set_run_number 1")

    async def scenario() -> None:
        app, link = open_console(live, MEMBER)
        async with app.run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: app.connected and app.store.clients)
            assert app.role == "member"
            for action in ("upload", "deploy", "start", "shutdown", "run_number"):
                assert app.dashboard.check_action(action, ()) is None, action
            assert app.dashboard.check_action("validate", ()) is True
            await pilot.press("x", "s")
            status = app.dashboard.query_one("#status-line")
            await wait_for(pilot, lambda: "start needs the super role" in str(status.render()))
            assert app.screen is app.dashboard and link.replies == []

    asyncio.run(scenario())


def test_keys_sent_in_one_go_reach_the_command_line(live: Cluster) -> None:
    """Issue 10, defect 3 against the real server: a paste of two commands is two commands."""

    async def scenario() -> None:
        app, link = open_console(live)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.connected and app.store.clients)
            burst(app, ":check_status server", "enter", ":check_status client", "enter")
            await ok(pilot, link, "check_status server")
            await ok(pilot, link, "check_status client")
            assert [r.line for r in link.replies] == ["check_status server", "check_status client"]
            assert app.screen is app.dashboard

    asyncio.run(scenario())


@pytest.mark.parametrize("size", [(80, 24), (200, 50)], ids=["80x24", "200x50"])
def test_keys_typed_ahead_apply_in_order(live: Cluster, size: tuple[int, int]) -> None:
    """Keys in one go against the real server, each acting on what the keys before made:
    ``↓lx`` the logs of the second row, ``x`` in them; ``↓⏎x`` its details, likewise;
    ``t⏎x`` the timeout prompt answered, then the shutdown picker (``x`` was lost in the
    closing prompt); ``␣↓␣x`` the shutdown picker offering the two rows just marked."""

    async def scenario() -> None:
        app, link = open_console(live)
        async with app.run_test(size=size) as pilot:
            await wait_for(pilot, lambda: app.connected and len(app.store.clients) == 2)
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: table.row_count == 2, what="both rows")
            first, second = table.shown
            opens: list[tuple[str, type[SiteLogScreen | ClientScreen]]] = [
                ("l", SiteLogScreen),
                ("enter", ClientScreen),
            ]
            for opening, screen_type in opens:
                burst(app, "down", opening, "x")
                screen = await shown(pilot, app, screen_type)
                assert screen.instance == second and table.selected == second
                burst(app, "escape", "up")
                await wait_for(pilot, lambda: table.selected == first, what="the cursor back")
                assert app.screen is app.dashboard
            burst(app, "t", "enter", "x")
            picker = await shown(pilot, app, ChoiceScreen)
            assert "Shut down" in str(picker.query_one(".dialog-title").render())
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            burst(app, " ", "down", " ", "x")
            picker = await shown(pilot, app, ChoiceScreen)
            options = picker.query_one(OptionList)
            labels = [str(options.get_option_at_index(i).prompt) for i in range(3)]
            assert f"selected: {first}, {second}" in labels
            await pilot.press("escape")
            await wait_for(pilot, lambda: app.screen is app.dashboard)
            assert [r.line.split()[0] for r in link.replies] == ["set_timeout"]  # nothing else

    asyncio.run(scenario())


def test_login_screen_reports_a_refusal_then_logs_in(live: Cluster) -> None:
    async def scenario() -> None:
        app = ConsoleApp(AdminLink(live.kit(), MEMBER))  # the admin's kit, someone else's name
        async with app.run_test(size=(120, 36)) as pilot:
            await shown(pilot, app, LoginScreen)
            assert getattr(app.focused, "id", "") == "login-user"  # the kit is known: user next
            problem = app.screen.query_one("#login-problem")
            assert "login refused" in str(problem.render())
            assert app.screen.query_one("#login-startup", Input).value == str(live.kit())
            app.screen.query_one("#login-user", Input).value = ""  # the kit's own email
            await pilot.press("enter")
            await wait_for(pilot, lambda: app.screen is app.dashboard and app.connected)
            assert app.role == "super" and app.store.clients

    asyncio.run(scenario())


def test_only_the_consoles_link_lost_leaves_the_sites_online(live: Cluster) -> None:
    """Issue 10, defect 4: the console's own link drops, the federation does not."""
    (port,) = free_ports(1)
    proxy = Proxy(port, live.admin_port)

    async def scenario() -> None:
        await proxy.start()
        link = ProxiedLink(live.kit(), ADMIN, port)
        app = ConsoleApp(link, flush_s=0.1, retry_first_s=1.0)
        async with app.run_test(size=(120, 36)) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.connected and len(table.shown) == 2)
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) == "● online")
            await proxy.cut()
            await wait_for(pilot, lambda: app.link_look is DISCONNECTED, 20, "the link to drop")
            pane = app.dashboard.query_one("#clients-pane")
            await wait_for(pilot, lambda: "unknown since" in str(pane.border_title), 5)
            assert "0/2 online" not in str(pane.border_title)
            for instance in ("flclient1", "flclient2"):
                assert str(table.get_cell(instance, "health")) == "? unknown"
            banner = str(app.dashboard.query_one("#banner").render())
            assert "connection lost since" in banner and "reconnecting in" in banner
            # The server still has both sites, heartbeating: they were never lost.
            clients = (await asyncio.to_thread(live.status))["clients"]
            assert sorted(c["instance"] for c in clients) == ["flclient1", "flclient2"]
            await proxy.start()
            await pilot.press("r")
            await wait_for(pilot, lambda: app.link_look is CONNECTED, 30, "the link to return")
            await wait_for(pilot, lambda: str(table.get_cell("flclient1", "health")) == "● online")
            assert "unknown" not in str(pane.border_title)
        await proxy.cut()

    asyncio.run(scenario())


def test_shutdown_asks_then_reconnects_to_a_restarted_server(live: Cluster) -> None:
    server = next(d for d in live.daemons if d.name == "server")
    client2 = next(d for d in live.daemons if d.name == "flclient2")

    async def scenario() -> None:
        app, link = open_console(live)
        async with app.run_test(size=(120, 36)) as pilot:
            table = app.dashboard.query_one(ClientsTable)
            await wait_for(pilot, lambda: app.connected and "flclient2" in table.shown)
            table.move_cursor(row=table.get_row_index("flclient2"))
            await pilot.press("x")
            await choose(pilot, "selected: flclient2")
            await shown(pilot, app, ConfirmScreen)
            stops = str(app.screen.query_one("#confirm-stops").render())
            assert "flclient2" in stops and "flclient1" not in stops
            await pilot.press("tab", "enter")
            await ok(pilot, link, "shutdown client flclient2")
            assert await asyncio.to_thread(client2.wait, 30) == 0
            await wait_for(pilot, lambda: "flclient2" in app.store.gone, 30)
            # It left on purpose: its row says so, without the alarm of a lost site.
            await wait_for(pilot, lambda: str(table.get_cell("flclient2", "health")) == "○ left", 5)

            await pilot.press("x")
            await choose(pilot, "the server")
            await shown(pilot, app, ConfirmScreen)
            warning = str(app.screen.query_one("#confirm-warning").render())
            assert "1 client(s) still registered (flclient1)" in warning
            await pilot.press("tab", "enter")
            await ok(pilot, link, "shutdown server")
            assert await asyncio.to_thread(server.wait, 30) == 0
            # Asked for, so no outage (issue 10, defect 5): who and when, then r or q.
            banner = app.dashboard.query_one("#banner")
            await wait_for(pilot, lambda: app.link_look is SHUT_DOWN and banner.display, 20)
            assert str(banner.render()).startswith(f"■ server shut down by {ADMIN} at ")
            assert str(banner.render()).endswith(" · r reconnect · q quit")
            errors = [n.title for n in app._notifications if n.severity == "error"]
            assert "connection lost" not in errors
            logins = link.logins

            await asyncio.to_thread(server.restart, SERVER_READY)
            assert app.link_look is SHUT_DOWN and app.state.connection.retry_at == 0.0
            assert link.logins == logins  # it waits for r, trying nothing meanwhile
            await pilot.press("r")
            await wait_for(pilot, lambda: app.link_look is CONNECTED, 30, "reconnect")
            assert not banner.display
            await wait_for(pilot, lambda: "flclient1" in app.store.clients, 30)
            assert "flclient2" not in app.store.clients

    asyncio.run(scenario())
