"""What the server tells admins about runs, between real daemons over mTLS: why a run stopped
and why it cannot progress, every run and its rounds per site, the apps and admins, rows
that describe the run of now (also after a restart), and the feed's last event."""

from __future__ import annotations

import asyncio
import re
import signal

import pytest

from fladmin import AdminClient, load_kit
from fladmin.link import AdminLink
from flcore import status as st
from flcore.appreview import review_app
from flcore.feed import FeedEvent, ServerStopping
from fldev.cluster import ADMIN, SERVER_READY, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def rows(cluster: Cluster) -> dict[str, dict[str, object]]:
    """The server's client rows (what the console's table shows), by instance."""
    return {row["instance"]: row for row in cluster.status()["clients"]}


def test_why_a_run_stopped_and_what_the_server_lists(cluster: Cluster) -> None:
    server = cluster.server()
    cluster.client("flclient1")
    lacking = cluster.client("flclient2", data=False)
    assert re.search(r"WARNING flclientd: no data root: neither DATA_ROOT nor", lacking.log())
    cluster.configure("config_fed_client.json", local_epochs=1)
    cluster.prepare_run(1, num_rounds=30, min_num_clients=2, wait_after_min_clients=5)
    cluster.ok("start server")
    cluster.ok("start client")

    # A run that cannot progress says so, naming the failed site and its error.
    why = wait_until(lambda: cluster.run_state()["blocked"], 120, "the run to be blocked")
    assert why.startswith("min_num_clients 2 but only 1 site(s) can train: flclient2 failed (")
    assert "DATA_ROOT" in why
    text = cluster.ok("check_status server").text
    assert f"Cannot progress: {why}" in text
    assert "Failed sites: flclient2 (" in text

    # How it ended: who aborted it, and the failed sites with their error.
    cluster.ok("abort server")
    state = cluster.run_state()
    assert state["reason"] == f"aborted by {ADMIN}" and state["blocked"] == ""
    status_line = next(
        line
        for line in cluster.ok("check_status server").text.splitlines()
        if line.startswith("FL server status:")
    )
    assert status_line.startswith(
        f"FL server status: training stopped (aborted by {ADMIN} · failed sites: flclient2 ("
    )

    # A new run: no row keeps the last run's status or samples.
    ended = {"flclient1": st.STOPPED, "flclient2": st.FAILED}
    wait_until(
        lambda: {name: row["status"] for name, row in rows(cluster).items()} == ended,
        30,
        "both sites to be done with run 1",
    )
    cluster.ok("set_run_number 2")
    for row in rows(cluster).values():
        assert (row["status"], row["samples"], row["error"]) == (st.NOT_STARTED, 0, "")

    # A run whose best model is the final one says so, not a round it does not have.
    cluster.prepare_run(2, num_rounds=1, min_num_clients=1, wait_after_min_clients=0)
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    assert finished(cluster, 2)["reason"] == "finished"
    text = cluster.ok("check_status server").text
    assert "FL server status: training stopped (finished)" in text
    assert re.search(r"Best global model: val_accuracy=0\.\d{4} \(final model\)", text)

    listed = cluster.ok("list_runs")
    runs = {run["run_number"]: run for run in listed.data["runs"]}
    assert sorted(runs) == [1, 2] and listed.data["total"] == 2
    assert runs[1]["ending"].startswith(f"aborted by {ADMIN} · failed sites: flclient2 (")
    assert runs[2]["ending"] == "finished" and runs[2]["rounds"] == "1/1"
    assert runs[2]["started_at"] <= runs[2]["ended_at"]
    assert listed.text.splitlines()[-1] == "runs 1-2 of 2 (page 1 of 1)"
    shown = cluster.ok("show_run 2")
    first = shown.data["rounds"][0]
    assert first["round"] == 0 and list(first["sites"]) == ["flclient1"]
    assert first["sites"]["flclient1"]["samples"] > 0
    assert "val_accuracy" in first["sites"]["flclient1"]["metrics"]
    assert shown.data["rounds"][-1]["final"] is True

    apps = cluster.ok("list_apps").data["apps"]
    copy = cluster.root / "server" / "transfer" / "digits_fedavg"
    assert [(a["name"], a["sha256"]) for a in apps] == [
        ("digits_fedavg", review_app(copy, "").digest)
    ]
    admins = cluster.ok("list_admins").data["admins"]
    assert [a["user"] for a in admins] == [ADMIN]
    assert admins[0]["last_command"] == "list_apps" and admins[0]["role"] == "super"

    # After a restart, a site that is not back yet reads as it last was (offline), not blank.
    one = next(d for d in cluster.daemons if d.name == "flclient1")
    wait_until(lambda: rows(cluster)["flclient1"]["status"] == st.STOPPED, 30, "run 2 over")
    one.signal(signal.SIGKILL)
    one.wait(10)
    server.signal(signal.SIGKILL)
    server.wait(10)
    server.restart(SERVER_READY)
    restored = rows(cluster)["flclient1"]
    assert (restored["status"], restored["device"], restored["connected"]) == (
        st.STOPPED,
        "cpu",
        False,
    )


def test_the_feed_ends_with_who_shut_the_server_down(cluster: Cluster) -> None:
    server = cluster.server()

    async def scenario() -> FeedEvent:
        link = AdminLink(cluster.kit())
        await link.login()
        feed = link.events()
        await anext(feed)  # the snapshot
        startup = cluster.kit()
        other = AdminClient(startup, load_kit(startup), ADMIN)
        await other.login()
        await other.execute("shutdown server", confirmed=True)
        await other.close()
        events = [event async for event in feed]
        await link.close()
        return events[-1]

    last = asyncio.run(scenario())
    assert last.body == ServerStopping(ADMIN, admin=True)
    assert server.wait(30) == 0
