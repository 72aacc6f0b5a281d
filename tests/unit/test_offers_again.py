"""An offer the server made while a client had no control stream never reached it: the
client's next stream gets it again, for training rounds and for cross-site validation, and a
client that already took up its task is not offered it twice. Driven on a real FLServer
without gRPC."""

from __future__ import annotations

from pathlib import Path

from flcore import status as st
from flcore.federation import GLOBAL_OWNER, MachineInfo, TaskKind, TaskOffer
from flcore.identity import KIND_CLIENT, Identity
from flserverd.links import ClientLink
from flserverd.registry import RegisteredClient
from flserverd.server import FLServer
from tests.unit.test_exchange import RUN, on_server, train, write_model


async def offers(link: ClientLink) -> list[TaskOffer]:
    """The offers queued on ``link`` (closing it)."""
    link.close()
    queued = []
    while (message := await link.next()) is not None:
        if isinstance(message, TaskOffer):
            queued.append(message)
    return queued


def site(server: FLServer, name: str) -> RegisteredClient:
    identity = Identity(name, "hospital", KIND_CLIENT, serial=hash(name) & 0xFFFF)
    return server.login(identity, "", MachineInfo()).client


def training(round: int = -1) -> st.ClientStatus:
    return st.ClientStatus(status=st.STARTED, run_number=RUN, round=round)


def test_a_training_offer_lost_between_streams_is_made_again(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        train(server, num_rounds=2, min_num_clients=2)
        client = site(server, "site-a")
        first = server.attach(client, training())
        assert [(o.kind, o.round) for o in await offers(first)] == [(TaskKind.TRAIN, 0)]
        server.detach(client, first)

        # The offer went into the first stream as it broke: the hello says round 0 was
        # never taken up, so the new stream offers it again.
        second = server.attach(client, training())
        assert [(o.kind, o.round) for o in await offers(second)] == [(TaskKind.TRAIN, 0)]
        server.detach(client, second)

        # A client that took up round 0 (training or sent it) is not offered it twice.
        third = server.attach(client, training(round=0))
        assert await offers(third) == []

    on_server(tmp_path, scenario)


def test_a_site_restarted_mid_round_is_offered_the_round_again(tmp_path: Path) -> None:
    """systemd restarts a site in 5 s, well within its heartbeat timeout: the server still
    counted it ready, busy with the round it had taken up, and its new training process
    waited for an offer while the round waited for its update, for good."""

    async def scenario(server: FLServer) -> None:
        train(server, num_rounds=2, min_num_clients=2)
        client = site(server, "site-a")
        first = server.attach(client, training())
        server.update_status(client, training(round=0))  # took round 0 up
        assert [(o.kind, o.round) for o in await offers(first)] == [(TaskKind.TRAIN, 0)]
        server.detach(client, first)

        # The restarted daemon's hello: a new training process, starting; then it is ready.
        second = server.attach(client, st.ClientStatus(status=st.STARTING, run_number=RUN))
        server.update_status(client, training())
        assert [(o.kind, o.round) for o in await offers(second)] == [(TaskKind.TRAIN, 0)]

    on_server(tmp_path, scenario)


def test_a_cross_site_offer_lost_between_streams_is_made_again(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        train(server, num_rounds=2)
        crossval = server.crossval_for(RUN)
        crossval.declare("site-b")
        a = site(server, "site-a")
        validating = st.ClientStatus(
            status=st.CROSS_VALIDATING, run_number=RUN, round=-1, cross_validate=True
        )
        link = server.attach(a, validating)
        assert [o.pending for o in await offers(link)] == [(GLOBAL_OWNER, "site-b")]
        server.detach(a, link)

        # site-b's model comes while site-a has no stream: the offer naming it is lost.
        crossval.accept_model("site-b", write_model(tmp_path / "b.safetensors", 1.0))
        again = server.attach(a, validating)
        assert [(o.owners, o.pending) for o in await offers(again)] == [
            (("site-b",), (GLOBAL_OWNER,))
        ]

    on_server(tmp_path, scenario)


def test_an_earlier_run_s_cross_site_validation_takes_only_sites_that_took_part(
    tmp_path: Path,
) -> None:
    """Naming a finished run in a status once made any site a participant of its cross-site
    validation, free to fetch every local model shared in it."""

    async def scenario(server: FLServer) -> None:
        server.set_run_number(RUN)
        server.db.record_folded(RUN, 0, "site-a", 10, {})
        server.set_run_number(RUN + 1)  # run 1 is over; run 2 is the current one
        claiming = st.ClientStatus(
            status=st.CROSS_VALIDATING, run_number=RUN, round=-1, cross_validate=True
        )
        for name in ("site-a", "newcomer"):
            server.attach(site(server, name), claiming)
        crossval = server.crossval_for(RUN)
        assert crossval.declared == {"site-a"}
        assert not crossval.may_fetch("newcomer", "site-a")
        # The current run's is open to any site that opts in, as before.
        now = st.ClientStatus(status=st.STARTED, run_number=RUN + 1, round=-1, cross_validate=True)
        server.update_status(site(server, "newcomer-2"), now)
        assert server.crossval_for(RUN + 1).declared == {"newcomer-2"}

    on_server(tmp_path, scenario)


def test_the_server_holds_the_cross_site_validations_of_runs_under_way_only(
    tmp_path: Path,
) -> None:
    """Every run this process had seen stayed in memory with its matrix, for months."""

    async def scenario(server: FLServer) -> None:
        validating = st.ClientStatus(
            status=st.CROSS_VALIDATING, run_number=RUN, round=-1, cross_validate=True
        )
        server.set_run_number(RUN)
        server.db.record_folded(RUN, 0, "site-a", 10, {})
        server.attach(site(server, "site-a"), validating)
        for number in range(RUN + 1, RUN + 40):
            server.set_run_number(number)
            server.crossval_for(number).record(GLOBAL_OWNER, "site-x", {"dice": 0.5}, "")
        # Run 1, where site-a still validates, and the current run stay; the others go.
        assert sorted(server._crossvals) == [RUN, RUN + 39]
        # One that comes back is rebuilt from what the server keeps.
        assert server.crossval_for(RUN + 5).results[(GLOBAL_OWNER, "site-x")][0] == {"dice": 0.5}
        a = server.registry.by_instance("site-a")
        assert a is not None
        # A site that moves on to another run no longer validates the earlier one.
        server.update_status(a, st.ClientStatus(status=st.STARTED, run_number=RUN + 39, round=-1))
        assert "site-a" not in server.crossval_for(RUN).validating
        server.set_run_number(RUN + 40)
        assert sorted(server._crossvals) == []

    on_server(tmp_path, scenario)
