"""The file that keeps a run's password lines: ``flprovision --passwords-file`` and the wizard.

A kit's password exists nowhere but in the run's result, so a copy on disk
must be private from the start: the file is created with mode 0600
(``os.open``, never loosened and tightened afterwards), and an existing file
is never overwritten, since it may hold the passwords of an earlier run.
"""

from __future__ import annotations

import os
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

    def __init__(self, path: Path) -> None:
        """Create ``path`` (mode 0600).

        Raises:
            ProvisionError: it exists already or cannot be created.
        """
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
        except FileExistsError:
            raise ProvisionError(
                f"{path}: already exists; remove it or choose another file"
            ) from None
        except OSError as exc:
            raise ProvisionError(f"{path}: cannot create it ({exc.strerror})") from None

    def write(self, kits: Iterable[WrittenKit]) -> None:
        """Write one password line per kit and close the file.

        Raises:
            ProvisionError: the file cannot be written (a full disk, say).
        """
        try:
            with os.fdopen(self._fd, "w", encoding="utf-8") as out:
                out.writelines(f"{kit.password_line()}\n" for kit in kits)
        except OSError as exc:
            raise ProvisionError(f"{self.path}: cannot write it ({exc.strerror})") from None

    def discard(self) -> None:
        """Close and remove the file: the run it was made for wrote nothing."""
        os.close(self._fd)
        self.path.unlink()
