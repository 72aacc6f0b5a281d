"""Files the console writes on the admin's machine, for the admin only: screenshots (the
wizard's Kits step shows every kit's password; Textual's own land in ``~/Downloads`` with
the default mode) and saved logs (what sites wrote, under a name the server gave)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from textual.app import App


def deliver_privately(
    app: App[Any], folder: Path, filename: str | None, time_format: str | None
) -> str | None:
    """Save a screenshot of ``app`` in ``folder`` (0700; the file 0600) and say where, or why
    not; returns the file's path."""
    mask = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        saved = app.save_screenshot(filename, str(folder), time_format)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        app.notify(f"cannot save to {folder}: {reason}", severity="error", markup=False)
        return None
    finally:
        os.umask(mask)
    app.notify(f"saved to {saved}", title="screenshot", markup=False)
    return saved


_UNSAFE = re.compile(r"[^A-Za-z0-9_.@-]")


def file_part(name: str) -> str:
    """``name`` (a site's, as the server gave it) as part of a file name: no folder, no
    leading dot, at most 64 characters."""
    return _UNSAFE.sub("_", name)[:64].lstrip(".") or "site"


def write_private(path: Path, text: str) -> None:
    """Write a new file readable by its owner only, in a folder only its owner may enter;
    never through a link, never over a file that is there (OSError says why)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
