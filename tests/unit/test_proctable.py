"""flcore.proctable: the /proc scan the client daemon's kill and the tests share."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from flcore.proctable import command_line, descendants, process_table

# A parent that starts a grandchild in a process group of its own, as torchrun does with ranks.
SCRIPT = (
    "import os, subprocess, sys, time; "
    "child = subprocess.Popen(['sleep', '60'], start_new_session=True); "
    "print(child.pid, flush=True); time.sleep(60)"
)


def test_the_table_finds_descendants_that_left_the_group() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, "proctable-test-marker"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    try:
        table = {p.pid: p for p in process_table()}
        me = table[os.getpid()]
        assert me.parent == os.getppid() and me.group == os.getpgrp() and me.state != "Z"
        assert table[parent.pid].group == parent.pid
        assert table[grandchild].parent == parent.pid
        assert table[grandchild].group == grandchild  # out of reach of killpg(parent)
        assert descendants(parent.pid) == [grandchild]
        assert "proctable-test-marker" in command_line(parent.pid)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        os.killpg(grandchild, signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 10
    while command_line(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)  # polling for the kill to land, not a stand-in for an event
    assert command_line(grandchild) == ""
