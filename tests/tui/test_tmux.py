"""Smoke test: the real ``fltui`` command in a real terminal (tmux), against a real server."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fldev.cluster import ADMIN, Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
TMUX = shutil.which("tmux")


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed: the terminal smoke test needs it")
def test_fltui_in_tmux_shows_project_and_clients(live: Cluster, tmp_path: Path) -> None:
    assert TMUX is not None
    tmux = [TMUX, "-S", str(tmp_path / "tmux.sock")]
    env = {**os.environ, "TERM": "xterm-256color"}
    command = shlex.join(
        [sys.executable, "-m", "fltui", "--startup", str(live.kit()), "--user", ADMIN]
    )
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "120", "-y", "36", "-s", "fltui", command],
        check=True,
        env=env,
    )

    def capture() -> str:
        done = subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "fltui"], capture_output=True, text=True, env=env
        )
        return done.stdout

    def connected_screen() -> str:
        text = capture()
        return text if "● connected" in text and "flclient1" in text else ""

    def command_replied() -> str:
        text = capture()
        return text if "check_status server" in text else ""

    try:
        text = wait_until(connected_screen, 30, "the console to show the server's clients")
        header = text.splitlines()[0]
        assert "itest" in header and ADMIN in header
        assert "Clients (" in text and "u Upload" in text
        # Keys in one go, as a paste or SSH delivers them: all of them reach the command line
        # (issue 10, defect 3: the v of "server" used to open the validation screen). The
        # reply's notification is titled with the command (its log lines may scroll away).
        subprocess.run(
            [*tmux, "send-keys", "-t", "fltui", ":check_status server", "Enter"],
            check=True,
            env=env,
        )
        replied = wait_until(
            command_replied,
            30,
            "the command's reply (its notification is titled with the command)",
        )
        assert "Cross-site validation" not in replied and "Shut down" not in replied
        subprocess.run([*tmux, "send-keys", "-t", "fltui", "q"], check=True, env=env)
        wait_until(
            lambda: subprocess.run([*tmux, "has-session", "-t", "fltui"], env=env).returncode,
            10,
            "fltui to quit on q",
        )
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, env=env)
