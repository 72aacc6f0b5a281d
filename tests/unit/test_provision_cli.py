"""flprovision on the command line: output, exit codes, and nothing written on bad input."""

from __future__ import annotations

import os
import re
import stat
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

import provision
from flserverd.commands import COMMANDS
from provision.cli import main
from provision.csr import colon_hex
from provision.kits import write_kit_zip
from provision.pki import fingerprint
from provision.templates import sample_project
from tests.flprovision import flprovision

REPO = Path(provision.__file__).resolve().parents[1]
LINE = re.compile(r"^===> password: ([A-Za-z0-9]{16,}) for (\S+\.zip)( to \S+@\S+)?$")


def _write_project(tmp_path: Path, mapping: dict[str, Any]) -> Path:
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(mapping))
    return path


def _passwords(stdout: str) -> dict[str, str]:
    found = {}
    for line in stdout.splitlines():
        match = LINE.match(line)
        if match:
            found[match.group(2)] = match.group(1)
    return found


def test_provision_prints_one_line_per_kit(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project = _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert all(LINE.match(line) for line in lines), lines
    assert [LINE.match(line).group(2) for line in lines] == [  # type: ignore[union-attr]
        "server.zip",
        "site-a.zip",
        "site-b.zip",
        "lead@example.org.zip",
        "viewer@example.org.zip",
    ]
    assert lines[1].endswith(" to it@a.example.org")
    assert lines[2].endswith("site-b.zip")
    assert "PRIVATE KEY" not in out + err
    # Lead IT reads the CA's fingerprint to pass on; stdout stays the password lines.
    ca = x509.load_pem_x509_certificate((tmp_path / "ws" / "state" / "rootCA.pem").read_bytes())
    assert err == f"===> project CA fingerprint (SHA-256): {colon_hex(fingerprint(ca))}\n"


def test_second_run_names_the_skipped_kits(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project = _write_project(tmp_path, provision_project_mapping)
    workspace = str(tmp_path / "ws")
    assert main(["-p", str(project), "-w", workspace]) == 0
    first = _passwords(capsys.readouterr().out)
    provision_project_mapping["clients"].append({"name": "site-c", "org": "c"})
    _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", workspace]) == 0
    out = capsys.readouterr().out
    assert list(_passwords(out)) == ["site-c.zip"]
    assert "===> skipped server.zip, site-a.zip, site-b.zip" in out
    assert "already issued" in out
    for password in first.values():
        assert password not in out


def test_passwords_file_is_private_and_matches_stdout(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project = _write_project(tmp_path, provision_project_mapping)
    passwords = tmp_path / "passwords.txt"
    argv = ["-p", str(project), "-w", str(tmp_path / "ws"), "--passwords-file", str(passwords)]
    assert main(argv) == 0
    assert passwords.read_text() == capsys.readouterr().out
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600
    assert main([*argv, "--force"]) == 1
    assert "passwords.txt: already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m["server"].pop("host"), "server: missing required key 'host'"),
        (lambda m: m["clients"][1].update(name="site-a"), "clients[1]: duplicate client name"),
        (lambda m: m["admins"][0].update(email="x"), "admins[0]: 'email' must be an email"),
        (lambda m: m["server"].update(admin_port=70000), "'admin_port' must be between 1 and"),
        (lambda m: m["server"].update(fed_port=True), "'fed_port' must be an integer, got true"),
        (lambda m: m.update(extra=1), "unknown key 'extra'"),
        (lambda m: m["clients"][0].update(name="global"), "'name' must not be a word flstack"),
    ],
)
def test_invalid_project_exits_2_and_writes_nothing(
    tmp_path: Path,
    provision_project_mapping: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    change: Any,
    expected: str,
) -> None:
    change(provision_project_mapping)
    project = _write_project(tmp_path, provision_project_mapping)
    passwords = tmp_path / "pw.txt"
    argv = ["-p", str(project), "-w", str(tmp_path / "ws"), "--passwords-file", str(passwords)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"flprovision: error: {project}: ")
    assert expected in err
    assert len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project.yml"]


def test_refused_run_removes_its_passwords_file(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project = _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 0
    provision_project_mapping["server"]["host"] = "fl.example.org"
    _write_project(tmp_path, provision_project_mapping)
    passwords = tmp_path / "pw.txt"
    argv = ["-p", str(project), "-w", str(tmp_path / "ws"), "--passwords-file", str(passwords)]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "server.host 'localhost' -> 'fl.example.org'" in err
    assert not passwords.exists()


def test_missing_project_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", str(tmp_path / "nope.yml"), "-w", str(tmp_path / "ws")]) == 1
    assert "nope.yml: cannot read it" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_usage_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-p", "project.yml"]) == 1  # 2 says project.yml is invalid
    assert "-w/--workspace" in capsys.readouterr().err
    assert main(["extract"]) == 1
    assert main(["--help"]) == 0


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["bogus"], "unknown command 'bogus': the commands are init, revoke, crl, "),
        (["extrct", "kit.zip", "-d", "x"], "unknown command 'extrct': did you mean 'extract'? "),
    ],
)
def test_an_unknown_command_is_named(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said 'the following arguments are required: -w/--workspace'."""
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"flprovision: error: {said}") and "-w/--workspace" not in err
    assert "'flprovision -p project.yml -w WORKSPACE' provisions" in err


def test_a_workspace_that_cannot_be_made_is_said_in_words(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    """It showed ``[Errno 2] No such file or directory: '/proc/forbidden'``."""
    project = _write_project(tmp_path, provision_project_mapping)
    (tmp_path / "a-file").write_text("")
    workspace = tmp_path / "a-file" / "ws"
    assert main(["-p", str(project), "-w", str(workspace)]) == 1
    assert capsys.readouterr().err == (
        f"flprovision: error: {workspace}: cannot create the workspace (Not a directory)\n"
    )


def test_a_yaml_syntax_error_names_the_file_line_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said 'not valid YAML (while parsing a flow mapping in "<unicode string>", line 2,
    column 9: server: {host: a, ^ expected ...'."""
    project = tmp_path / "project.yml"
    project.write_text("name: x\nserver: {host: a,\n  fed_port: 1\n  admin_port: 2}\n")
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 2
    assert capsys.readouterr().err == (
        f"flprovision: error: {project}: not valid YAML: expected ',' or '}}', but got ':' at "
        "line 4, column 13 (while parsing a flow mapping at line 2, column 9)\n"
    )


def test_warnings_go_to_stderr(
    tmp_path: Path, provision_project_mapping: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    project = _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 0
    capsys.readouterr()
    del provision_project_mapping["clients"][1]
    _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 0
    out, err = capsys.readouterr()
    warning, fingerprint_line = err.splitlines()
    assert warning == (
        "flprovision: site-b left project.yml; its kit stays valid until it expires "
        f"(flprovision revoke site-b -w {tmp_path / 'ws'} ends it now)"
    )
    assert fingerprint_line.startswith("===> project CA fingerprint (SHA-256): ")
    assert out.startswith("===> skipped ")


def test_an_unexpected_error_is_one_line(
    tmp_path: Path,
    provision_project_mapping: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object) -> None:
        raise ValueError("Attribute's length must be >= 1 and <= 64, but it was 65")

    monkeypatch.setattr("provision.engine.create_ca", broken)
    project = _write_project(tmp_path, provision_project_mapping)
    assert main(["-p", str(project), "-w", str(tmp_path / "ws")]) == 1
    assert capsys.readouterr().err == (
        "flprovision: error: unexpected ValueError: "
        "Attribute's length must be >= 1 and <= 64, but it was 65\n"
    )


def test_init_writes_a_sample_that_provisions(tmp_path: Path) -> None:
    init = flprovision("init", cwd=tmp_path)
    assert init.returncode == 0, init.stderr
    assert (tmp_path / "project.yml").read_text().startswith("# project.yml")
    again = flprovision("init", cwd=tmp_path)
    assert again.returncode == 1
    assert (
        again.stderr
        == "flprovision: error: project.yml: already exists; use --force to overwrite it\n"
    )
    assert flprovision("init", "--force", cwd=tmp_path).returncode == 0
    run = flprovision("-p", "project.yml", "-w", "ws", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert list(_passwords(run.stdout)) == [
        "server.zip",
        "flclient1.zip",
        "flclient2.zip",
        "email@hello.world.com.zip",
    ]
    assert "Traceback" not in run.stderr


def test_the_sample_lists_every_command_a_member_may_run() -> None:
    """It listed check_status and validate only."""
    text = sample_project()
    intro = "member: only the commands that look:"
    start = text.index(intro) + len(intro)
    listed = []
    for line in text[start:].splitlines()[1:]:
        if not line.strip().startswith("#"):
            break
        listed += [name.strip() for name in line.strip(" #").split(",") if name.strip()]
    assert listed == [name for name, spec in COMMANDS.items() if spec.read_only]


def test_init_to_a_named_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "p.yml")]) == 0
    assert "p.yml" in capsys.readouterr().out
    assert (tmp_path / "p.yml").exists()


@pytest.fixture
def extracted_client(provisioned_workspace: Any, tmp_path: Path) -> Path:
    dest = tmp_path / "site-a"
    kit = provisioned_workspace.kit("site-a")
    password = provisioned_workspace.password("site-a")
    assert main(["extract", str(kit), "-p", password, "-d", str(dest)]) == 0
    return dest


def test_extract_restores_modes(extracted_client: Path) -> None:
    modes = {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in (extracted_client / "startup").iterdir()
    }
    assert modes == {
        "client.crt": 0o644,
        "client.key": 0o600,
        "fed_client.json": 0o644,
        "flclientd@.service": 0o644,
        "rootCA.pem": 0o644,
        "signature.json": 0o644,
        "start.sh": 0o755,
    }
    # site IT's own folder is there from the start, for the unit to make it read-only
    assert stat.S_IMODE((extracted_client / "local").stat().st_mode) == 0o755


def test_extract_with_wrong_password_leaves_nothing(
    provisioned_workspace: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = tmp_path / "out"
    kit = provisioned_workspace.kit("server")
    assert main(["extract", str(kit), "-p", "wrong", "-d", str(dest)]) == 1
    assert capsys.readouterr().err == f"flprovision: error: {kit}: wrong password\n"
    assert not dest.exists()


def test_extract_refuses_to_overwrite(
    extracted_client: Path, provisioned_workspace: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    kit = provisioned_workspace.kit("site-a")
    password = provisioned_workspace.password("site-a")
    assert main(["extract", str(kit), "-p", password, "-d", str(extracted_client)]) == 1
    assert "startup: already exists" in capsys.readouterr().err
    assert sorted(p.name for p in extracted_client.iterdir()) == ["local", "startup"]


def test_extract_refuses_a_damaged_zip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    assert main(["extract", str(bad), "-p", "x", "-d", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "bad.zip: not a readable zip file" in err
    assert "copy the kit again from where it was issued" in err
    assert not (tmp_path / "out").exists()


def test_extract_refuses_an_aes_entry_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """pyzipper's struct.error (the entry's salt not all there) reached the user by name."""
    kit = tmp_path / "kit.zip"
    write_kit_zip(kit, {"fed_client.json": b"{}"}, "pw", datetime.now(UTC))
    data = bytearray(kit.read_bytes())
    data[28:30] = struct.pack("<H", 0xFFFF)  # the first entry's extra field runs past the end
    kit.write_bytes(bytes(data))
    assert main(["extract", str(kit), "-p", "pw", "-d", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "kit.zip: not a readable zip file" in err
    assert "copy the kit again from where it was issued" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("subfolder", ["", "startup"])
def test_verify_accepts_workspace_or_startup(
    extracted_client: Path, subfolder: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["verify", str(extracted_client / subfolder)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith("OK: ")
    # what site IT compares with lead IT's by phone: a swapped kit is sealed by its own CA
    ca = x509.load_pem_x509_certificate((extracted_client / "startup" / "rootCA.pem").read_bytes())
    assert said[1] == f"project CA fingerprint (SHA-256): {colon_hex(fingerprint(ca))}"


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda s: (s / "fed_client.json").write_text("{}"), "altered: fed_client.json"),
        (lambda s: (s / "client.key").unlink(), "missing: client.key"),
        (
            lambda s: (s / "fed_client.local.json").write_text("{}"),
            "unexpected: fed_client.local.json",
        ),
        (
            lambda s: (s / "client.crt").write_bytes((s / "rootCA.pem").read_bytes()),
            "altered: client.crt",
        ),
    ],
)
def test_verify_names_what_was_altered(
    extracted_client: Path, capsys: pytest.CaptureFixture[str], tamper: Any, expected: str
) -> None:
    tamper(extracted_client / "startup")
    assert main(["verify", str(extracted_client)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert expected in err
    assert len(err.splitlines()) == 1


def test_module_entry_pointsflprovision(tmp_path: Path) -> None:
    run = flprovision("--help", cwd=tmp_path)
    assert run.returncode == 0
    assert "flprovision init" in run.stdout
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.run(
        [sys.executable, "-m", "provision.cli", "verify", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert cli.returncode == 1
    assert cli.stderr.startswith("flprovision: error: ")
    assert "Traceback" not in cli.stderr


def test_extract_reads_the_password_from_a_pipe_not_the_command_line(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """Without a terminal, -p was the only way: the password went to ps and the shell's
    history. Now the first line of the input is the password."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    kit = provisioned_workspace.kit("site-a")
    command = [sys.executable, "-m", "provision", "extract", str(kit), "-d"]
    done = subprocess.run(
        [*command, str(tmp_path / "site-a")],
        input=provisioned_workspace.password("site-a") + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site-a" / "startup" / "client.key").is_file()
    empty = subprocess.run(
        [*command, str(tmp_path / "other")], input="", capture_output=True, text=True, env=env
    )
    assert empty.returncode == 1 and "no password: type it when asked" in empty.stderr
