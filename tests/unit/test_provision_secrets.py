"""Secrets stay secret: keys only their owner may read, passwords only where they belong.

The daemons are started as real processes on a kit whose key others may
read: each stops at once with the ssh-like message and its exit code, before
it opens a port or dials anyone.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from fladmin.client import AdminError, load_kit
from provision import extract_kit
from provision.kits import KitZip
from tests.flprovision import flprovision

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _extract(workspace: Any, name: str, dest: Path) -> Path:
    return extract_kit(workspace.kit(name), workspace.password(name), dest)


@pytest.mark.parametrize(
    ("kit", "daemon", "key"),
    [("server", "flserverd", "server.key"), ("site-a", "flclientd", "client.key")],
)
def test_a_daemon_refuses_a_key_others_may_read(
    provisioned_workspace: Any, tmp_path: Path, kit: str, daemon: str, key: str
) -> None:
    startup = _extract(provisioned_workspace, kit, tmp_path / kit)
    (startup / key).chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", daemon, "--workspace", str(tmp_path / kit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=_env(),
    )
    assert done.returncode != 0
    expected = (
        f"{startup / key}: the private key may be read by others (mode 0644); only its owner "
        f"may read it: run chmod 600 {startup / key}"
    )
    assert expected in done.stderr
    assert "Traceback" not in done.stderr


def test_the_console_refuses_an_admin_key_others_may_read(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    startup = _extract(provisioned_workspace, "lead@example.org", tmp_path / "lead")
    (startup / "client.key").chmod(0o640)
    with pytest.raises(AdminError, match=r"may be read by others \(mode 0640\)"):
        load_kit(startup)
    (startup / "client.key").chmod(0o600)
    assert load_kit(startup).email == "lead@example.org"


def test_extracted_keys_are_owner_only_whatever_the_umask(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        startup = _extract(provisioned_workspace, "site-b", tmp_path / "site-b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((startup / "client.key").stat().st_mode) == 0o600


def test_verbose_provisioning_logs_no_password_and_no_key(
    tmp_path: Path, provision_project_mapping: dict[str, Any]
) -> None:
    project = tmp_path / "project.yml"
    project.write_text(yaml.safe_dump(provision_project_mapping))
    done = flprovision("-v", "-p", str(project), "-w", str(tmp_path / "ws"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    passwords = [line.split()[2] for line in done.stdout.splitlines()]
    assert len(passwords) == 5
    assert "wrote" in done.stderr
    for secret in (*passwords, "PRIVATE KEY"):
        assert secret not in done.stderr


def test_what_holds_a_password_or_a_key_does_not_print_it(provisioned_workspace: Any) -> None:
    """A crash report (Textual's shows local variables) prints the reprs of what the wizard
    and flprovision hold."""
    written = provisioned_workspace.result.written
    kit = next(each for each in written if each.name == "site-a")
    assert kit.password and kit.password not in repr(written)
    files = {"client.key": b"-----BEGIN PRIVATE KEY-----\nsecret\n"}
    zip_ = KitZip(Path("k.zip"), files, "pw-not-shown", datetime.now(UTC))
    assert "pw-not-shown" not in repr(zip_) and "PRIVATE KEY" not in repr(zip_)


@pytest.mark.parametrize("tool", ["provision.cli", "fltui.cli"])
def test_the_tools_that_hold_keys_and_passwords_leave_no_core_file(tool: str) -> None:
    """The daemons already forbade core files; flprovision holds the CA key and every kit's
    password, fltui an admin's key, a login token and the wizard's passwords."""
    probe = (
        "import resource, sys\n"
        f"from {tool} import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "import ctypes\n"
        "dumpable = ctypes.CDLL('libc.so.6').prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
        "sys.stderr.write(repr((resource.getrlimit(resource.RLIMIT_CORE), dumpable)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=_env()
    )
    # Not dumpable either: a child of the same user cannot read its memory or environment.
    assert done.stderr.endswith("((0, 0), 0)"), done.stderr
