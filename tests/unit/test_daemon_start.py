"""How both daemons start when site IT got something wrong: one line that says what, exit
code 2, never a traceback (flcore.daemon)."""

from __future__ import annotations

import os
import socket
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
