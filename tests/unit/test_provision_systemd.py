"""The systemd units: packaged copies match the templates, and systemd accepts them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import provision
from provision import templates

REPO = Path(provision.__file__).resolve().parents[1]
PACKAGED = REPO / "packaging" / "systemd"
HARDENING = [
    "Type=notify",
    "NotifyAccess=main",
    "Restart=on-failure",
    "RestartSec=5",
    "RestartPreventExitStatus=2",
    "TimeoutStopSec=60",
    "User=flstack",
    "NoNewPrivileges=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter=@system-service",
    "UMask=0077",
    "LockPersonality=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectControlGroups=yes",
    "RestrictRealtime=yes",
    "ProtectProc=invisible",
    "PrivateMounts=yes",
]
NOT_SET = (
    "ProcSubset=",  # torch and psutil read /proc/cpuinfo and /proc/meminfo
    "MemoryDenyWriteExecute=",  # JIT compilers (torch.compile's Triton, numba) map W+X memory
    "RemoveIPC=",  # one site's stop would remove the /dev/shm files of the others' trainings
    "PrivateUsers=",  # never tried with GPU drivers or a site's shared data folders
)
"""Hardening left out on purpose (docs/security.md, "The systemd units")."""


def test_packaged_units_are_the_templates_rendered_with_defaults() -> None:
    assert (PACKAGED / "flserverd.service").read_text() == templates.server_unit()
    assert (PACKAGED / "flclientd@.service").read_text() == templates.client_unit()


def test_server_unit() -> None:
    lines = templates.server_unit().splitlines()
    for setting in [*HARDENING, "PrivateDevices=yes"]:
        assert setting in lines
    assert not any(line.startswith(NOT_SET) for line in lines)
    assert "ExecStart=/opt/flstack/venv/bin/flserverd --workspace /var/lib/flstack/server" in lines
    assert "ReadWritePaths=/var/lib/flstack/server" in lines
    # MLflow's credentials: an Environment= line would show them to every local user
    assert "EnvironmentFile=-/etc/flstack/flserverd.env" in lines
    # what decides for the site is read-only to everything the service runs
    ro = "ReadOnlyPaths=/var/lib/flstack/server/startup /var/lib/flstack/server/local"
    assert ro in lines
    # the model-init child runs the app's code in the unit's cgroup
    assert {"MemoryMax=80%", "OOMPolicy=continue"} <= set(lines)


def test_client_unit_is_a_template_that_can_reach_gpus() -> None:
    lines = templates.client_unit().splitlines()
    for setting in HARDENING:
        assert setting in lines
    assert not any(line.startswith(NOT_SET) for line in lines)
    assert "ExecStart=/opt/flstack/venv/bin/flclientd --workspace /var/lib/flstack/%i" in lines
    assert "ReadWritePaths=/var/lib/flstack/%i" in lines
    assert "EnvironmentFile=-/etc/flstack/%i.env" in lines
    # no "-": systemd would skip a missing local/, which app code could then create
    assert "ReadOnlyPaths=/var/lib/flstack/%i/startup /var/lib/flstack/%i/local" in lines
    assert not any(line.startswith(("PrivateDevices=", "ProtectClock=")) for line in lines)
    # an app of built-ins (no approval needed) may not take the machine's memory, and the
    # daemon outlives a training child the kernel ends for it
    assert "MemoryMax=80%" in lines and "OOMPolicy=continue" in lines


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    probe = subprocess.run(
        [tool, "--version"], capture_output=True, text=True, check=False, timeout=30
    )
    if probe.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {probe.stderr.strip()}")
    return tool


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_analyze()
    prefix = tmp_path / "venv"
    (prefix / "bin").mkdir(parents=True)
    for program in ("flserverd", "flclientd"):
        (prefix / "bin" / program).write_text("#!/bin/sh\nexit 0\n")
        (prefix / "bin" / program).chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    (units / "flserverd.service").write_text(templates.server_unit(str(prefix), str(tmp_path)))
    client = templates.client_unit(str(prefix), str(tmp_path))
    (units / "flclientd@.service").write_text(client)
    (units / "flclientd@site-a.service").write_text(client)
    for name in ("flserverd.service", "flclientd@.service", "flclientd@site-a.service"):
        run = subprocess.run(
            [tool, "verify", str(units / name)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd=units,
        )
        assert run.returncode == 0, run.stderr
        assert run.stderr.strip() == "", run.stderr


HIDEPID_PROBE = """
import json, os, subprocess, sys
from flcore.daemon import forbid_core_dumps
from flcore.proctable import descendants
forbid_core_dumps()
rank = "import os, signal; print(os.getpid(), flush=True); signal.pause()"
start = (
    f"import subprocess, sys; subprocess.run([sys.executable, '-c', {rank!r}], "
    "start_new_session=True)"
)
child = subprocess.Popen([sys.executable, "-c", start], stdout=subprocess.PIPE, text=True)
rank_pid = int(child.stdout.readline())
seen = sorted(descendants(os.getpid()))
os.kill(rank_pid, 9)
child.wait()
print(json.dumps({"seen": seen, "expected": sorted([child.pid, rank_pid])}))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a /proc of its own needs root")
def test_protect_proc_leaves_the_client_daemon_its_children_and_their_ranks() -> None:
    """ProtectProc=invisible mounts /proc with hidepid=invisible: a process another cannot
    ptrace is hidden from it, and the daemons make themselves not dumpable. The client
    daemon must still find its training child and the ranks torchrun moves into sessions of
    their own (flcore.proctable), or it could not end them: they are dumpable again after
    their exec. Run without CAP_SYS_PTRACE and outside group 0, which hidepid exempts."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("setpriv") is None:
        pytest.skip("unshare and setpriv are not installed")
    script = (
        "mount -t proc -o hidepid=invisible proc /proc || exit 77; "
        'exec setpriv --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all "$@"'
    )
    probe = [sys.executable, "-c", HIDEPID_PROBE]
    run = subprocess.run(
        [unshare, "--pid", "--fork", "--mount", "sh", "-c", script, "sh", *probe],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if run.returncode == 77 or "unshare failed" in run.stderr:
        pytest.skip(f"cannot mount a /proc with hidepid here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["seen"] == found["expected"]
