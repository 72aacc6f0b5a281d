"""Network faults between one client and the server: cut, stalled and slow links.

flclient1 reaches the server through a :class:`fldev.netproxy.FaultyLink` (an
HTTP CONNECT proxy named by ``grpc_proxy``), flclient2 directly. Each test
breaks the link in one way and checks what the sites and the server do, and
that every update is folded exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from flcore.tls import STALL_DETECTED_S
from fldev.cluster import ADMIN, Cluster, Daemon
from fldev.mlpapp import APP_NAME, ModelSize, write_app
from fldev.netproxy import FaultyLink
from fldev.poll import wait_until
from tests.integration.serverstate import counted
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIENTS = ("flclient1", "flclient2")
# Long enough that the server keeps a client whose link is down; fast heartbeats.
SETTINGS = {"heart_beat_timeout": 60, "heartbeat_interval": 0.5, "retry_window": 60}
# Scheduling a keepalive ping and closing the connection take a moment beyond the bound.
DETECTION_SLACK_S = 5.0


@pytest.fixture
def link() -> Iterator[FaultyLink]:
    with FaultyLink() as faulty:
        yield faulty


def assert_every_update_once(cluster: Cluster, rounds: int) -> None:
    """Each round was aggregated from both sites, each folded exactly once."""
    rows = [r for r in cluster.metrics() if not r.get("final")]
    assert [r["round"] for r in rows] == list(range(rounds))
    assert all(r["clients"] == list(CLIENTS) for r in rows)
    assert counted(cluster) == [(r, c) for r in range(rounds) for c in CLIENTS]


def rounds_done(cluster: Cluster) -> int:
    return len([r for r in cluster.metrics() if not r.get("final")])


def start(cluster: Cluster, link: FaultyLink, **server_config: Any) -> tuple[Daemon, Daemon]:
    """Server, flclient1 through the link, flclient2 direct; the digits run started.
    Returns the server and flclient1."""
    server = cluster.server()
    proxied = cluster.client("flclient1", proxy=link.url)
    assert link.connections >= 1  # the client really goes through the link
    cluster.client("flclient2")
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, **server_config)
    cluster.ok("start server")
    cluster.ok("start client")
    return server, proxied


def test_the_run_carries_on_through_a_short_cut_and_a_stall(
    make_cluster: Callable[..., Cluster], link: FaultyLink
) -> None:
    """A cut in the middle of an upload, then a black hole noticed by keepalive on both sides
    within the documented bound: the client carries on in the same process and run, and
    no update is lost or counted twice."""
    cluster = make_cluster(settings=SETTINGS)
    server, client = start(
        cluster, link, num_rounds=6, min_num_clients=2, wait_after_min_clients=60
    )
    pid = client.pid
    wait_until(lambda: rounds_done(cluster) >= 1, 120, "round 0")
    # Slow enough that an update (150 KB) takes ~0.5 s; cut 60 KB into the next one.
    link.limit(300_000)
    mark = len(client.log())
    assert link.cut_after_upstream(60_000).wait(60)
    client.wait_log(r"upload of round \d+ interrupted \(UNAVAILABLE\); retrying", after=mark)
    client.wait_log("Could not connect to server", after=mark)  # the cut outlasts a reconnect
    link.heal()
    link.limit(None)
    client.wait_log("Resumed registration", after=mark)

    done = rounds_done(cluster)
    wait_until(lambda: rounds_done(cluster) > done, 120, "a round after the cut")
    client_mark, server_mark = len(client.log()), len(server.log())
    link.stall()
    stalled_at = time.monotonic()
    bound = STALL_DETECTED_S + DETECTION_SLACK_S
    client.wait_log("lost the control stream", timeout=bound + 10, after=client_mark)
    client_noticed = time.monotonic() - stalled_at
    server.wait_log("control stream of flclient1 closed", timeout=bound + 10, after=server_mark)
    server_noticed = time.monotonic() - stalled_at
    assert client_noticed <= bound and server_noticed <= bound, (client_noticed, server_noticed)
    link.heal()
    client.wait_log("Resumed registration", after=client_mark, timeout=60)

    assert finished(cluster)["reason"] == "finished"
    assert client.pid == pid and client.alive()
    assert_every_update_once(cluster, 6)


def test_a_cut_longer_than_the_retry_window_exits_3_and_the_restarted_client_rejoins(
    make_cluster: Callable[..., Cluster], link: FaultyLink
) -> None:
    cluster = make_cluster(settings={**SETTINGS, "retry_window": 3})
    _, client = start(cluster, link, num_rounds=2000, min_num_clients=1, wait_after_min_clients=1)
    wait_until(lambda: rounds_done(cluster) >= 2, 120, "two rounds")
    link.cut()
    assert client.wait(30) == 3
    assert "retry window" in client.log()
    link.heal()
    mark = len(client.log())
    restarted = cluster.client("flclient1", proxy=link.url)
    restarted.wait_log("rejoining", after=mark)
    since = rounds_done(cluster)
    wait_until(
        lambda: any("flclient1" in r["clients"] for r in cluster.metrics()[since:]),
        90,
        "the restarted client to contribute again",
    )
    cluster.ok("abort server")
    rounds: dict[int, list[str]] = {}
    for round_number, instance in counted(cluster):
        rounds.setdefault(round_number, []).append(instance)
    assert all(len(names) == len(set(names)) for names in rounds.values())


def test_a_round_completes_over_a_20_mbit_link(
    make_cluster: Callable[..., Cluster], link: FaultyLink
) -> None:
    cluster = make_cluster(settings=SETTINGS)
    model = ModelSize("link", in_features=1000, hidden=2000, out_features=10, layers=2)
    rate = 20e6 / 8
    write_app(cluster.root / ADMIN / "transfer", model, clients=2, num_rounds=1)
    cluster.server()
    cluster.client("flclient1", proxy=link.url)
    cluster.client("flclient2")
    link.limit(rate)
    cluster.ok("set_run_number 1")
    cluster.ok(f"upload_folder {APP_NAME}")
    cluster.ok(f"deploy {APP_NAME} server")
    cluster.ok(f"deploy {APP_NAME} client")
    cluster.ok("start server")
    cluster.ok("start client")
    assert finished(cluster, timeout=240)["reason"] == "finished"
    [row, final] = cluster.metrics()
    assert row["clients"] == list(CLIENTS) and final["clients"] == list(CLIENTS)
    model_bytes = model.parameters * 4
    # The round's model went down and its update up through the link, at the limited rate.
    assert link.downstream_bytes > model_bytes and link.upstream_bytes > model_bytes
    assert row["duration_s"] > 2 * model_bytes / rate * 0.8
    assert counted(cluster) == [(0, c) for c in CLIENTS]
