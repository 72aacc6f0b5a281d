"""A daemon's workspace on a small tmpfs that a test fills up and frees again.

Mounting needs root (CI runs as root); :func:`why_not_mountable` says why it
cannot be done here, so that a test can skip with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

FILLER = ".fill"
_BLOCK = 4096


def why_not_mountable() -> str:
    """Why a tmpfs cannot be mounted here ('' when it can)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root (the CI runs the suite as root)"
    with tempfile.TemporaryDirectory() as probe:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", probe],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"
        subprocess.run(["umount", probe], check=False)
    return ""


@contextlib.contextmanager
def small_disk(folder: Path, size_mb: int) -> Iterator[Path]:
    """Put ``folder`` (with what it holds) on a tmpfs of ``size_mb`` MiB until the end."""
    aside = folder.with_name(f"{folder.name}.before-tmpfs")
    folder.rename(aside)
    folder.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(folder)],
        check=True,
    )
    try:
        shutil.copytree(aside, folder, symlinks=True, dirs_exist_ok=True)
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(folder: Path) -> int:
    """Take every free byte of ``folder``'s file system; returns how many were taken.

    A daemon may be writing there at the same time, so the free space read a moment ago can be
    gone by the time it is claimed: claim what is left, in smaller steps, until nothing is.
    """
    fd = os.open(folder / FILLER, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        step = shutil.disk_usage(folder).free
        while step >= _BLOCK:
            try:
                os.posix_fallocate(fd, os.fstat(fd).st_size, step)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                step //= 2
            else:
                step = shutil.disk_usage(folder).free
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def free_some(folder: Path, nbytes: int) -> None:
    """Give back ``nbytes`` of what :func:`fill` took, in one step: a daemon checking for
    room never sees more than that free."""
    filler = folder / FILLER
    os.truncate(filler, max(0, filler.stat().st_size - nbytes))


def free_up(folder: Path) -> None:
    """Give back what :func:`fill` took."""
    (folder / FILLER).unlink(missing_ok=True)
