"""The provisioning wizard, driven by keys, makes kits that real daemons accept.

A project is typed in step by step (with a mistake or two, to see flprovision's
messages), provisioned, its passwords saved to a 0600 file; the server kit
starts flserverd and a client kit's flclientd registers with it. Then the
workspace is opened again, a site is added, and only its kit is written,
under the same CA: its client registers with the same running server. A
second site added then makes its own key (flprovision request, sign and
assemble, as processes): it registers over mTLS beside the zip-kit sites.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.widgets import ContentSwitcher, DataTable, Input

from fldev.cluster import SERVER_READY, Daemon, free_ports
from fldev.poll import wait_for
from fltui.wizard.app import ProvisionApp
from fltui.wizard.draft import Draft
from fltui.wizard.screen import WizardScreen
from provision import extract_kit
from tests.flprovision import flprovision
from tests.tui.helpers import burst

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def type_into(pilot: Any, selector: str, text: str) -> None:
    """Focus a field, empty it and type ``text`` key by key, as fast as a typist or a paste
    over SSH sends them (all queued before the first is handled)."""
    box = pilot.app.screen.query_one(selector)
    box.focus()
    box.value = ""
    burst(pilot.app, text)
    await wait_for(pilot, lambda: box.value == text)
    await pilot.pause()  # the screen handles the Changed messages the keys posted


async def paste_into(pilot: Any, selector: str, text: str) -> None:
    """Focus a field, empty it and paste ``text`` as a terminal delivers a paste (one event).

    For long values whose every character needs no test of its own (paths): typing 300
    keys costs the suite seconds.
    """
    box = pilot.app.screen.query_one(selector)
    box.focus()
    box.value = ""
    pilot.app.post_message(events.Paste(text))
    await wait_for(pilot, lambda: box.value == text)
    await pilot.pause()  # the screen handles the Changed message the paste posted


def problem(pilot: Any) -> str:
    """The wizard's message line."""
    return str(pilot.app.screen.query_one("#wizard-problem").render())


async def next_step(pilot: Any, name: str) -> None:
    """``ctrl+n`` and wait for step ``name``."""
    await pilot.press("ctrl+n")
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.query_one(ContentSwitcher).current == f"step-{name}")


async def add_row(pilot: Any, kind: str, values: dict[str, str]) -> None:
    """Fill a row form (Inputs by typing) and press enter to add it."""
    screen = pilot.app.screen
    count = len(screen.query_one(f"#step-{kind}").rows)
    for key, value in values.items():
        if key in ("role", "csr"):  # pickers
            screen.query_one(f"#{kind}-{key}").value = value
        else:
            await type_into(pilot, f"#{kind}-{key}", value)
    await pilot.press("enter")
    await wait_for(pilot, lambda: len(screen.query_one(f"#step-{kind}").rows) == count + 1)


async def provision(pilot: Any) -> list[tuple[str, str]]:
    """Provision from the review step; return (kit, password) rows of the kits table."""
    screen = pilot.app.screen
    assert isinstance(screen, WizardScreen)
    await pilot.click("#review-go")
    await wait_for(pilot, lambda: screen.query_one(ContentSwitcher).current == "step-kits", 60)
    table = screen.query_one("#kits-table", DataTable)
    return [
        (str(row[0]), str(row[2])) for row in (table.get_row_at(i) for i in range(table.row_count))
    ]


def new_project(workspace: Path, fed_port: int, admin_port: int) -> list[tuple[str, str]]:
    async def scenario() -> list[tuple[str, str]]:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            await type_into(pilot, "#project-name", "bad name")
            assert "project.yml: 'name' must" in problem(pilot)
            assert pilot.app.screen.query_one("#wizard-next").disabled
            await type_into(pilot, "#project-name", "wizproject")
            assert "looks good" in problem(pilot)
            await next_step(pilot, "server")
            await type_into(pilot, "#server-fed_port", str(fed_port))
            await type_into(pilot, "#server-admin_port", str(fed_port))
            await type_into(pilot, "#server-org", "lead")
            assert problem(pilot) == (
                f"✖ project.yml: server: 'admin_port' must differ from 'fed_port', got {fed_port}"
            )
            await type_into(pilot, "#server-admin_port", str(admin_port))
            await next_step(pilot, "clients")
            await type_into(pilot, "#clients-name", "site_1")
            form_problem = pilot.app.screen.query_one("#clients-problem")
            assert str(form_problem.render()).startswith(
                "project.yml: clients[0]: 'name' must not end in '_<digits>'"
            )
            await add_row(pilot, "clients", {"name": "site-a", "org": "hospital-a"})
            await add_row(pilot, "clients", {"name": "site-b", "org": "hospital-b"})
            await next_step(pilot, "admins")
            await add_row(
                pilot, "admins", {"email": "lead@wiz.org", "org": "lead", "role": "super"}
            )
            await next_step(pilot, "settings")
            await type_into(pilot, "#settings-heartbeat_interval", "1")
            await type_into(pilot, "#settings-heart_beat_timeout", "30")
            await next_step(pilot, "review")
            review = str(pilot.app.screen.query_one("#review-yaml").render())
            assert "name: wizproject" in review and "site-b" in review
            kits = await provision(pilot)
            passwords = pilot.app.screen.query_one("#kits-file", Input)
            assert passwords.value == str(workspace / "passwords.txt")
            await pilot.click("#kits-save")
            saved = pilot.app.screen.query_one("#kits-saved")
            await wait_for(pilot, lambda: "saved 4" in str(saved.render()))
            return kits

    return asyncio.run(scenario())


def add_site(workspace: Path) -> list[tuple[str, str]]:
    async def scenario() -> list[tuple[str, str]]:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            screen = pilot.app.screen
            assert isinstance(screen, WizardScreen)
            assert screen.query_one("#project-name").disabled  # kits embed it
            await next_step(pilot, "server")
            await next_step(pilot, "clients")
            table = screen.query_one("#clients-table", DataTable)
            assert [str(c) for c in table.get_row_at(0)][-1] == "issued"
            await add_row(pilot, "clients", {"name": "site-c", "org": "hospital-c"})
            await add_row(pilot, "clients", {"name": "site-d", "org": "hospital-d", "csr": "site"})
            for step in ("admins", "settings", "review"):
                await next_step(pilot, step)
            summary = str(screen.query_one("#review-summary").render())
            assert "the kits of: site-c." in summary
            assert "wait for their requests: site-d" in summary
            return await provision(pilot)

    return asyncio.run(scenario())


def flprovision_ok(*args: str, cwd: Path) -> str:
    """Run flprovision as a process; its stdout (it must succeed)."""
    done = flprovision(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wizard_kits_start_real_daemons(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    fed_port, admin_port = free_ports(2)
    kits = dict(new_project(workspace, fed_port, admin_port))
    assert set(kits) == {"server.zip", "site-a.zip", "site-b.zip", "lead@wiz.org.zip"}
    saved = workspace / "passwords.txt"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert f"===> password: {kits['site-a.zip']} for site-a.zip" in saved.read_text()
    assert Draft.open(workspace).name == "wizproject"

    packages = workspace / "packages"
    for kit in ("server", "site-a"):
        extract_kit(packages / f"{kit}.zip", kits[f"{kit}.zip"], tmp_path / kit)
    env = {k: v for k, v in os.environ.items() if k not in ("DATA_ROOT", "NOTIFY_SOCKET")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    daemons: list[Daemon] = []
    try:
        server = Daemon(
            "server",
            [sys.executable, "-m", "flserverd", "--workspace", str(tmp_path / "server")],
            tmp_path / "server.log",
            env,
        ).start()
        daemons.append(server)
        server.wait_log(SERVER_READY)
        site = Daemon(
            "site-a",
            [sys.executable, "-m", "flclientd", "--workspace", str(tmp_path / "site-a")],
            tmp_path / "site-a.log",
            env,
        ).start()
        daemons.append(site)
        site.wait_log("Successfully registered client")

        added = dict(add_site(workspace))
        assert set(added) == {"site-c.zip"}
        startup = extract_kit(packages / "site-c.zip", added["site-c.zip"], tmp_path / "site-c")
        verify = subprocess.run(
            [sys.executable, "-m", "provision", "verify", str(startup)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr
        newcomer = Daemon(
            "site-c",
            [sys.executable, "-m", "flclientd", "--workspace", str(tmp_path / "site-c")],
            tmp_path / "site-c.log",
            env,
        ).start()
        daemons.append(newcomer)
        newcomer.wait_log("Successfully registered client")

        # site-d makes its own key; only its request and a kit without a key travel
        site_d = tmp_path / "site-d"
        flprovision_ok("request", "site-d", "--role", "client", "-w", str(site_d), cwd=tmp_path)
        signed = flprovision_ok(
            "sign", str(site_d / "request" / "site-d.csr"),
            "-p", str(workspace / "project.yml"), "-w", str(workspace), cwd=tmp_path,
        )  # fmt: skip
        fingerprint = signed.splitlines()[-1].rsplit(" ", 1)[1]
        flprovision_ok(
            "assemble", str(packages / "site-d.zip"), "-w", str(site_d),
            "--ca-fingerprint", fingerprint, cwd=tmp_path,
        )  # fmt: skip
        assert not (site_d / "request" / "client.key").exists()
        own_key = Daemon(
            "site-d",
            [sys.executable, "-m", "flclientd", "--workspace", str(site_d)],
            tmp_path / "site-d.log",
            env,
        ).start()
        daemons.append(own_key)
        own_key.wait_log("Successfully registered client")
    finally:
        for daemon in daemons:
            daemon.kill()


def test_a_screenshot_of_the_wizard_is_kept_in_the_workspace_for_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Kits step shows every kit's password; Textual's own screenshot went to
    ~/Downloads with the default mode."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_DOWNLOAD_DIR", str(home / "Downloads"))
    workspace = tmp_path / "workspace"

    async def scenario() -> None:
        async with ProvisionApp(workspace).run_test(size=(120, 36)) as pilot:
            pilot.app.deliver_screenshot()
            folder = workspace / "screenshots"
            (shot,) = folder.glob("*.svg")
            assert stat.S_IMODE(shot.stat().st_mode) == 0o600
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            assert not (home / "Downloads").exists()

    asyncio.run(scenario())
