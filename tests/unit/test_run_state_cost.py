"""What the run's state costs at every accepted update: one walk over the registered
clients, not one per question (docs/benchmarks.md, "A run-state event with 1,000
clients")."""

from __future__ import annotations

from _collections_abc import dict_values
from pathlib import Path

from flcore import status as st
from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, Identity
from flcore.status import ClientStatus
from flserverd.registry import RegisteredClient
from flserverd.server import FLServer
from tests.unit.test_exchange import RUN, on_server, train


class Walks(dict[bytes, RegisteredClient]):
    """The registry's clients, counting the walks over all of them."""

    walks = 0

    def values(self) -> dict_values[bytes, RegisteredClient]:
        self.walks += 1
        return super().values()


def test_a_round_with_its_updates_publishes_its_state_in_one_walk_over_the_clients(
    tmp_path: Path,
) -> None:
    """blocked and awaited each sorted and walked every registered client at every update
    (with 1,000 sites training, 0.5 ms of the loop per update, 1,000 updates a round); a
    round with its min_num_clients updates cannot be blocked, and who is on the way to the
    run is one walk."""

    async def scenario(server: FLServer) -> None:
        training = train(server, num_rounds=5, min_num_clients=2)
        training.begin()
        for number in range(40):
            identity = Identity(f"site-{number:02d}", "hospital", KIND_CLIENT)
            site = server.login(identity, "", MachineInfo()).client
            server.update_status(site, ClientStatus(st.STARTED, RUN, round=0))
        starting = server.registry.by_instance("site-39")
        assert starting is not None
        server.update_status(starting, ClientStatus(st.STARTING, RUN))
        for name in ("site-00", "site-01"):
            training.round.contributed[name] = 10
        counted = Walks(server.registry._clients)
        server.registry._clients = counted
        view = server.run_view()
        assert view.blocked == "" and view.updates_received == 2
        assert view.awaited == tuple(f"site-{n:02d}" for n in range(2, 40))
        assert counted.walks == 1

    on_server(tmp_path, scenario)
