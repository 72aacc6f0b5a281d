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
import tempfile
import zlib
from pathlib import Path

import pyzipper

from flcore.kitsig import KitSignatureError, verify_files
from flcore.startup import STARTUP_DIR
from provision.errors import ProvisionError
from provision.kits import STARTUP_DIR_MODE, file_mode


def _member_name(entry: str, zip_path: Path) -> str:
    prefix = f"{STARTUP_DIR}/"
    name = entry.removeprefix(prefix)
    if not entry.startswith(prefix) or not name or "/" in name or name in (".", ".."):
        raise ProvisionError(f"{zip_path}: not a startup kit (unexpected entry {entry!r})")
    return name


def read_kit(zip_path: Path, password: str) -> dict[str, bytes]:
    """Decrypt a kit into memory: startup file name -> content.

    Raises:
        ProvisionError: missing file, wrong password, damaged zip, or not a kit.
    """
    files: dict[str, bytes] = {}
    try:
        with pyzipper.AESZipFile(zip_path) as archive:
            archive.setpassword(password.encode())
            for info in archive.infolist():
                if not info.is_dir():
                    files[_member_name(info.filename, zip_path)] = archive.read(info)
    except FileNotFoundError:
        raise ProvisionError(f"{zip_path}: no such file") from None
    except RuntimeError as exc:
        if "password" in str(exc).lower():
            raise ProvisionError(f"{zip_path}: wrong password") from None
        raise ProvisionError(f"{zip_path}: cannot read it ({exc})") from None
    except (pyzipper.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        raise ProvisionError(f"{zip_path}: not a readable zip file ({exc})") from None
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
    target = dest / STARTUP_DIR
    if target.exists():
        raise ProvisionError(f"{target}: already exists; move it away or extract elsewhere")
    files = read_kit(zip_path, password)
    try:
        verify_files(files, str(zip_path))
    except KitSignatureError as exc:
        raise ProvisionError(str(exc)) from None
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".flprovision-", dir=dest))
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
        folder.rename(target)
    except OSError as exc:
        raise ProvisionError(f"{dest}: cannot write the kit ({exc.strerror})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
