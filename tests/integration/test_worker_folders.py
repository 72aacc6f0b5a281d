"""The training child's private folder (its socket, ``$TMPDIR/flworker-*``) of a site whose
daemon and child were both killed with SIGKILL outside systemd's PrivateTmp (``pkill -9 -f
flclientd`` matches both, the OOM killer may take both): the child removes it when only the
daemon dies, but nothing did then, and one was left for each such kill, for good."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flclientd.runner import ORPHAN_AGE_S, PRIVATE_DIR_PREFIX
from flcore.proctable import command_line
from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _age(folder: Path) -> None:
    """Make ``folder`` look older than a folder a live daemon may still be about to lock."""
    then = time.time() - 2 * ORPHAN_AGE_S
    os.utime(folder, (then, then))


def test_a_site_killed_with_sigkill_leaves_its_child_s_folder_only_until_a_child_starts(
    make_cluster: Callable[..., Cluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next child's start removes it, and leaves the folder of another site's live child
    (as old, in the same temp folder) alone."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))  # where the children's folders go
    cluster = make_cluster(
        settings={"heart_beat_timeout": 3, "heartbeat_interval": 0.5, "retry_window": 30}
    )
    cluster.server()
    victim = cluster.client("flclient1")
    other = cluster.client("flclient2")
    cluster.prepare_run(1, num_rounds=5000, min_num_clients=1, max_num_clients=2)
    cluster.ok("start server")
    cluster.ok("start client")
    victim.wait_log("training process ready", timeout=120)
    other.wait_log("training process ready", timeout=120)
    folders = sorted(private.glob(f"{PRIVATE_DIR_PREFIX}*"))
    assert len(folders) == 2

    (child,) = [p for p in cluster.worker_pids() if "flclient1" in command_line(p)]
    os.kill(child, signal.SIGSTOP)  # both at once: the child gets no moment to tidy up
    victim.kill()
    os.kill(child, signal.SIGKILL)
    wait_until(lambda: len(cluster.worker_pids()) == 1, 30, "the killed site's child to end")
    assert all(folder.exists() for folder in folders)
    for folder in folders:
        _age(folder)
    offset = len(victim.log())
    victim.start()
    victim.wait_log("rejoining", after=offset)
    victim.wait_log("training process ready", timeout=120, after=offset)
    now = sorted(private.glob(f"{PRIVATE_DIR_PREFIX}*"))
    assert len(now) == 2, now
    assert len(set(now) & set(folders)) == 1  # the live site's is kept, the dead one's went
    victim.wait_log(r"removed 1 training process folder\(s\) left in ", after=offset)
    cluster.ok("abort server")
    cluster.stop()
