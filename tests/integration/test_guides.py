"""The guides a newcomer follows, run as written: provisioning.md's Quick start and
operations.md's "Try it on one machine", with real daemons on localhost.

The marked blocks (``<!-- guide: NAME -->``, see tests/guides.py) run in one
bash script, in order, with what differs from a person's machine put in
this way, and nothing else changed:

* ``HOME`` is a fresh folder of the test's, so ``~/fl`` is too;
* ``PATH`` starts with this interpreter's folder (``make install``'s
  ``.venv/bin``: flprovision, flserverd, flclientd, fltui, python);
* ``$EDITOR`` is a script that sets free ports in the project.yml it is
  given (a person edits them there when 8002 and 8003 are taken);
* the script starts in this checkout, the folder the guide says to run from.

Daemons the script starts in the background share its process group, which
the test kills at the end whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from fldev.cluster import free_ports
from fldev.poll import wait_until
from tests.guides import DOCS, REPO, Command, walkthrough
from tests.unit.test_provision_guide import mask

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TROUBLE = re.compile(r" (ERROR|CRITICAL) |Traceback")


def editor(folder: Path) -> Path:
    """An $EDITOR that gives the project.yml it is called with two free ports."""
    fed, admin = free_ports(2)
    script = folder / "set-ports"
    script.write_text(
        "#!/bin/sh\n"
        f"sed -i -e 's/fed_port: 8002/fed_port: {fed}/'"
        f" -e 's/admin_port: 8003/admin_port: {admin}/' \"$1\"\n"
    )
    script.chmod(0o755)
    return script


def run_script(commands: list[Command], tmp_path: Path, cwd: Path, timeout: float) -> str:
    """Run the commands as one bash script (set -e), as the guide's reader would; its output."""
    home = tmp_path / "home"
    home.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATA_ROOT", "NOTIFY_SOCKET", "FLSTACK_BIN")
    }
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        EDITOR=str(editor(tmp_path)),
        PYTHONUNBUFFERED="1",
        OMP_NUM_THREADS="1",
    )
    script = "set -euo pipefail\n" + "".join(
        f"echo '$ '{quoted(c.line)}\n{c.line}\n" for c in commands
    )
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == 0, output[-6000:]
    return output


def quoted(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_the_provisioning_quick_start(tmp_path: Path) -> None:
    commands = walkthrough(DOCS / "provisioning.md", "quick-start")
    assert [c.line.split()[0] for c in commands] == ["flprovision", "$EDITOR", "flprovision"]
    output = run_script(commands, tmp_path, tmp_path, 120)
    printed = [mask(line) for line in output.splitlines() if line.startswith("===>")]
    assert printed == [mask(line) for line in commands[-1].output]
    assert (tmp_path / "fl-workspace" / "packages" / "server.zip").is_file()


def _says_stopped(log: Path) -> bool:
    return "stopped" in log.read_text().splitlines()[-1]


def test_operations_on_one_machine(tmp_path: Path) -> None:
    commands = walkthrough(DOCS / "operations.md", "one-machine")
    assert commands[-1].line.endswith('--cmd "shutdown client" --cmd "shutdown server"')
    output = run_script(commands, tmp_path, REPO, 540)
    assert "Created folder" in output and "Server training is starting...." in output
    assert re.search(r"runs 1-1 of 1", output)
    assert "final validation: val_accuracy=" in output
    assert "Shutting down the server..." in output
    fl = tmp_path / "home" / "fl"
    assert (fl / "email@hello.world.com" / "transfer" / "digits_fedavg").is_dir()
    for log in ("server.log", "flclient1.log", "flclient2.log"):
        # The shutdown command returns as the daemons begin to stop: their last line follows.
        wait_until(partial(_says_stopped, fl / log), 30, f"{log} to end with 'stopped'")
        text = (fl / log).read_text()
        trouble = [line for line in text.splitlines() if TROUBLE.search(line)]
        assert trouble == [], f"{log}:\n" + "\n".join(trouble)
