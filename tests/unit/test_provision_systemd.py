"""The systemd units: packaged copies match the templates, and systemd accepts them."""

from __future__ import annotations

import shutil
import subprocess
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
]


def test_packaged_units_are_the_templates_rendered_with_defaults() -> None:
    assert (PACKAGED / "flserverd.service").read_text() == templates.server_unit()
    assert (PACKAGED / "flclientd@.service").read_text() == templates.client_unit()


def test_server_unit() -> None:
    lines = templates.server_unit().splitlines()
    for setting in [*HARDENING, "PrivateDevices=yes"]:
        assert setting in lines
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
