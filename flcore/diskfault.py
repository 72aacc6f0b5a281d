"""Telling a full (or failing) disk apart from other errors, and saying so in words.

A daemon whose disk fills up must pause and say why, not fail the run or
show an exception's class name: both daemons ask :func:`disk_fault` whether
an exception from a file or SQLite write means the disk, and show its
answer ("disk full: <path>: No space left on device") to admins. A state
database that another program holds locked (an ``sqlite3`` shell, a backup
tool writing to it) is told the same way: the write is tried again once
the lock is gone, as once there is room.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DISK_ERRNOS = {errno.EIO: "disk I/O error", errno.EROFS: "disk is read-only"}
SQLITE_FULL_CODES = frozenset({sqlite3.SQLITE_FULL})
LOCKED = "state database locked by another program (an sqlite3 shell or a backup tool; close it)"
SQLITE_DISK_CODES = {
    sqlite3.SQLITE_IOERR: "disk I/O error: state database",
    sqlite3.SQLITE_READONLY: "disk is read-only: state database",
    sqlite3.SQLITE_BUSY: LOCKED,
    sqlite3.SQLITE_LOCKED: LOCKED,
}


def disk_fault(exc: BaseException, where: Path | None = None) -> str | None:
    """``"disk full: <what>"`` (or another disk fault) when ``exc`` means the disk; else None.

    ``where`` names the folder written to when the error does not name a file (a write to
    an open file does not).
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        detail = exc.strerror or str(exc)
        place = exc.filename or where
        if place:
            detail = f"{place}: {detail}"
        if exc.errno in DISK_FULL_ERRNOS:
            return f"disk full: {detail}"
        if exc.errno in DISK_ERRNOS:
            return f"{DISK_ERRNOS[exc.errno]}: {detail}"
        return None
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return None
        if code in SQLITE_FULL_CODES:
            return f"disk full: state database: {exc}"
        primary = code & 0xFF
        if primary in SQLITE_DISK_CODES:
            return f"{SQLITE_DISK_CODES[primary]}: {exc}"
    return None


def free_bytes(folder: Path) -> int:
    """Bytes free for this process in the file system holding ``folder``."""
    return shutil.disk_usage(folder).free
