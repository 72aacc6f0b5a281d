"""The file that keeps a run's password lines: ``flprovision --passwords-file`` and the wizard.

A kit's password exists nowhere but in the run's result, so a copy on disk
must be private from the start: the file is created with mode 0600
(``os.open``, never loosened and tightened afterwards), and an existing file
is never overwritten, since it may hold the passwords of an earlier run.
The wizard may add a later run's lines to such a file (:meth:`PasswordsFile.
append_to`), but only to a regular file that only its owner can read.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from provision.engine import WrittenKit
from provision.errors import ProvisionError

PRIVATE_MODE = 0o600


class PasswordsFile:
    """A new, owner-only file for password lines, created before anything is written to it.

    Creating it first lets ``flprovision`` refuse a taken file name before
    it issues kits whose passwords would then have nowhere to go.
    """

    def __init__(self, path: Path, fd: int | None = None) -> None:
        """Create ``path`` (mode 0600), or write to ``fd`` opened on it by :meth:`append_to`.

        Raises:
            ProvisionError: it exists already or cannot be created.
        """
        self.path = path
        if fd is not None:
            self._fd = fd
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
        except FileExistsError:
            raise ProvisionError(
                f"{path}: already exists; remove it or choose another file"
            ) from None
        except OSError as exc:
            raise ProvisionError(f"{path}: cannot create it ({exc.strerror})") from None

    @classmethod
    def append_to(cls, path: Path) -> PasswordsFile:
        """Open an existing passwords file to add lines at its end.

        Raises:
            ProvisionError: it does not exist, is a link or not a regular file,
                or others than its owner may read it.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ProvisionError(f"{path}: no such file to add to") from None
        except OSError as exc:
            raise ProvisionError(f"{path}: cannot open it ({exc.strerror})") from None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or stat.S_IMODE(info.st_mode) & 0o077:
            os.close(fd)
            raise ProvisionError(
                f"{path}: passwords go only into a plain file that only you can read "
                f"(this one has mode {stat.S_IMODE(info.st_mode):04o}); choose another file"
            )
        return cls(path, fd)

    def write(self, kits: Iterable[WrittenKit]) -> None:
        """Write one password line per kit and close the file.

        Raises:
            ProvisionError: the file cannot be written (a full disk, say).
        """
        try:
            with os.fdopen(self._fd, "w", encoding="utf-8") as out:
                out.writelines(f"{kit.password_line()}\n" for kit in kits if kit.password)
        except OSError as exc:
            raise ProvisionError(f"{self.path}: cannot write it ({exc.strerror})") from None

    def discard(self) -> None:
        """Close and remove the file: the run it was made for wrote nothing."""
        os.close(self._fd)
        self.path.unlink()
