"""The wizard's forms, by keys: what focus does, what placeholders say, what enter does,
which keys the footer offers, and how numbers are written.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from textual.widgets import ContentSwitcher, Input

from fldev.poll import wait_for
from fltui.wizard.app import ProvisionApp
from fltui.wizard.forms import Picker
from fltui.wizard.rows import RowsEditor
from fltui.wizard.screen import WizardScreen
from tests.tui.test_wizard import next_step, problem, type_into
from tests.tui.test_wizard_steps import saved_workspace, to_review


def footer_keys(pilot: Any) -> set[str]:
    """The keys the footer offers now."""
    return {key.key for key in pilot.app.screen.query("FooterKey")}


def drawn_without(pilot: Any, *absent: str) -> set[str] | None:
    """The footer's keys once it is drawn and offers none of ``absent`` (None until then)."""
    keys = footer_keys(pilot)
    return keys if keys and not keys & set(absent) else None


def test_focus_keeps_what_the_field_holds(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            await type_into(pilot, "#project-name", "demo")
            await next_step(pilot, "server")
            host = screen.query_one("#server-host", Input)
            assert host.value == "localhost"
            while pilot.app.focused is not host:  # by keys, as a person gets there
                await pilot.press("tab")
            await pilot.press("2")
            assert host.value == "localhost2"  # not "2": focus selected nothing

    asyncio.run(scenario())


def test_placeholders_describe_fields_and_never_look_like_values(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            placeholders = {
                box.id: box.placeholder for box in pilot.app.screen.query(Input) if box.placeholder
            }
            assert set(placeholders) >= {"project-name", "server-org", "clients-name"}
            for box, text in placeholders.items():
                assert text.startswith(("required: ", "optional: ")), (box, text)

    asyncio.run(scenario())


def test_enter_on_a_picker_adds_the_entry_as_in_a_field(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            assert isinstance(screen, WizardScreen)
            await type_into(pilot, "#project-name", "demo")
            await next_step(pilot, "server")
            await type_into(pilot, "#server-org", "lead")
            await next_step(pilot, "clients")
            await next_step(pilot, "admins")
            await type_into(pilot, "#admins-email", "lead@demo.org")
            await type_into(pilot, "#admins-org", "lead")
            role = screen.query_one("#admins-role", Picker)
            role.focus()
            await pilot.press("space")  # space opens the list
            await wait_for(pilot, lambda: role.expanded)
            await pilot.press("down", "enter")  # picks "member", closes the list
            await wait_for(pilot, lambda: not role.expanded and role.value == "member")
            await pilot.press("enter")  # the closed picker: adds the entry
            editor = screen.query_one("#step-admins", RowsEditor)
            await wait_for(pilot, lambda: len(editor.rows) == 1)
            assert editor.rows[0]["role"] == "member"
            await next_step(pilot, "settings")
            key_type = screen.query_one("#settings-key_type")
            key_type.focus()
            await pilot.press("enter")  # on a step's own form: the next step
            await wait_for(
                pilot, lambda: screen.query_one(ContentSwitcher).current == "step-review"
            )

    asyncio.run(scenario())


def test_enter_in_a_step_form_goes_on_when_it_is_valid(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            await type_into(pilot, "#project-name", "bad name")
            await pilot.press("enter")
            assert screen.query_one(ContentSwitcher).current == "step-project"
            assert problem(pilot).startswith("✖ project.yml: 'name' must")
            await type_into(pilot, "#project-name", "demo")
            await pilot.press("enter")
            await wait_for(
                pilot, lambda: screen.query_one(ContentSwitcher).current == "step-server"
            )

    asyncio.run(scenario())


def test_next_and_back_are_offered_only_where_they_go(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            await wait_for(pilot, lambda: "ctrl+n" in footer_keys(pilot))  # the footer is drawn
            assert "ctrl+b" not in footer_keys(pilot)
            screen = await to_review(pilot)
            # The footer is empty for a moment while it recomposes after the bindings
            # changed: wait for it drawn again without the key, not merely without it.
            keys = await wait_for(pilot, lambda: drawn_without(pilot, "ctrl+n"))
            assert "ctrl+b" in keys
            await pilot.click("#review-go")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            keys = await wait_for(pilot, lambda: drawn_without(pilot, "ctrl+n", "ctrl+b"))
            assert "escape" in keys

    asyncio.run(scenario())


def test_numbers_are_written_as_typed(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")

    async def opened() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            assert screen.query_one("#settings-heart_beat_timeout", Input).value == "600"
            assert screen.query_one("#settings-retry_window", Input).value == "30"

    async def new() -> None:
        async with ProvisionApp(tmp_path / "new").run_test(size=(120, 36)) as pilot:
            assert pilot.app.screen.query_one("#settings-heart_beat_timeout", Input).value == "600"
            screen = await to_review(pilot)
            review = str(screen.query_one("#review-yaml").render())
            assert "  heart_beat_timeout: 600\n" in review and "600.0" not in review

    asyncio.run(opened())
    asyncio.run(new())
    text = (workspace / "project.yml").read_text()
    assert "heart_beat_timeout: 600\n" in text and "retry_window: 30\n" in text


def test_keys_typed_at_once_stay_in_the_field_they_were_typed_into(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            assert isinstance(screen, WizardScreen)
            await type_into(pilot, "#project-name", "demo")
            await next_step(pilot, "server")
            screen.action_back()  # the project step shows; its first field gets focus after
            name = screen.query_one("#project-name", Input)
            name.focus()  # ... but the user is quicker
            await pilot.press(*"-hospitals")
            await pilot.pause(0.2)
            assert name.value == "demo-hospitals"
            assert screen.query_one("#project-workspace", Input).value == str(tmp_path / "ws")

    asyncio.run(scenario())
