"""Paths typed into the console's fields (kit folder, workspace, passwords file)."""

from __future__ import annotations

from pathlib import Path


def typed_path(text: str) -> Path:
    """``text`` as a path, ``~`` expanded when it names a home folder.

    ``Path.expanduser`` raises for ``~name`` of an unknown user, which a
    person half-way through typing ``~/fl`` or a mistyped name easily is;
    such a path is kept as typed, and the caller reports that nothing is there.
    """
    path = Path(text.strip() or ".")
    try:
        return path.expanduser()
    except RuntimeError:
        return path
