"""The installed flstack version, reported by daemons and shown in the console."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def flstack_version() -> str:
    """Version of the installed flstack distribution ("dev" when run from a bare checkout)."""
    try:
        return version("flstack")
    except PackageNotFoundError:
        return "dev"
