"""Fixtures that start real daemons on 127.0.0.1 (see harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fldev.cluster import Cluster

LOG_TAIL_LINES = 80
"""Lines of each daemon's log a failed test's report ends with."""

_CLUSTERS = pytest.StashKey[list[Cluster]]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """A failed test's report ends with the last lines of every daemon it started: a
    failure seen once in CI is then explained by what the daemons said, not rerun blind."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for cluster in item.stash.get(_CLUSTERS, []):
        for daemon in cluster.daemons:
            tail = daemon.log().splitlines()[-LOG_TAIL_LINES:]
            heading = f"the end of {daemon.name}'s log ({daemon.log_path})"
            report.sections.append((heading, "\n".join(tail)))


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., Cluster]]:
    """Build clusters (usually one) whose processes are all killed at teardown."""
    made: list[Cluster] = []
    request.node.stash[_CLUSTERS] = made

    def make(**kwargs: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"c{len(made)}", **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(make_cluster: Callable[..., Cluster]) -> Cluster:
    """A provisioned project with two clients and fast heartbeats (nothing started yet)."""
    return make_cluster()
