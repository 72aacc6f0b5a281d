"""flcore.faultpoints: kill and hold points act in a development checkout only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from flcore import faultpoints
from fldev.faultswitch import from_spec, hold_path, release
from fldev.poll import wait_until

ROOT = Path(__file__).resolve().parents[2]
REACH_TWICE = (
    "from flcore import faultpoints\n"
    "faultpoints.arm()\n"
    "faultpoints.reached('server.upload')\n"
    "print('after the first', flush=True)\n"
    "faultpoints.reached('server.upload')\n"
    "print('after the second', flush=True)\n"
)


def run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """REACH_TWICE in a fresh interpreter (-c: the working folder is first on sys.path)."""
    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", faultpoints.FAULT_ENV)}
    return subprocess.run(
        [sys.executable, "-c", REACH_TWICE],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.timeout(90)
def test_a_checkout_is_killed_at_the_named_reach() -> None:
    done = run({faultpoints.FAULT_ENV: "kill:server.upload@2"}, ROOT)
    assert done.returncode == -signal.SIGKILL
    assert done.stdout == "after the first\n"
    assert "fault point server.upload reached (2): SIGKILL" in done.stderr


@pytest.mark.timeout(90)
def test_without_fldev_the_variable_is_ignored(tmp_path: Path) -> None:
    """The installed product has no fldev: the points do nothing, and the log says why."""
    done = run({faultpoints.FAULT_ENV: "kill:server.upload@1"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after the first\nafter the second\n"
    assert "FLSTACK_FAULT is set but ignored" in done.stderr


@pytest.mark.timeout(90)
def test_an_fldev_planted_on_the_path_is_refused(tmp_path: Path) -> None:
    """A kit's environment or an app's resources/ could put an fldev on PYTHONPATH: only the
    one beside flcore counts. This planted switch would kill the process at once."""
    planted = tmp_path / "kit" / "fldev"
    planted.mkdir(parents=True)
    (planted / "__init__.py").write_text("")
    (planted / "faultswitch.py").write_text(
        "import os, signal\n"
        "def from_spec(spec, points):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = {faultpoints.FAULT_ENV: "kill:server.upload@1", "PYTHONPATH": str(planted.parent)}
    done = run(env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after the first\nafter the second\n"
    assert "is not part of this checkout" in done.stderr


@pytest.mark.timeout(90)
def test_a_fault_that_cannot_be_read_stops_the_process_at_start() -> None:
    done = run({faultpoints.FAULT_ENV: "explode:server.nowhere"}, ROOT)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "FLSTACK_FAULT: cannot read 'explode:server.nowhere'" in done.stderr


def test_a_hold_blocks_until_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLSTACK_FAULT_DIR", str(tmp_path))
    switch = from_spec("hold:server.checkpoint@1", faultpoints.POINTS)
    passed = threading.Event()

    def reach() -> None:
        switch("server.upload")  # another point: nothing happens
        switch("server.checkpoint")
        passed.set()

    thread = threading.Thread(target=reach)
    thread.start()
    fifo = hold_path(tmp_path, "server.checkpoint")
    wait_until(fifo.exists, 10, "the hold's FIFO")
    assert not passed.is_set()
    release(tmp_path, "server.checkpoint")
    thread.join(10)
    assert passed.is_set() and not fifo.exists()
    switch("server.checkpoint")  # the second reach is not armed
