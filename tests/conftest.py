"""Fixtures every kind of test uses."""

from __future__ import annotations

import pytest

from fldev.smalldisk import why_not_mountable


@pytest.fixture
def mountable() -> None:
    """Skip, saying why, where a small tmpfs cannot be mounted (it needs root; CI is root)."""
    reason = why_not_mountable()
    if reason:
        pytest.skip(reason)
