"""The wizard's Kits step keeps passwords: it asks before leaving, never offers an earlier
run's file, appends only when asked; and a kit is re-issued or a request signed from its row.

Each test drives the real wizard app by keys and clicks on a real workspace.
"""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from textual.widgets import Button, ContentSwitcher, DataTable, Input, Static

from flcore.crl import CRL_FILE, read_crl
from flcore.kitsig import verify_startup
from fldev.poll import wait_for
from fltui.wizard.app import ProvisionApp
from fltui.wizard.forms import Picker
from fltui.wizard.kits import KitsStep
from fltui.wizard.question import Question
from fltui.wizard.screen import WizardScreen
from provision import extract_kit
from provision.csr import assemble, colon_hex, make_request
from provision.pki import fingerprint
from tests.tui.helpers import shown
from tests.tui.test_console import console, ready
from tests.tui.test_wizard import next_step, type_into
from tests.tui.test_wizard_steps import saved_workspace, to_review


async def provisioned(pilot: Any, name: str = "demo") -> WizardScreen:
    """A new project provisioned from the review: the Kits step with unsaved passwords."""
    screen = await to_review(pilot, name)
    await pilot.click("#review-go")
    switcher = screen.query_one(ContentSwitcher)
    await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
    return screen


def ca_fingerprint(workspace: Path) -> str:
    """The Kits step's sentence naming the workspace's project CA, as flprovision prints it."""
    ca = x509.load_pem_x509_certificate((workspace / "state" / "rootCA.pem").read_bytes())
    return f"Project CA fingerprint (SHA-256): {colon_hex(fingerprint(ca))}."


def kit_rows(screen: WizardScreen) -> list[list[str]]:
    """The cells of the kits table."""
    table = screen.query_one("#kits-table", DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_leaving_unsaved_passwords_asks_and_stay_keeps_them(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = await provisioned(pilot)
            await pilot.press("escape")
            question = await shown(pilot, pilot.app, Question)
            title = str(question.query_one("#question-title").render())
            assert title == "The passwords of 1 kit(s) are not saved"
            assert pilot.app.focused is question.query_one("#question-stay")
            await pilot.press("escape")  # the safe answer: stay
            await wait_for(pilot, lambda: pilot.app.screen is screen)
            assert screen.query_one(ContentSwitcher).current == "step-kits"
            await pilot.press("ctrl+q")  # quitting asks too
            await shown(pilot, pilot.app, Question)
            await pilot.click("#question-stay")
            await wait_for(pilot, lambda: pilot.app.screen is screen)
            assert pilot.app.is_running

    asyncio.run(scenario())


def test_leaving_can_save_the_passwords_first(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"

    async def scenario() -> str:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await provisioned(pilot)
            ((kit, _, password, _),) = kit_rows(screen)
            await pilot.press("escape")
            question = await shown(pilot, pilot.app, Question)
            save = question.query_one("#question-save", Button)
            assert str(save.label) == "Save to passwords.txt and close"
            await pilot.click("#question-save")
            await wait_for(pilot, lambda: not pilot.app.is_running)
            return f"===> password: {password} for {kit}"

    line = asyncio.run(scenario())
    saved = workspace / "passwords.txt"
    assert saved.read_text() == f"{line}\n"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600


def test_saved_passwords_let_the_wizard_close_without_asking(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            await provisioned(pilot)
            await pilot.click("#kits-save")
            await pilot.press("escape")
            await wait_for(pilot, lambda: not pilot.app.is_running)

    asyncio.run(scenario())


def test_closing_without_saving_is_a_choice_of_its_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            await provisioned(pilot)
            await pilot.press("escape")
            await shown(pilot, pilot.app, Question)
            await pilot.click("#question-discard")
            await wait_for(pilot, lambda: not pilot.app.is_running)

    asyncio.run(scenario())
    assert not (tmp_path / "ws" / "passwords.txt").exists()


def test_a_passwords_file_name_too_long_is_said_in_the_field(tmp_path: Path) -> None:
    """Looking such a name up raised in the field's handler: the app ended, and the passwords
    were lost without the question."""

    async def scenario() -> None:
        async with ProvisionApp(tmp_path / "ws").run_test(size=(120, 36)) as pilot:
            screen = await provisioned(pilot)
            screen.query_one("#kits-file", Input).value = str(tmp_path / ("x" * 300))
            message = screen.query_one("#kits-saved", Static)
            await wait_for(pilot, lambda: "cannot use this name" in str(message.render()))
            assert screen.query_one("#kits-save", Button).disabled
            assert screen.query_one("#kits-append", Button).disabled
            await pilot.press("escape")  # still unsaved: it asks
            await shown(pilot, pilot.app, Question)

    asyncio.run(scenario())


def test_quitting_the_console_asks_while_the_wizard_holds_unsaved_passwords(
    tmp_path: Path,
) -> None:
    """The full console's quit goes through the wizard's question, as the wizard app's does."""

    async def scenario() -> None:
        app, _ = console(tmp_path)
        app.workspace = tmp_path / "ws"
        async with app.run_test(size=(120, 36)) as pilot:
            await ready(pilot)
            await pilot.press("p")
            screen = await shown(pilot, app, WizardScreen)
            await provisioned(pilot)
            await pilot.press("ctrl+q")
            await shown(pilot, app, Question)
            await pilot.click("#question-stay")  # staying drops the quit
            await wait_for(pilot, lambda: app.screen is screen)
            assert app.is_running
            await pilot.press("ctrl+q")
            await shown(pilot, app, Question)
            await pilot.click("#question-save")
            await wait_for(pilot, lambda: not app.is_running)

    asyncio.run(scenario())
    assert (tmp_path / "ws" / "passwords.txt").is_file()


async def add_site(pilot: Any, name: str, key_maker: str = "lead") -> WizardScreen:
    """On an opened workspace: add a client and go to the review."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await next_step(pilot, "server")
    await next_step(pilot, "clients")
    await type_into(pilot, "#clients-name", name)
    await type_into(pilot, "#clients-org", "h")
    screen.query_one("#clients-csr", Picker).value = key_maker
    await pilot.press("enter")
    for step in ("admins", "settings", "review"):
        await next_step(pilot, step)
    return screen


def test_a_later_run_never_offers_an_earlier_runs_passwords_file(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")
    earlier = workspace / "passwords.txt"
    earlier.write_text("===> password: old for site-a.zip\n")
    earlier.chmod(0o600)

    async def scenario() -> list[list[str]]:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await add_site(pilot, "site-c")
            await pilot.click("#review-go")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            field = screen.query_one("#kits-file", Input)
            assert field.value == str(workspace / "passwords-2.txt")
            field.value = str(earlier)  # typed over: the earlier file
            await wait_for(pilot, lambda: screen.query_one("#kits-save").disabled)
            assert not screen.query_one("#kits-append").disabled
            saved = screen.query_one("#kits-saved", Static)
            assert str(saved.render()).startswith(
                "passwords.txt exists (an earlier run's passwords?)"
            )
            field.focus()
            await pilot.press("enter")  # enter never appends: that is Append's job
            saved = screen.query_one("#kits-saved", Static)
            await wait_for(pilot, lambda: "already exists" in str(saved.render()))
            assert earlier.read_text() == "===> password: old for site-a.zip\n"
            await pilot.click("#kits-append")
            saved = screen.query_one("#kits-saved", Static)
            await wait_for(pilot, lambda: str(saved.render()).startswith("added 1 password"))
            rows = kit_rows(screen)
            await pilot.press("escape")  # saved: no question
            await wait_for(pilot, lambda: not pilot.app.is_running)
            return rows

    rows = asyncio.run(scenario())
    ((kit, _, password, _),) = rows
    assert earlier.read_text() == (
        f"===> password: old for site-a.zip\n===> password: {password} for {kit}\n"
    )
    assert not (workspace / "passwords-2.txt").exists()


def test_append_refuses_a_file_others_may_read(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")
    shared = workspace / "passwords.txt"
    shared.write_text("")
    shared.chmod(0o644)

    async def scenario() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await add_site(pilot, "site-c")
            await pilot.click("#review-go")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            screen.query_one("#kits-file", Input).value = str(shared)
            await wait_for(pilot, lambda: not screen.query_one("#kits-append").disabled)
            await pilot.click("#kits-append")
            message = screen.query_one("#kits-saved", Static)
            await wait_for(pilot, lambda: "only you can read" in str(message.render()))
            assert "(this one has mode 0644)" in str(message.render())
            await pilot.press("escape")  # still unsaved: it asks
            await shown(pilot, pilot.app, Question)

    asyncio.run(scenario())
    assert shared.read_text() == ""


async def client_row(pilot: Any, row: int) -> WizardScreen:
    """On an opened workspace: the clients step, with row ``row`` loaded into the form."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await next_step(pilot, "server")
    await next_step(pilot, "clients")
    table = screen.query_one("#clients-table", DataTable)
    table.focus()
    table.move_cursor(row=row)
    await pilot.press("enter")
    return screen


def test_a_kit_is_reissued_from_its_row(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")
    old = workspace / "packages" / "site-a.zip"
    old_bytes = old.read_bytes()

    async def scenario() -> list[list[str]]:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await client_row(pilot, 0)  # site-a
            reissue = screen.query_one("#clients-reissue")
            await wait_for(pilot, lambda: reissue.display)
            assert not screen.query_one("#clients-sign").display
            await pilot.click("#clients-reissue")
            question = await shown(pilot, pilot.app, Question)
            assert str(question.query_one("#question-title").render()) == (
                "Re-issue the kit of site-a?"
            )
            await pilot.click("#question-reissue")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            warnings = str(screen.query_one("#kits-warnings").render())
            assert warnings.startswith("⚠ revoked site-a's certificate ")
            assert f"load {workspace / CRL_FILE} into the server" in warnings
            assert screen.query_one(KitsStep).unsaved
            return kit_rows(screen)

    ((kit, kind, password, _),) = asyncio.run(scenario())
    assert (kit, kind) == ("site-a.zip", "client")
    assert old.read_bytes() != old_bytes
    startup = extract_kit(old, password, tmp_path / "site-a")
    cert = x509.load_pem_x509_certificate((startup / "client.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((workspace / "state" / "rootCA.pem").read_bytes())
    crl = read_crl(workspace / CRL_FILE, ca)
    assert len(crl.serials) == 1 and not crl.revokes(cert)


def test_a_site_that_makes_its_own_key_is_signed_from_its_row(tmp_path: Path) -> None:
    workspace = saved_workspace(tmp_path / "ws")

    async def add() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await add_site(pilot, "site-c", key_maker="site")
            summary = str(screen.query_one("#review-summary").render())
            assert "their kits wait for their requests: site-c" in summary
            await pilot.click("#review-go")  # saves project.yml; no kit to write yet
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            summary = str(screen.query_one("#kits-summary").render())
            assert "Awaiting certificate requests: site-c." in summary
            assert ca_fingerprint(workspace) in summary  # for lead IT to pass on
            await pilot.press("escape")  # no password to lose: no question
            await wait_for(pilot, lambda: not pilot.app.is_running)

    asyncio.run(add())
    request = make_request("site-c", "client", tmp_path / "site-c")

    async def sign() -> list[list[str]]:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = await client_row(pilot, 2)
            table = screen.query_one("#clients-table", DataTable)
            assert [str(table.get_row_at(2)[i]) for i in (0, 3, 4)] == [
                "site-c",
                "site",
                "awaits request",
            ]
            await wait_for(pilot, lambda: screen.query_one("#clients-sign").display)
            assert not screen.query_one("#clients-reissue").display
            await pilot.click("#clients-sign")
            question = await shown(pilot, pilot.app, Question)
            field = question.query_one("#question-field", Input)
            assert pilot.app.focused is field
            field.value = str(request.csr)
            await pilot.press("enter")
            switcher = screen.query_one(ContentSwitcher)
            await wait_for(pilot, lambda: switcher.current == "step-kits", 60)
            summary = str(screen.query_one("#kits-summary").render())
            assert ca_fingerprint(workspace) in summary
            assert not screen.query_one("#kits-warnings").display
            assert not screen.query_one(KitsStep).unsaved  # no password to lose
            rows = kit_rows(screen)
            await pilot.press("escape")
            await wait_for(pilot, lambda: not pilot.app.is_running)
            return rows

    ((kit, kind, password, _),) = asyncio.run(sign())
    assert (kit, kind, password) == (
        "site-c.zip",
        "client",
        "none: no key inside, send it as it is",
    )
    done = assemble(workspace / "packages" / "site-c.zip", tmp_path / "site-c")
    verify_startup(done.startup)
