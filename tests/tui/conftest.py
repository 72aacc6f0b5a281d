"""Shared fixtures of the console tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fldev.cluster import Cluster


@pytest.fixture(autouse=True)
def utc() -> Iterator[None]:
    """Log times are drawn in local time: pin it so screens look the same everywhere."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def two_sites(root: Path, heart_beat_timeout: float) -> Iterator[Cluster]:
    """A real server and two sites beating every second, killed when the caller is done."""
    cluster = Cluster(
        root,
        settings={
            "heart_beat_timeout": heart_beat_timeout,
            "heartbeat_interval": 1,
            "retry_window": 60,
        },
    )
    try:
        cluster.server()
        cluster.client("flclient1")
        cluster.client("flclient2")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A real server with two clients, shared by the tests that need one (killed at the end)."""
    yield from two_sites(tmp_path_factory.mktemp("live"), 30)
