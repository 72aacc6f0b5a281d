"""flcore.diskfault: which errors mean the disk, and how they read."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from flcore.diskfault import disk_fault


def sqlite_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    ("error", "where", "reads"),
    [
        (OSError(errno.ENOSPC, "No space left on device", "/ws/a"), None, "disk full: /ws/a: No"),
        (OSError(errno.ENOSPC, "No space left on device"), Path("/ws"), "disk full: /ws: No space"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "/ws/b"), None, "disk full: /ws/b: Disk"),
        (OSError(errno.EIO, "Input/output error", "/ws/c"), None, "disk I/O error: /ws/c: Input"),
        (OSError(errno.EROFS, "Read-only file system"), None, "disk is read-only: Read-only"),
        (
            sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full"),
            None,
            "disk full: state database: database or disk is full",
        ),
        (
            sqlite_error(sqlite3.SQLITE_IOERR_WRITE, "disk I/O error"),
            None,
            "disk I/O error: state database: disk I/O error",
        ),
        (
            sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"),
            None,
            "state database locked by another program (an sqlite3 shell or a backup tool; "
            "close it): database is locked",
        ),
    ],
)
def test_disk_errors_are_told_in_words(
    error: BaseException, where: Path | None, reads: str
) -> None:
    assert (disk_fault(error, where) or "").startswith(reads)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EACCES, "Permission denied", "/ws/d"),
        FileNotFoundError(errno.ENOENT, "No such file or directory", "/ws/e"),
        sqlite_error(sqlite3.SQLITE_CONSTRAINT, "UNIQUE constraint failed"),
        sqlite3.OperationalError("no such table: x"),
        RuntimeError("a bug"),
    ],
)
def test_other_errors_are_not_the_disk(error: BaseException) -> None:
    assert disk_fault(error) is None
