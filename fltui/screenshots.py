"""Screenshots that only their owner may read: the wizard's Kits step shows every kit's
password, and Textual's own screenshots land in ``~/Downloads`` with the default mode."""

from __future__ import annotations

import os
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
