"""Stopping between real daemons: an abort takes effect at once and says so, and a clean
shutdown of clients and server leaves no error in either daemon's log."""

from __future__ import annotations

import re

import pytest

from flcore import status as st
from flcore.proctable import command_line, process_table
from fldev.cluster import Cluster
from fldev.poll import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TROUBLE = re.compile(r" (ERROR|CRITICAL) |Traceback|(lost|closed) the control stream")


def site_workers(cluster: Cluster, instance: str) -> list[int]:
    """Training processes of one site."""
    work_dir = str(cluster.root / instance)
    return [
        p.pid
        for p in process_table()
        if "flclientd.worker" in command_line(p.pid) and work_dir in command_line(p.pid)
    ]


def client_statuses(cluster: Cluster) -> dict[str, str]:
    clients = cluster.ok("check_status client").data["clients"]
    return {name: row["status"] for name, row in clients.items()}


def test_abort_takes_effect_at_once_and_a_clean_shutdown_logs_no_error(cluster: Cluster) -> None:
    server = cluster.server()
    one, two = cluster.client("flclient1"), cluster.client("flclient2")
    # Long local epochs: an abort always lands in the middle of a round's training.
    cluster.configure("config_fed_client.json", local_epochs=20)
    cluster.prepare_run(1, num_rounds=30, min_num_clients=2, wait_after_min_clients=5)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(
        lambda: (
            client_statuses(cluster) == {"flclient1": st.STARTED, "flclient2": st.STARTED}
            and site_workers(cluster, "flclient1")
            and site_workers(cluster, "flclient2")
        ),
        120,
        "both sites training",
    )

    # abort client answers once the training child is gone, and says stopped.
    cluster.ok("abort client flclient1")
    assert site_workers(cluster, "flclient1") == []
    assert client_statuses(cluster)["flclient1"] == st.STOPPED

    # abort server: the very next look at the client says stopping (or stopped), never
    # started; once it says stopped, its training child is gone.
    cluster.ok("abort server")
    assert client_statuses(cluster)["flclient2"] in (st.STOPPING, st.STOPPED)
    wait_until(lambda: client_statuses(cluster)["flclient2"] == st.STOPPED, 10, "stopped")
    assert site_workers(cluster, "flclient2") == []

    cluster.ok("shutdown client", confirmed=True)
    assert one.wait(20) == 0 and two.wait(20) == 0
    cluster.ok("shutdown server", confirmed=True)
    assert server.wait(30) == 0
    for daemon in (server, one, two):
        trouble = [line for line in daemon.log().splitlines() if TROUBLE.search(line)]
        assert trouble == [], f"{daemon.name}:\n" + "\n".join(trouble)
    assert "flclientd stopped" in one.log() and "flserverd stopped" in server.log()


def test_an_abort_after_the_final_result_finds_the_run_finished(cluster: Cluster) -> None:
    """An abort while the final result's files were written (the result committed, the run's
    end not yet) recorded the run as aborted: start server then said it "continues run 1 at
    the final validation", and ended it at once as finished."""
    cluster.server(fault="hold:server.outputs@2")  # round 0's files, then the final result's
    cluster.client("flclient1")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=1, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("start server")
    cluster.ok("start client")
    cluster.held("server.outputs")
    aborted = cluster.ok("abort server")
    assert aborted.text == (
        "Run 1 had already finished (its final validation is recorded); nothing was aborted."
    )
    cluster.release("server.outputs")
    run = cluster.ok("check_status server").data["run"]
    assert (run["server_status"], run["reason"]) == (st.STOPPED, st.FINISHED)
    (again,) = cluster.admin("start server")
    assert not again.ok and again.text.startswith("run 1 finished all its rounds: ")
    assert cluster.metrics()[-1]["final"] is True
