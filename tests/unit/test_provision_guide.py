"""docs/provisioning.md's revocation, re-issue and CSR sections, run as written.

Each ``$ flprovision ...`` line of those sections' console blocks runs as a
process, in order, in one folder where the Quick start ran; its output (stdout,
then stderr) must be the lines the guide shows, with what differs per run (serials,
passwords, dates, fingerprints) masked. The site's folder of the guide is
mapped into the test's folder; files the guide says to send are copied.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.flprovision import flprovision
from tests.guides import DOCS, section_commands

GUIDE = DOCS / "provisioning.md"
SECTIONS = ("## Revoking a kit", "## Re-issuing a lost kit", "## Keys made at the site")
SITE = "/var/lib/flstack"
MASKS = [
    (re.compile(r"serial [0-9a-f]+"), "serial S"),
    (re.compile(r"password: \S+"), "password: P"),
    (re.compile(r"next update \d{4}-\d\d-\d\d"), "next update D"),
    (re.compile(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}"), "FINGERPRINT"),
]


def mask(text: str) -> str:
    """Output with what differs from run to run replaced by a word."""
    for pattern, word in MASKS:
        text = pattern.sub(word, text)
    return text


def guide_commands() -> list[tuple[str, list[str]]]:
    """(command, expected output lines) of the console blocks in SECTIONS, in order."""
    return [(c.line, c.output) for c in section_commands(GUIDE, SECTIONS)]


def run(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "flprovision", command
    return flprovision(*argv[1:], cwd=cwd)


def test_the_guide_runs_as_written(tmp_path: Path) -> None:
    commands = guide_commands()
    assert [c.split()[1] for c, _ in commands] == ["revoke", "-p", "request", "sign", "assemble"]
    assert run("flprovision init", tmp_path).returncode == 0
    project = yaml.safe_load((tmp_path / "project.yml").read_text())
    project["clients"].append({"name": "flclient3", "org": "hospital-c", "csr": True})
    (tmp_path / "project.yml").write_text(yaml.safe_dump(project))
    quick_start = run("flprovision -p project.yml -w fl-workspace", tmp_path)
    assert quick_start.returncode == 0, quick_start.stderr
    site = tmp_path / "site"
    fingerprint = ""
    for command, expected in commands:
        verb = command.split()[1]
        if verb == "sign":  # the site sent its request
            shutil.copy(site / "flclient3" / "request" / "flclient3.csr", tmp_path)
        if verb == "assemble":  # lead IT sent the kit and, by phone, the fingerprint
            shutil.copy(tmp_path / "fl-workspace" / "packages" / "flclient3.zip", tmp_path)
            command = re.sub(r"(?:[0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint, command)
        done = run(command.replace(SITE, str(site)), tmp_path)
        assert done.returncode == 0, (command, done.stderr)
        # A terminal shows stderr's lines after stdout's: flprovision writes them last.
        printed = [*done.stdout.splitlines(), *done.stderr.splitlines()]
        shown = [mask(line).replace(str(site), SITE) for line in printed]
        assert shown == [mask(line) for line in expected], command
        if verb == "sign":
            fingerprint = done.stdout.split("(SHA-256): ")[1].strip()
    assert (site / "flclient3" / "startup" / "client.key").exists()
