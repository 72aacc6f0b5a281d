"""The provisioning wizard's screen without daemons: what it shows, refuses and keeps.

test_wizard.py takes the wizard down to daemons that accept its kits; these
drive the screen alone, on workspaces the draft provisions in a moment.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import ContentSwitcher, DataTable

import fltui.wizard.draft
from fldev.poll import wait_for
from fltui.wizard.app import ProvisionApp
from fltui.wizard.draft import Draft
from fltui.wizard.question import Question
from fltui.wizard.screen import WizardScreen
from provision import Project, ProvisionResult, provision_workspace
from tests.tui.helpers import shown
from tests.tui.test_wizard import next_step, paste_into, problem, type_into


def saved_workspace(root: Path) -> Path:
    """A project with two sites, provisioned by the wizard's draft."""
    draft = Draft.new(root)
    draft.name = "demo"
    draft.server["org"] = "lead"
    draft.clients = [{"name": name, "org": "h", "email": ""} for name in ("site-a", "site-b")]
    draft.provision()
    return root


async def to_review(pilot: Any, name: str = "demo") -> WizardScreen:
    """Name a new project, give the server an org, and walk on to the review."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await type_into(pilot, "#project-name", name)
    await next_step(pilot, "server")
    await type_into(pilot, "#server-org", "lead")
    for step in ("clients", "admins", "settings", "review"):
        await next_step(pilot, step)
    return screen


def test_the_wizard_stays_until_provisioning_shows_the_passwords(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    engine = provision_workspace

    def slow(project: Project, workspace: Path) -> ProvisionResult:
        release.wait(30)
        return engine(project, workspace)

    monkeypatch.setattr(fltui.wizard.draft, "provision_workspace", slow)

    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = await to_review(pilot)
            await pilot.click("#review-go")
            await wait_for(pilot, lambda: problem(pilot) == "provisioning…")
            await pilot.press("escape", "ctrl+b", "ctrl+n")
            await pilot.pause(0.1)
            assert pilot.app.screen is screen
            assert screen.query_one(ContentSwitcher).current == "step-review"
            assert screen.query_one("#wizard-back").disabled
            release.set()
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits")
            assert screen.query_one("#kits-table", DataTable).row_count == 1
            await pilot.press("escape")  # now it may close, once told the passwords are unsaved
            await shown(pilot, pilot.app, Question)
            await pilot.click("#question-discard")
            await wait_for(pilot, lambda: not pilot.app.is_running)

    asyncio.run(scenario())


def test_an_unexpected_error_is_reported_not_stuck(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(project: Project, workspace: Path) -> ProvisionResult:
        raise ValueError("something nobody expected")

    monkeypatch.setattr(fltui.wizard.draft, "provision_workspace", broken)

    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = await to_review(pilot)
            await pilot.click("#review-go")
            expected = "✖ unexpected ValueError: something nobody expected"
            await wait_for(pilot, lambda: problem(pilot) == expected)
            assert not screen.query_one("#review-go").disabled
            await pilot.press("ctrl+b")
            assert screen.query_one(ContentSwitcher).current == "step-settings"

    asyncio.run(scenario())


def test_editing_the_workspace_path_keeps_what_it_says(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")

    async def scenario() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            assert screen.query_one("#project-name").disabled
            box = screen.query_one("#project-workspace")
            box.focus()
            await pilot.press("end", "x")  # another folder: a new project could go there
            await wait_for(pilot, lambda: not screen.query_one("#project-name").disabled)
            await pilot.press("backspace")  # back: its kits are still issued
            await wait_for(pilot, lambda: screen.query_one("#project-name").disabled)
            assert screen.query_one("#server-org").disabled
            await next_step(pilot, "server")
            await next_step(pilot, "clients")
            table = screen.query_one("#clients-table", DataTable)
            assert [str(table.get_row_at(i)[-1]) for i in range(table.row_count)] == [
                "issued",
                "issued",
            ]

    asyncio.run(scenario())


def test_next_follows_the_row_forms(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            await type_into(pilot, "#project-name", "demo")
            await next_step(pilot, "server")
            await type_into(pilot, "#server-org", "lead")
            await next_step(pilot, "clients")
            assert "looks good" in problem(pilot)
            await type_into(pilot, "#clients-name", "site-a")
            assert problem(pilot) == "✖ project.yml: clients[0]: missing required key 'org'"
            assert screen.query_one("#wizard-next").disabled
            await type_into(pilot, "#clients-org", "h")
            assert "the form holds an unsaved entry" in problem(pilot)
            assert screen.query_one("#wizard-next").disabled
            await pilot.press("enter")
            await wait_for(pilot, lambda: "looks good" in problem(pilot))
            assert not screen.query_one("#wizard-next").disabled

    asyncio.run(scenario())


def test_the_kits_step_shows_the_engines_warnings(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")

    async def scenario() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            await next_step(pilot, "server")
            await next_step(pilot, "clients")
            await type_into(pilot, "#clients-name", "site-c")
            await type_into(pilot, "#clients-org", "h")
            await pilot.press("enter")
            await next_step(pilot, "admins")
            await next_step(pilot, "settings")
            await type_into(pilot, "#settings-retry_window", "99")
            await next_step(pilot, "review")
            await pilot.click("#review-go")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits")
            warnings = str(screen.query_one("#kits-warnings").render())
            assert warnings.startswith("⚠ settings changed since earlier kits were issued")

    asyncio.run(scenario())


def test_what_was_typed_is_shown_never_read_as_markup(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            await type_into(pilot, "#project-name", "[/x]")
            assert problem(pilot).endswith("got '[/x]'")
            await type_into(pilot, "#project-name", "regex [a-z]+")
            assert problem(pilot).endswith("got 'regex [a-z]+'")
            await paste_into(pilot, "#project-workspace", str(tmp_path / "[/x]"))
            hint = screen.query_one("#project-workspace-hint")
            assert "the project CA will be created there" in str(hint.render())
            await type_into(pilot, "#project-name", "demo")
            await next_step(pilot, "server")
            await type_into(pilot, "#server-org", "[/x] lead")
            await next_step(pilot, "clients")
            await type_into(pilot, "#clients-name", "site-a")
            await type_into(pilot, "#clients-org", "[/x] regex [a-z]+")
            await pilot.press("enter")
            table = screen.query_one("#clients-table", DataTable)
            await wait_for(pilot, lambda: table.row_count == 1)
            assert str(table.get_row_at(0)[1]) == "[/x] regex [a-z]+"
            await type_into(pilot, "#clients-name", "site a")
            form_problem = str(screen.query_one("#clients-problem").render())
            assert form_problem.endswith("got 'site a'")
            await type_into(pilot, "#clients-name", "")
            for step in ("admins", "settings", "review"):
                await next_step(pilot, step)
            assert "org: '[/x] lead'" in str(screen.query_one("#review-yaml").render())

    asyncio.run(scenario())


def test_an_unreadable_workspace_path_is_a_message_not_a_crash(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            too_long = tmp_path / ("w" * 300)  # stat raises, as it does without permission
            await paste_into(pilot, "#project-workspace", str(too_long))
            hint = str(screen.query_one("#project-workspace-hint").render())
            assert "cannot look into it" in hint
            assert "cannot look into it" in problem(pilot)
            assert screen.query_one("#wizard-next").disabled
            await type_into(pilot, "#project-workspace", "~nobody-here-at-all/ws")
            assert "the project CA will be created there" in str(
                screen.query_one("#project-workspace-hint").render()
            )

    asyncio.run(scenario())
