"""gRPC's C core writes nothing of its own to the terminal or the journal unless the user
set GRPC_VERBOSITY (flcore.grpcquiet). A server that answers with something else than TLS
makes the handshake fail, which the core logged as ``I1207 ...
ssl_transport_security.cc:2563] Handshake failed ...``. Real fltui and flclientd processes."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from provision import extract_kit
from tests.unit.conftest import ProvisionedWorkspace

ADMIN = "lead@example.org"
CORE_LINE = re.compile(r"^[DIWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)
"""How gRPC's core starts a log line: severity, month and day, time."""


@pytest.fixture
def not_tls() -> Iterator[tuple[int, int]]:
    """Two ports whose listeners answer whatever comes with an HTTP error and hang up."""
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]

    def answer(listener: socket.socket) -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:  # closed at the test's end
                return
            with peer:
                peer.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    for listener in listeners:
        threading.Thread(target=answer, args=(listener,), daemon=True).start()
    yield listeners[0].getsockname()[1], listeners[1].getsockname()[1]
    for listener in listeners:
        listener.close()


@pytest.fixture
def kits(
    not_tls: tuple[int, int],
    provision_project_mapping: dict[str, Any],
    provision_into: Callable[..., ProvisionedWorkspace],
    tmp_path: Path,
) -> Path:
    """The lead admin's and site-a's kits, extracted under ``tmp_path/kits``, both pointing
    at the ports that do not speak TLS; site-a gives up after a second."""
    provision_project_mapping["server"].update(fed_port=not_tls[0], admin_port=not_tls[1])
    provisioned = provision_into(provision_project_mapping)
    root = tmp_path / "kits"
    for name in ("site-a", ADMIN):
        extract_kit(provisioned.kit(name), provisioned.password(name), root / name)
    (root / "site-a" / "local" / "fed_client.json").write_text('{"retry_window": 1}\n')
    return root


def start(*argv: str, verbosity: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "GRPC_VERBOSITY"}
    if verbosity is not None:
        env["GRPC_VERBOSITY"] = verbosity
    return subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, env=env, timeout=60
    )


def test_fltui_says_the_handshake_failed_in_its_own_words_only(kits: Path) -> None:
    done = start("fltui", "--startup", str(kits / ADMIN), "--cmd", "help")
    assert done.returncode == 2
    assert "fltui: cannot connect to the server" in done.stderr
    assert not CORE_LINE.search(done.stderr), done.stderr


def test_a_verbosity_the_user_set_is_kept(kits: Path) -> None:
    done = start("fltui", "--startup", str(kits / ADMIN), "--cmd", "help", verbosity="INFO")
    assert done.returncode == 2
    assert CORE_LINE.search(done.stderr) and "Handshake failed" in done.stderr


def test_flclientd_logs_nothing_of_grpcs_core(kits: Path) -> None:
    done = start("flclientd", "--workspace", str(kits / "site-a"))
    assert done.returncode == 3, done.stderr
    assert not CORE_LINE.search(done.stderr), done.stderr
