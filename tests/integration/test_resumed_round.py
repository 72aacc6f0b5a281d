"""A server restarted in the middle of a round waits for the same sites as before."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import pytest

from fldev.cluster import SERVER_READY, Cluster
from fldev.poll import wait_until
from tests.integration.test_resilience import rounds_done
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SITES = ("flclient1", "flclient2", "flclient3")
PATIENT = {"heart_beat_timeout": 90, "heartbeat_interval": 1, "retry_window": 120}
"""flclient3 is frozen while the server restarts and the others send their updates: on a
busy machine that may be longer than the harness's 30 s, and it must be neither dropped
nor give up on the server."""


def test_a_resumed_round_waits_for_the_sites_not_back_yet(
    make_cluster: Callable[..., Cluster],
) -> None:
    """flclient3 trained the run when the server restarted and was slower to come back
    (frozen here): the resumed round closed on the first two updates, as soon as
    min_num_clients was reached, where a round never interrupted waits for every site
    training (wait_after_min_clients)."""
    cluster = make_cluster(clients=SITES, settings=PATIENT)
    server = cluster.server()
    late = [cluster.client(name) for name in SITES][-1]
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=4, min_num_clients=2, wait_after_min_clients=120)
    cluster.ok("start server")
    cluster.ok("start client")
    wait_until(lambda: rounds_done(cluster) >= 1, 120, "a first round")
    late.signal(signal.SIGSTOP)
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0
    offset = server.restart(SERVER_READY)
    resumed = int(server.wait_log(r"resumed run 1 at round (\d+) of 4", after=offset)[1])
    assert resumed < 4
    accepted = re.compile(rf"run 1 round {resumed}: update from (flclient[12]) accepted")

    def both_back() -> bool:
        return len(set(accepted.findall(server.log()[offset:]))) == 2

    wait_until(both_back, 120, "flclient1 and flclient2 to send the resumed round's update")
    state = cluster.run_state()
    assert (state["current_round"], state["updates_received"]) == (resumed, 2)
    assert state["awaited"] == ["flclient3"]
    late.signal(signal.SIGCONT)
    assert finished(cluster)["reason"] == "finished"
    rows = {r["round"]: r["clients"] for r in cluster.metrics() if not r.get("final")}
    assert rows[resumed] == list(SITES)
