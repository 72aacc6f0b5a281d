"""Why a training run cannot finish its round (FLServer.blocked, the run's ``blocked``),
on a real FLServer without gRPC."""

from __future__ import annotations

from pathlib import Path

from flcore import status as st
from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, Identity
from flcore.status import ClientStatus
from flserverd.registry import RegisteredClient
from flserverd.server import FLServer
from flserverd.training import Training
from tests.unit.test_exchange import RUN, on_server, train


def training_two_sites(server: FLServer) -> tuple[Training, list[RegisteredClient]]:
    """A run training for 5 rounds that needs 2 sites, and site-a and site-b logged in."""
    training = train(server, num_rounds=5, min_num_clients=2)
    training.begin()
    sites = [
        server.login(Identity(name, "hospital", KIND_CLIENT), "", MachineInfo()).client
        for name in ("site-a", "site-b")
    ]
    return training, sites


def test_a_site_paused_by_its_disk_still_counts_as_training(tmp_path: Path) -> None:
    """A paused site goes on by itself once it has room: "start more clients" would be wrong
    advice. A site that is not training at all leaves the run blocked."""

    async def scenario(server: FLServer) -> None:
        training, sites = training_two_sites(server)
        server.update_status(sites[0], ClientStatus(st.STARTED, RUN))
        server.update_status(sites[1], ClientStatus(st.PAUSED, RUN, error="client disk full"))
        assert server.blocked(training) == "" and server.run_view().blocked == ""
        server.update_status(sites[1], ClientStatus(st.STOPPED, RUN))
        assert server.run_view().blocked == (
            "min_num_clients 2 but only 1 site(s) are training: start more clients (start client)"
        )

    on_server(tmp_path, scenario)


def test_sites_waiting_for_approval_are_named_and_sites_starting_are_awaited(
    tmp_path: Path,
) -> None:
    """Sites that wait for their IT's approval cannot be cured by "start client", and sites
    still starting their training are who the round waits for, not "nobody"."""

    async def scenario(server: FLServer) -> None:
        _, sites = training_two_sites(server)
        for site in sites:
            server.update_status(site, ClientStatus(st.STARTING, RUN, round=0))
        view = server.run_view()
        assert view.blocked == "" and view.awaited == ("site-a", "site-b")
        detail = "waiting for approval of app app sha256:3f2a9c0d11e4"
        for site in sites:
            server.update_status(site, ClientStatus(st.WAITING_APPROVAL, RUN, detail=detail))
        view = server.run_view()
        assert view.blocked == (
            "min_num_clients 2 but only 0 site(s) can train: site-a, site-b wait for their "
            "site IT's approval of the app's code (site IT: flclientd show-app, then "
            "flclientd approve)"
        )
        assert view.awaited == ("site-a", "site-b")
        server.update_status(sites[0], ClientStatus(st.STOPPED, RUN))
        assert server.run_view().awaited == ("site-b",)

    on_server(tmp_path, scenario)


def test_sites_waiting_for_approval_are_named_eight_at_most_and_counted(tmp_path: Path) -> None:
    """The reason is in every run-state event: a thousand sites waiting named each of them."""

    async def scenario(server: FLServer) -> None:
        training = train(server, num_rounds=5, min_num_clients=2)
        training.begin()
        for number in range(12):
            name = f"site-{number:02d}"
            site = server.login(Identity(name, "hospital", KIND_CLIENT), "", MachineInfo()).client
            server.update_status(site, ClientStatus(st.WAITING_APPROVAL, RUN))
        blocked = server.run_view().blocked
        assert "site-00, site-01" in blocked and "site-07 and 4 more wait for" in blocked
        assert "site-08" not in blocked

    on_server(tmp_path, scenario)
