"""Unpacking a kit without 7-Zip: ``flprovision extract``.

Everything is read, decrypted and checked against the kit's signature in
memory before a single file is written, and the files are then written into
a private staging folder that is renamed into place, so a wrong password, a
damaged zip or a full disk never leaves a half-extracted ``startup/`` behind.
Modes come from :func:`provision.kits.file_mode`, not from the zip, so an
archive cannot smuggle in a set-uid bit.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path

import pyzipper

from flcore.configfile import MAX_CONFIG_BYTES
from flcore.kitsig import MAX_KIT_FILES, KitSignatureError, verify_files
from flcore.schema import ConfigError
from flcore.startup import LOCAL_DIR, STARTUP_DIR
from flcore.strictmodes import check_folders_to, make_private_folder
from provision.errors import ProvisionError
from provision.kits import STARTUP_DIR_MODE, file_mode

_AES_256 = 3  # WinZip AES's strength code for a 256-bit key


def _member_name(entry: str, zip_path: Path) -> str:
    prefix = f"{STARTUP_DIR}/"
    name = entry.removeprefix(prefix)
    if not entry.startswith(prefix) or not name or "/" in name or name in (".", ".."):
        raise ProvisionError(f"{zip_path}: not a startup kit (unexpected entry {entry!r})")
    return name


def _check_sizes(infos: list[zipfile.ZipInfo], zip_path: Path) -> None:
    """Refuse a zip with more entries, or larger ones, than a kit has: before inflating any."""
    if len(infos) > MAX_KIT_FILES:
        raise ProvisionError(
            f"{zip_path}: {len(infos)} entries, more than a kit has ({MAX_KIT_FILES}); "
            "not a startup kit"
        )
    for info in infos:
        if info.file_size > MAX_CONFIG_BYTES:
            raise ProvisionError(
                f"{zip_path}: {info.filename} would unpack to {info.file_size:,} bytes, more "
                "than any kit file; not a startup kit"
            )


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, zip_path: Path) -> bytes:
    """A member's bytes, inflating at most one byte more than a kit file may hold.

    The sizes in a zip's headers are the archive's word only: a member that
    claims 10 bytes may inflate to gigabytes, and reading it whole would
    take that memory before the CRC check notices.
    """
    with archive.open(info) as member:
        data = member.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ProvisionError(
            f"{zip_path}: {info.filename} unpacks to more than any kit file "
            f"({MAX_CONFIG_BYTES:,} bytes), though its header says {info.file_size:,}; "
            "not a startup kit"
        )
    return data


def _check_encrypted(infos: list[pyzipper.ZipInfo], zip_path: Path) -> None:
    """Every file of a kit with a password is AES-256 encrypted under it.

    The seal is checked against the CA inside the same kit, so what proves that a kit comes
    from lead IT is that its password opens it: AES's authentication is keyed by the password.
    A file stored in the clear opens under any password, and would let whoever swapped the zip
    on its way ship a CA, key and server address of their own.
    """
    for info in infos:
        if getattr(info, "wz_aes_strength", None) != _AES_256:
            raise ProvisionError(
                f"{zip_path}: {info.filename!r} is not encrypted with the kit's password; "
                "flprovision encrypts every file of a kit, so this zip was not made by it or "
                "was changed on its way: do not use it, and ask lead IT for the kit again"
            )


def read_kit(zip_path: Path, password: str | None) -> dict[str, bytes]:
    """Decrypt a kit into memory: startup file name -> content.

    ``password`` is None for a kit without a key, which is not encrypted.
    Entries are counted and their sizes checked before any is inflated, so
    a zip bomb is refused before it takes memory.

    Raises:
        ProvisionError: missing file, wrong password, damaged zip, or not a kit.
    """
    if zip_path.exists() and not zip_path.is_file():  # /dev/zero was read without end
        raise ProvisionError(
            f"{zip_path}: not a regular file; a kit is the .zip file flprovision wrote"
        )
    files: dict[str, bytes] = {}
    try:
        with pyzipper.AESZipFile(zip_path) as archive:
            if password is not None:
                archive.setpassword(password.encode())
            infos = [info for info in archive.infolist() if not info.is_dir()]
            _check_sizes(infos, zip_path)
            if password is not None:
                _check_encrypted(infos, zip_path)
            for info in infos:
                files[_member_name(info.filename, zip_path)] = _read_member(archive, info, zip_path)
    except FileNotFoundError:
        raise ProvisionError(f"{zip_path}: no such file") from None
    except RuntimeError as exc:
        if "password" in str(exc).lower():
            if password is None:
                raise ProvisionError(
                    f"{zip_path}: encrypted, so it holds a key of its own: unpack it with "
                    "'flprovision extract' and its password"
                ) from None
            raise ProvisionError(f"{zip_path}: wrong password") from None
        raise ProvisionError(f"{zip_path}: cannot read it ({exc})") from None
    except (
        pyzipper.BadZipFile,
        zlib.error,
        EOFError,
        NotImplementedError,
        OSError,
        struct.error,  # an AES entry cut short: its salt is not all there
    ) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ProvisionError(
            f"{zip_path}: not a readable zip file ({reason or 'it ends too soon or is damaged'}); "
            "copy the kit again from where it was issued"
        ) from None
    if not files:
        raise ProvisionError(f"{zip_path}: not a startup kit (no {STARTUP_DIR}/ folder)")
    return files


def extract_kit(zip_path: Path, password: str, dest: Path) -> Path:
    """Extract the kit at ``zip_path`` into ``dest`` and return its ``startup/`` folder.

    ``dest`` becomes the participant's workspace root.

    Raises:
        ProvisionError: the kit cannot be read or fails its signature check, or
            ``dest/startup`` already exists.
    """
    refuse_existing(dest)
    files = read_kit(zip_path, password)
    try:
        verify_files(files, str(zip_path))
    except KitSignatureError as exc:
        raise ProvisionError(str(exc)) from None
    return install_startup(files, dest)


def refuse_existing(dest: Path) -> None:
    """Refuse to put a kit where one is already: its startup/ is never overwritten."""
    target = dest / STARTUP_DIR
    if target.exists():
        raise ProvisionError(f"{target}: already exists; move it away or extract elsewhere")


def install_startup(files: dict[str, bytes], dest: Path, replace: bool = False) -> Path:
    """Write checked kit files as ``dest/startup/`` with their modes, all or nothing.

    With ``replace`` an existing ``startup/`` is swapped for the new one (and
    deleted), else it is refused.

    Raises:
        ProvisionError: ``dest/startup`` exists, or the files cannot be written.
    """
    if not replace:
        refuse_existing(dest)
    target = dest / STARTUP_DIR
    try:
        make_private_folder(dest)
        check_folders_to(dest, "the kit and local/")
        staging = Path(tempfile.mkdtemp(prefix=".flprovision-", dir=dest))
    except ConfigError as exc:
        raise ProvisionError(str(exc)) from None
    except OSError as exc:
        raise ProvisionError(f"{dest}: cannot create it ({exc.strerror})") from None
    try:
        folder = staging / STARTUP_DIR
        folder.mkdir(mode=STARTUP_DIR_MODE)
        for name, data in files.items():
            mode = file_mode(name)
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            with os.fdopen(fd, "wb") as out:
                os.fchmod(out.fileno(), mode)  # the umask may have taken bits away
                out.write(data)
        folder.chmod(STARTUP_DIR_MODE)
        if replace and target.exists():
            replaced = staging / "replaced"
            target.rename(replaced)
            try:
                folder.rename(target)
            except OSError:
                replaced.rename(target)  # the kit in use stays in use
                raise
        else:
            folder.rename(target)
        # Site IT's own settings and approvals: there from the start, so that the service
        # unit can make it read-only for everything the daemon runs (ReadOnlyPaths).
        (dest / LOCAL_DIR).mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ProvisionError(f"{dest}: cannot write the kit ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
