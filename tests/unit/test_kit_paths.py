"""A path given for a kit that is wrong says what is wrong with the path: a typo, the
workspace for its startup/ folder or the other way round, a kit of another kind. Only a kit
that does not match its signature is told to be re-extracted. Real fltui, flclientd and
flserverd processes, as people start them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provision import extract_kit
from tests.unit.conftest import ProvisionedWorkspace

ADMIN = "lead@example.org"
REEXTRACT = "re-extract"


@pytest.fixture
def kits(provisioned_workspace: ProvisionedWorkspace, tmp_path: Path) -> Path:
    """The server's, site-a's and the lead admin's kits, extracted under ``tmp_path/kits``."""
    root = tmp_path / "kits"
    for name in ("server", "site-a", ADMIN):
        kit = provisioned_workspace.kit(name)
        extract_kit(kit, provisioned_workspace.password(name), root / name)
    return root


def start(program: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", program, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def refused(done: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    assert REEXTRACT not in done.stderr
    for word in words:
        assert word in done.stderr


def test_fltui_takes_the_workspace_of_an_admin_kit_as_flprovision_verify_does(kits: Path) -> None:
    """The kit is read and checked (so the login is tried, and refused for want of a
    server): exit 2 with the connection's problem, not the kit's."""
    done = start("fltui", "--startup", str(kits / ADMIN), "--cmd", "help")
    refused(done, 2, "cannot connect to the server at localhost:8003")


def test_fltui_without_startup_says_that_none_was_given(tmp_path: Path) -> None:
    done = start("fltui", "--cmd", "help", cwd=tmp_path)
    refused(done, 2, "no --startup given", "--startup")


def test_a_typo_in_the_path_says_no_such_folder(kits: Path) -> None:
    done = start("fltui", "--startup", str(kits / "typo" / "startup"), "--cmd", "help")
    refused(done, 2, f"{kits / 'typo'}: no such folder; check the path")
    done = start("flclientd", "--workspace", str(kits / "site-b"))
    refused(done, 2, f"{kits / 'site-b'}: no such folder; check the path")


@pytest.mark.parametrize("daemon", ["flclientd", "flserverd"])
def test_a_daemon_given_the_startup_folder_asks_for_the_workspace(kits: Path, daemon: str) -> None:
    kit = kits / ("site-a" if daemon == "flclientd" else "server")
    done = start(daemon, "--workspace", str(kit / "startup"))
    refused(done, 2, "give the workspace, the folder that holds startup/", f"({kit})")


def test_a_kit_of_another_kind_is_named_as_such(kits: Path) -> None:
    done = start("fltui", "--startup", str(kits / "site-a" / "startup"), "--cmd", "help")
    refused(done, 2, "this is a client kit, not an admin kit", "fltui takes an admin kit")
    done = start("flclientd", "--workspace", str(kits / "server"))
    refused(done, 2, "this is a server kit, not a client kit")
    done = start("flserverd", "--workspace", str(kits / ADMIN))
    refused(done, 2, "this is an admin kit, not a server kit")


def test_a_folder_that_holds_no_kit_is_not_called_a_damaged_kit(tmp_path: Path) -> None:
    """Even one with more files than a kit has (someone's home folder)."""
    for number in range(40):
        (tmp_path / f"notes{number}.txt").write_text("")
    done = start("fltui", "--startup", str(tmp_path), "--cmd", "help")
    refused(done, 2, "not a kit's startup/ folder", "check the path")


def test_a_kit_that_does_not_match_its_signature_is_still_to_be_re_extracted(
    kits: Path,
) -> None:
    admin = kits / ADMIN / "startup" / "fed_admin.json"
    admin.write_text(admin.read_text().replace("localhost", "example.org"))
    done = start("fltui", "--startup", str(kits / ADMIN), "--cmd", "help")
    assert done.returncode == 2
    assert "altered: fed_admin.json" in done.stderr and REEXTRACT in done.stderr
