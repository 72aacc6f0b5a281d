"""The kits: file lists, modes, AES-256 encryption, startup configs and scripts."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import stat
import subprocess
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
import pyzipper
from cryptography import x509

from flcore.kitsig import verify_startup
from flcore.startup import load_admin, load_client, load_server
from flcore.tls import TlsFiles, channel_credentials, server_credentials
from provision import extract_kit, parse_project, read_kit
from provision.errors import ProvisionError
from provision.kits import PARALLEL_FROM, KitZip, new_password, write_kit_zips

SERVER_FILES = [
    "fed_server.json",
    "flserverd.service",
    "rootCA.pem",
    "server.crt",
    "server.key",
    "signature.json",
    "start.sh",
]
CLIENT_FILES = [
    "client.crt",
    "client.key",
    "fed_client.json",
    "flclientd@.service",
    "rootCA.pem",
    "signature.json",
    "start.sh",
]
ADMIN_FILES = [
    "client.crt",
    "client.key",
    "fed_admin.json",
    "fl_admin.sh",
    "rootCA.pem",
    "signature.json",
]
SEVEN_ZIP = shutil.which("7zz") or shutil.which("7z")


def _expected_mode(name: str) -> int:
    if name.endswith(".key"):
        return 0o600
    return 0o755 if name.endswith(".sh") else 0o644


@pytest.mark.parametrize(
    ("kit", "files"),
    [("server", SERVER_FILES), ("site-a", CLIENT_FILES), ("lead@example.org", ADMIN_FILES)],
)
def test_kit_files_and_modes_in_zip(provisioned_workspace: Any, kit: str, files: list[str]) -> None:
    with pyzipper.AESZipFile(provisioned_workspace.kit(kit)) as archive:
        infos = archive.infolist()
        assert sorted(i.filename for i in infos) == [f"startup/{name}" for name in files]
        for info in infos:
            assert info.create_system == 3
            mode = info.external_attr >> 16
            assert stat.S_ISREG(mode)
            assert stat.S_IMODE(mode) == _expected_mode(info.filename), info.filename
            archive.setpassword(provisioned_workspace.password(kit).encode())
            assert archive.read(info)


def test_kit_zip_is_private(provisioned_workspace: Any) -> None:
    assert stat.S_IMODE(provisioned_workspace.kit("server").stat().st_mode) == 0o600


def test_every_entry_is_aes_256_encrypted(provisioned_workspace: Any) -> None:
    with zipfile.ZipFile(provisioned_workspace.kit("site-a")) as archive:
        for info in archive.infolist():
            assert info.flag_bits & 0x1, f"{info.filename} is not encrypted"
            assert info.compress_type == 99, "not WinZip AES"
            # AES extra field: id 0x9901, size 7, version, "AE", strength (3 = 256 bits), method.
            at = info.extra.index(b"\x01\x99\x07\x00")
            assert info.extra[at + 6 : at + 9] == b"AE\x03"


def test_stdlib_zipfile_cannot_read_a_kit(provisioned_workspace: Any) -> None:
    with zipfile.ZipFile(provisioned_workspace.kit("server")) as archive:
        archive.setpassword(provisioned_workspace.password("server").encode())
        with pytest.raises(NotImplementedError):
            archive.read("startup/server.key")


@pytest.mark.timeout(30)
def test_a_kit_that_is_no_regular_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """`flprovision extract /dev/zero` once read without end."""
    from provision import ProvisionError

    for path in (Path("/dev/zero"), tmp_path):
        with pytest.raises(ProvisionError, match=r"not a regular file; a kit is the \.zip file"):
            read_kit(path, "pw")


def test_wrong_password_is_a_clear_error(provisioned_workspace: Any, tmp_path: Path) -> None:
    from provision import ProvisionError

    with pytest.raises(ProvisionError, match=r"server\.zip: wrong password$"):
        read_kit(provisioned_workspace.kit("server"), "not-the-password")
    with pytest.raises(ProvisionError, match="wrong password"):
        extract_kit(provisioned_workspace.kit("server"), "nope", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_kit_with_a_file_in_the_clear_is_refused_whatever_the_password(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The seal is checked against the CA in the same zip, so only the password proves where a
    kit comes from: a zip of plain files (here a real kit's, seal and all, as someone who swaps
    the zip on its way would ship a CA and server address of their own) once opened under any
    password."""
    from provision import ProvisionError

    kit = provisioned_workspace.kit("site-a")
    files = read_kit(kit, provisioned_workspace.password("site-a"))
    plain = tmp_path / "site-a.zip"
    with zipfile.ZipFile(plain, "w") as archive:
        for name, data in files.items():
            archive.writestr(f"startup/{name}", data)
    with pytest.raises(ProvisionError, match=r"is not encrypted with the kit's password; "):
        extract_kit(plain, provisioned_workspace.password("site-a"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(SEVEN_ZIP is None, reason="needs 7zz (Debian/Ubuntu 7zip) or 7z (p7zip-full)")
def test_seven_zip_extracts_a_kit(provisioned_workspace: Any, tmp_path: Path) -> None:
    assert SEVEN_ZIP is not None
    kit = provisioned_workspace.kit("site-a")
    dest = tmp_path / "site"
    bad = subprocess.run(
        [SEVEN_ZIP, "x", "-pwrong", f"-o{dest}", str(kit)], capture_output=True, check=False
    )
    assert bad.returncode != 0
    shutil.rmtree(dest, ignore_errors=True)
    password = provisioned_workspace.password("site-a")
    subprocess.run(
        [SEVEN_ZIP, "x", f"-p{password}", f"-o{dest}", str(kit)], capture_output=True, check=True
    )
    assert sorted(p.name for p in (dest / "startup").iterdir()) == CLIENT_FILES
    verify_startup(dest / "startup")
    assert os.access(dest / "startup" / "start.sh", os.X_OK)


def test_passwords_are_long_random_letters_and_digits() -> None:
    passwords = {new_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) >= 16
        assert password.isalnum() and password.isascii()


def _extract(workspace: Any, kit: str, dest: Path) -> Path:
    return extract_kit(workspace.kit(kit), workspace.password(kit), dest)


def test_startup_configs_match_the_project(provisioned_workspace: Any, tmp_path: Path) -> None:
    _extract(provisioned_workspace, "server", tmp_path / "server")
    server = load_server(tmp_path / "server")
    assert (server.project, server.name, server.host) == ("demo", "server", "localhost")
    assert (server.fed_port, server.admin_port, server.listen_host) == (8002, 8003, "localhost")
    assert (server.heart_beat_timeout, server.heartbeat_interval) == (5.0, 1.0)

    _extract(provisioned_workspace, "site-a", tmp_path / "site-a")
    client = load_client(tmp_path / "site-a")
    assert (client.name, client.server_target) == ("site-a", "localhost:8002")
    assert (client.heartbeat_interval, client.retry_window) == (1.0, 30.0)

    startup = _extract(provisioned_workspace, "viewer@example.org", tmp_path / "viewer")
    admin = load_admin(startup)
    assert (admin.email, admin.role, admin.admin_target) == (
        "viewer@example.org",
        "member",
        "localhost:8003",
    )


def test_certificates_in_kits_name_their_participant(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    from flcore.identity import identity_from_pem

    root = x509.load_pem_x509_certificate(
        (provisioned_workspace.root / "state" / "rootCA.pem").read_bytes()
    )
    cases = [
        ("server", "server.crt", "localhost"),
        ("site-b", "client.crt", "site-b"),
        ("lead@example.org", "client.crt", "lead@example.org"),
    ]
    for kit, cert_file, name in cases:
        startup = _extract(provisioned_workspace, kit, tmp_path / kit)
        pem = (startup / cert_file).read_bytes()
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(root)
        assert identity_from_pem(pem).name == name
        assert (startup / "rootCA.pem").read_bytes() == (
            provisioned_workspace.root / "state" / "rootCA.pem"
        ).read_bytes()


def test_public_server_listens_everywhere(
    provision_project_mapping: dict[str, Any], provision_into: Any, tmp_path: Path
) -> None:
    provision_project_mapping["server"]["host"] = "fl.example.org"
    provision_project_mapping["settings"]["install_prefix"] = "/srv/fl/venv"
    provision_project_mapping["settings"]["workspace_base"] = "/srv/fl/sites"
    workspace = provision_into(provision_project_mapping)
    startup = _extract(workspace, "server", tmp_path / "server")
    assert load_server(tmp_path / "server").listen_host == "0.0.0.0"  # noqa: S104
    unit = (startup / "flserverd.service").read_text()
    assert "ExecStart=/srv/fl/venv/bin/flserverd --workspace /srv/fl/sites/server\n" in unit
    client_unit = (_extract(workspace, "site-a", tmp_path / "a") / "flclientd@.service").read_text()
    assert "ExecStart=/srv/fl/venv/bin/flclientd --workspace /srv/fl/sites/%i\n" in client_unit


def test_public_ipv6_server_listens_on_every_ipv6_address(
    provision_project_mapping: dict[str, Any], provision_into: Any, tmp_path: Path
) -> None:
    provision_project_mapping["server"]["host"] = "2001:db8::7"
    workspace = provision_into(provision_project_mapping)
    _extract(workspace, "server", tmp_path / "server")
    _extract(workspace, "site-a", tmp_path / "a")
    assert load_server(tmp_path / "server").listen_host == "[::]"
    assert load_client(tmp_path / "a").server_target == "[2001:db8::7]:8002"


def _free_ipv6_ports(count: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET6) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("::1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_an_ipv6_server_is_reached_through_its_kits(
    provision_project_mapping: dict[str, Any], provision_into: Any, tmp_path: Path
) -> None:
    """A real TLS gRPC server bound as flserverd binds, dialled as the console dials."""
    fed_port, admin_port = _free_ipv6_ports(2)
    provision_project_mapping["server"].update(host="::1", fed_port=fed_port, admin_port=admin_port)
    workspace = provision_into(provision_project_mapping)
    server = load_server(_extract(workspace, "server", tmp_path / "server").parent)
    admin_startup = _extract(workspace, "lead@example.org", tmp_path / "admin")
    admin = load_admin(admin_startup)
    assert admin.admin_target == f"[::1]:{admin_port}"

    async def dial() -> None:
        listener = grpc.aio.server()
        credentials = server_credentials(TlsFiles.named_by(server, tmp_path / "server/startup"))
        assert listener.add_secure_port(f"{server.listen_host}:{server.admin_port}", credentials)
        await listener.start()
        channel_creds = channel_credentials(TlsFiles.named_by(admin, admin_startup))
        try:
            async with grpc.aio.secure_channel(admin.admin_target, channel_creds) as channel:
                await asyncio.wait_for(channel.channel_ready(), 10)
        finally:
            await listener.stop(None)

    asyncio.run(dial())


def _fake_commands(folder: Path) -> Path:
    folder.mkdir()
    for program in ("flserverd", "flclientd", "fltui"):
        script = folder / program
        script.write_text(f'#!/bin/sh\nprintf "%s\\n" {program} "$@"\n')
        script.chmod(0o755)
    return folder


@pytest.mark.parametrize(
    ("kit", "script", "expected"),
    [
        ("server", "start.sh", ["flserverd", "--workspace", "{root}", "--extra"]),
        ("site-a", "start.sh", ["flclientd", "--workspace", "{root}", "--extra"]),
        (
            "lead@example.org",
            "fl_admin.sh",
            ["fltui", "--startup", "{root}/startup", "--user", "lead@example.org", "--extra"],
        ),
    ],
)
def test_scripts_start_the_right_program(
    provisioned_workspace: Any, tmp_path: Path, kit: str, script: str, expected: list[str]
) -> None:
    root = tmp_path / "kit"
    startup = _extract(provisioned_workspace, kit, root)
    env = {**os.environ, "FLSTACK_BIN": str(_fake_commands(tmp_path / "bin"))}
    run = subprocess.run(
        [str(startup / script), "--extra"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.splitlines() == [part.format(root=root) for part in expected]
    # An admin's apps go into transfer/ beside startup/: the admin's script makes it.
    assert (root / "transfer").is_dir() == (script == "fl_admin.sh")


def test_a_virtual_environment_given_as_flstack_bin_is_taken_for_its_bin(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    startup = _extract(provisioned_workspace, "site-a", tmp_path / "kit")
    venv = tmp_path / "venv"
    venv.mkdir()
    _fake_commands(venv / "bin")
    run = subprocess.run(
        [str(startup / "start.sh")],
        env={**os.environ, "FLSTACK_BIN": str(venv)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert run.stdout.splitlines()[0] == "flclientd"


@pytest.mark.parametrize(
    ("kit", "script", "program"),
    [("site-a", "start.sh", "flclientd"), ("lead@example.org", "fl_admin.sh", "fltui")],
)
def test_a_command_not_found_says_where_to_find_it(
    provisioned_workspace: Any, tmp_path: Path, kit: str, script: str, program: str
) -> None:
    """It said ``exec: flclientd: not found``."""
    startup = _extract(provisioned_workspace, kit, tmp_path / "kit")
    bare = {key: value for key, value in os.environ.items() if key != "FLSTACK_BIN"}
    bare["PATH"] = "/usr/bin:/bin"
    run = subprocess.run([str(startup / script)], env=bare, capture_output=True, text=True)
    assert run.returncode == 127
    assert run.stderr == (
        f"{script}: {program} is not on PATH: activate the virtual environment where flstack "
        "is installed (source <venv>/bin/activate), or set FLSTACK_BIN to its bin/ folder\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    run = subprocess.run(
        [str(startup / script)],
        env={**bare, "FLSTACK_BIN": str(empty)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 127
    assert run.stderr.startswith(f"{script}: FLSTACK_BIN={empty} holds no {program}, nor ")
    assert "set FLSTACK_BIN to the bin/ folder of the virtual environment" in run.stderr


def test_kits_verify_after_extract(provisioned_workspace: Any, tmp_path: Path) -> None:
    for kit in ("server", "site-a", "site-b", "lead@example.org", "viewer@example.org"):
        startup = _extract(provisioned_workspace, kit, tmp_path / kit)
        verify_startup(startup)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in startup.iterdir()}
        assert modes == {name: _expected_mode(name) for name in modes}
        assert stat.S_IMODE(startup.stat().st_mode) == 0o700


def test_project_settings_reach_every_kit(
    provision_project_mapping: dict[str, Any], provision_into: Any, tmp_path: Path
) -> None:
    provision_project_mapping["settings"].update(retry_window=7, key_type="ecdsa-p384")
    workspace = provision_into(provision_project_mapping)
    startup = _extract(workspace, "site-b", tmp_path / "b")
    assert json.loads((startup / "fed_client.json").read_text())["retry_window"] == 7
    cert = x509.load_pem_x509_certificate((startup / "client.crt").read_bytes())
    assert cert.public_key().key_size == 384  # type: ignore[union-attr]
    assert parse_project(provision_project_mapping).settings.key_type == "ecdsa-p384"


def test_many_kits_written_by_worker_processes_are_encrypted_and_complete(
    tmp_path: Path,
) -> None:
    """From PARALLEL_FROM zips on, the workers write them: each must read back whole, AES-256,
    under its own password, and be private."""
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    zips = [
        KitZip(tmp_path / f"site{i}.zip", {"a.txt": b"x" * i, "b.key": b"secret"}, f"pw{i}", when)
        for i in range(PARALLEL_FROM)
    ]
    write_kit_zips(zips)
    for i, each in enumerate(zips):
        assert stat.S_IMODE(each.path.stat().st_mode) == 0o600
        assert read_kit(each.path, f"pw{i}") == {"a.txt": b"x" * i, "b.key": b"secret"}
        with zipfile.ZipFile(each.path) as archive:
            for info in archive.infolist():
                at = info.extra.index(b"\x01\x99\x07\x00")  # WinZip AES, 256 bits
                assert info.compress_type == 99 and info.extra[at + 6 : at + 9] == b"AE\x03"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(z.path.name for z in zips)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_000")
def test_extract_makes_the_workspace_private_whatever_the_umask(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """Under umask 000 the workspace was created 0777: anyone could replace its local/."""
    dest = tmp_path / "sites" / "site-a"
    _extract(provisioned_workspace, "site-a", dest)
    assert (_mode(dest.parent), _mode(dest), _mode(dest / "startup")) == (0o700, 0o700, 0o700)
    assert _mode(dest / "local") == 0o755


def test_extract_leaves_an_existing_folder_s_mode_but_refuses_one_others_may_write(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    dest = tmp_path / "site-a"
    dest.mkdir(mode=0o750)
    dest.chmod(0o750)
    _extract(provisioned_workspace, "site-a", dest)
    assert _mode(dest) == 0o750
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ProvisionError, match=f"{shared} has mode 0777.*run chmod go-w {shared}$"):
        _extract(provisioned_workspace, "site-a", shared)
    assert list(shared.iterdir()) == []


@pytest.mark.usefixtures("umask_000")
def test_provisioning_makes_its_workspace_private_whatever_the_umask(
    provision_project_mapping: dict[str, Any],
    provision_into: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """The folder above state/, which holds the CA's key: under umask 000 anyone could have
    replaced state/ with one holding a CA of their own."""
    provision_into(provision_project_mapping)
    assert _mode(tmp_path / "workspace") == 0o700


def test_provisioning_refuses_a_workspace_others_may_write(
    provision_project_mapping: dict[str, Any],
    provision_into: Callable[..., Any],
    tmp_path: Path,
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    workspace.chmod(0o777)
    with pytest.raises(ProvisionError, match=f"{workspace} has mode 0777.*the project CA's key"):
        provision_into(provision_project_mapping)
