"""Crash-safe file replacement.

A checkpoint must be either the old file or the complete new one after a
kill -9 at any instant: write a temp file in the same folder, fsync it,
rename it over the target, then fsync the folder so the rename itself is
durable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(folder: Path) -> None:
    """Make a rename or create inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make a file's content durable (before a rename makes it count)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Make every file and folder under ``folder`` durable, deepest first, before a rename
    puts it in place: else a power loss soon after can leave the new folder with empty
    files where the old one was whole (a kill -9 cannot; the kernel has the pages)."""
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_symlink():
            continue
        if path.is_dir():
            fsync_dir(path)
        elif path.is_file():
            fsync_file(path)
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_writer(target: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces ``target`` only if the block succeeds.

    The file is its owner's alone unless ``mode`` says otherwise: the mode is set
    explicitly (the umask does not apply), so a wider default would undo the daemons'
    umask for every model and record they write.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``target`` with ``data`` atomically."""
    with atomic_writer(target, mode) as handle:
        handle.write(data)


def atomic_produce(target: Path, produce: Callable[[Path], None], durable: bool = True) -> None:
    """Let ``produce`` write a temp path, then move it over ``target`` (durably by default).

    For writers that insist on a path (e.g. a library's save_file) rather
    than an open file. ``durable=False`` skips the fsyncs for files that are
    cheap to make again (a site's update is simply trained and sent again):
    the rename alone still means a reader never sees half a file.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        produce(tmp)
        if durable:
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        if durable:
            fsync_dir(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
