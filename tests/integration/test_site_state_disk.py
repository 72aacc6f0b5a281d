"""A run started (``start client``) at a site whose disk is full: the site pauses and trains
once there is room, as on any full disk, and it notes the run in its state file before it
trains. It trained without ever writing it: restarted, the site did not rejoin the run."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from fldev.cluster import Cluster
from fldev.poll import wait_until
from fldev.smalldisk import fill, free_up, small_disk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.mark.usefixtures("mountable")
def test_a_run_started_on_a_full_disk_is_noted_before_it_trains_and_rejoined_after_a_restart(
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(clients=("flclient1",))
    workspace = cluster.root / "flclient1"
    state = workspace / "state" / "flclientd_flclient1.json"
    with small_disk(workspace, 16):
        cluster.server()
        site = cluster.client("flclient1")
        cluster.prepare_run(1, num_rounds=5000, min_num_clients=1, max_num_clients=1)
        cluster.ok("start server")
        fill(workspace)
        cluster.ok("start client")
        site.wait_log(r"training paused: client disk full: ")
        row = cluster.ok("check_status client").data["clients"]["flclient1"]
        assert (row["status"], row["error"][:17]) == ("training paused", "client disk full:")
        assert json.loads(state.read_text())["training_run"] == 0

        free_up(workspace)
        site.wait_log("the disk has room again: training goes on")
        site.wait_log(r"round \d+ update accepted", timeout=120)
        assert json.loads(state.read_text())["training_run"] == 1

        offset = len(site.log())
        site.kill()
        wait_until(lambda: not cluster.worker_pids(), 30, "the training process to end")
        site.start()
        site.wait_log("rejoining", after=offset)
        site.wait_log(r"round \d+ update accepted", timeout=120, after=offset)
        cluster.ok("abort server")
        cluster.stop()
