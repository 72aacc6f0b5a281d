"""How both daemons start when site IT got something wrong: one line that says what, exit
code 2, never a traceback (flcore.daemon)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flcore.daemon import daemon_parser, listen_problem
from provision import extract_kit
from tests.unit.conftest import ProvisionedWorkspace


def start(daemon: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", daemon, *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("daemon", ["flserverd", "flclientd"])
def test_a_workspace_name_no_file_system_holds_is_one_line_and_exit_2(
    daemon: str, tmp_path: Path
) -> None:
    """Once an OSError traceback (ENAMETOOLONG) from reading the kit; the same path serves a
    kit file the daemon's user may not read."""
    done = start(daemon, "--workspace", str(tmp_path / ("w" * 300)))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cannot read the kit: " in done.stderr and "File name too long" in done.stderr


def test_a_log_level_that_is_no_level_is_refused_with_the_choices() -> None:
    parser = daemon_parser("flserverd", "test", "server")
    assert parser.parse_args(["--workspace", "w", "--log-level", "debug"]).log_level == "DEBUG"
    with pytest.raises(SystemExit) as refused:
        parser.parse_args(["--workspace", "w", "--log-level", "verbose"])
    assert refused.value.code == 2


def test_a_port_in_use_is_said_plainly() -> None:
    """gRPC said 'Failed to bind to address localhost:18602; set GRPC_VERBOSITY=debug
    environment variable to see detailed error message.'"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        said = listen_problem(f"localhost:{port}")
    assert said.startswith(f"cannot listen on localhost:{port}: the address is in use; ")
    assert "is another server running?" in said and "GRPC" not in said


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("192.0.2.7", "192.0.2.7 is no address of this machine"),
        ("no-such-host.invalid", "no-such-host.invalid is no name or address this machine knows"),
    ],
)
def test_an_address_that_is_not_this_machines_is_said_plainly(host: str, reason: str) -> None:
    assert listen_problem(f"{host}:18602") == f"cannot listen on {host}:18602: {reason}"


def test_a_server_whose_port_is_taken_says_so_in_one_line(
    provision_project_mapping: dict[str, Any],
    provision_into: Callable[..., ProvisionedWorkspace],
    tmp_path: Path,
) -> None:
    """It said 'Failed to bind to address ...; set GRPC_VERBOSITY=debug environment
    variable to see detailed error message.; is another server running?', after gRPC's
    core had logged 'E1207 ... add_port.cc:83] Failed to add port ...'."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        provision_project_mapping["server"]["fed_port"] = port
        provisioned = provision_into(provision_project_mapping)
        workspace = tmp_path / "server"
        extract_kit(provisioned.kit("server"), provisioned.password("server"), workspace)
        (workspace / "local" / "fed_server.json").write_text('{"listen_host": "127.0.0.1"}\n')
        env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
        done = subprocess.run(
            [sys.executable, "-m", "flserverd", "--workspace", str(workspace)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert done.returncode == 2
    (said,) = [line for line in done.stderr.splitlines() if "ERROR" in line]
    assert said.endswith(
        f"ERROR flserverd: cannot listen on 127.0.0.1:{port}: the address is in use; is another "
        f"server running? (ss -ltnp shows which process listens on port {port})"
    )
    assert "GRPC" not in done.stderr and "add_port" not in done.stderr


NOBODY = 65534
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
KITS = {"flserverd": "server", "flclientd": "site-a"}


@pytest.fixture
def kit_workspace(
    provision_project_mapping: dict[str, Any],
    provision_into: Callable[..., ProvisionedWorkspace],
    tmp_path: Path,
) -> Callable[[str], Path]:
    """A daemon's kit extracted as flprovision extract does, its server on ports free now; a
    client gives up on the server (there is none) after a second."""
    for port in ("fed_port", "admin_port"):
        with socket.create_server(("127.0.0.1", 0)) as free:
            provision_project_mapping["server"][port] = free.getsockname()[1]
    provisioned = provision_into(provision_project_mapping)

    def extract(daemon: str) -> Path:
        workspace = tmp_path / KITS[daemon]
        extract_kit(provisioned.kit(KITS[daemon]), provisioned.password(KITS[daemon]), workspace)
        if daemon == "flclientd":
            (workspace / "local" / "fed_client.json").write_text('{"retry_window": 1}\n')
        return workspace

    return extract


def _replace_local_as_nobody(workspace: Path) -> None:
    """What `nobody` could do in a workspace others may write: move local/ away and make
    one of its own that trusts every app's code."""
    (workspace / "local").rename(workspace / "local.old")
    (workspace / "local").mkdir()
    (workspace / "local" / "fed_client.json").write_text(
        '{"trust_custom_code": true, "retry_window": 1}\n'
    )
    for path in (workspace / "local", workspace / "local" / "fed_client.json"):
        os.chown(path, NOBODY, NOBODY)


@AS_ROOT
def test_a_client_in_a_workspace_others_may_write_refuses_to_start(
    kit_workspace: Callable[[str], Path],
) -> None:
    """The security review's case: a workspace extracted under umask 000 (0777), where
    `nobody` replaced local/; the daemon ran with trust_custom_code."""
    workspace = kit_workspace("flclientd")
    workspace.chmod(0o777)
    _replace_local_as_nobody(workspace)
    done = start("flclientd", "--workspace", str(workspace))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{workspace} has mode 0777" in done.stderr
    assert f"run chmod go-w {workspace}" in done.stderr
    workspace.chmod(0o700)  # the mode fixed, the other user's local/ is still refused
    done = start("flclientd", "--workspace", str(workspace))
    assert done.returncode == 2
    assert f"{workspace / 'local'}: others than this user may change it" in done.stderr
    assert "is owned by nobody, not by root" in done.stderr
    assert f"run chown root {workspace / 'local'}" in done.stderr


@AS_ROOT
@pytest.mark.parametrize("daemon", ["flserverd", "flclientd"])
def test_a_local_file_of_another_user_stops_both_daemons(
    daemon: str, kit_workspace: Callable[[str], Path]
) -> None:
    workspace = kit_workspace(daemon)
    settings = workspace / "local" / "settings.json"
    settings.write_text("{}\n")
    os.chown(settings, NOBODY, NOBODY)
    done = start(daemon, "--workspace", str(workspace))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{settings}: others than this user may change it (settings.json is owned by" in (
        done.stderr
    )


def test_a_client_records_its_project_and_refuses_another_s_kit(
    kit_workspace: Callable[[str], Path],
) -> None:
    """A site's workspace given another project's kit would run that project's apps under
    this one's approvals and local/ settings."""
    workspace = kit_workspace("flclientd")
    record = workspace / "state" / "project.json"
    first = start("flclientd", "--workspace", str(workspace))
    assert first.returncode == 3, first.stderr  # no server: it gave up after its retry window
    held = json.loads(record.read_text())
    assert held["name"] == "demo" and len(held["ca_sha256"]) == 64
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    record.write_text(json.dumps({"name": "demo", "ca_sha256": "ab" * 32}))
    refused = start("flclientd", "--workspace", str(workspace))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "this workspace's state belongs to project demo (CA fingerprint AB:AB:" in (
        refused.stderr
    )
    assert "a kit of another project would take over its approvals" in refused.stderr


def test_a_server_started_under_umask_000_keeps_its_files_to_itself(
    kit_workspace: Callable[[str], Path],
) -> None:
    """Started by hand, the daemons took the shell's umask: under 000 the database, run
    folders and metrics were anyone's to read."""
    workspace = kit_workspace("flserverd")
    (workspace / "local" / "fed_server.json").write_text('{"listen_host": "127.0.0.1"}\n')
    server = subprocess.Popen(
        [
            "sh",
            "-c",
            'umask 000 && exec "$0" -m flserverd --workspace "$1"',
            sys.executable,
            str(workspace),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        for line in server.stderr:
            if re.search(r"flserverd .* ready", line):
                break
        else:
            pytest.fail("the server exited before it was ready")
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        server.kill()
        server.wait()
    shared = {
        str(path.relative_to(workspace)): oct(stat.S_IMODE(path.stat().st_mode))
        for path in workspace.rglob("*")
        if path.relative_to(workspace).parts[0] not in ("startup", "local")
        and stat.S_IMODE(path.stat().st_mode) & 0o077
    }
    assert shared == {}
