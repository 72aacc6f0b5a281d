"""The round a restarted server takes up waits for the sites that trained the run."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.federation import TaskKind
from flcore.status import ClientStatus
from flcore.tokens import new_token, token_key
from fldev.poll import wait_until_async
from flserverd.server import FLServer
from flserverd.statedb import ClientRecord, RunRecord, StateDB
from tests.unit.serverparts import full_state_disk, server_startup
from tests.unit.test_offers_again import offers

APP = Path(__file__).resolve().parents[2] / "examples" / "apps" / "digits_fedavg"
TRAINING = ("site-a", "site-b", "site-c")


def interrupted_round(workspace: Path) -> None:
    """Run 4 was in round 2 when the server stopped; sites a, b and c trained it, site-d
    was idle and site-e trained an earlier run."""
    (workspace / "state").mkdir(parents=True)
    db = StateDB(workspace / "state" / "flserverd.sqlite3")
    db.set_meta("run_number", "4")
    db.save_run(RunRecord(4, st.STARTED, phase="training", num_rounds=5, next_round=2))
    said = {name: ClientStatus(st.STARTED, run_number=4, round=2) for name in TRAINING}
    said["site-d"] = ClientStatus()
    said["site-e"] = ClientStatus(st.STARTED, run_number=3, round=7)
    for name, status in said.items():
        key = token_key(new_token())
        db.save_client(ClientRecord(key, name, name, "org", 1.0e9))
        db.save_client_state(key, asdict(status), {})
    db.close()
    shutil.copytree(APP, workspace / "run_4" / "app_server")
    models = workspace / "run_4" / "models"
    models.mkdir()
    safetensors.numpy.save_file(
        {"w": np.zeros(4, dtype=np.float32)}, models / "round_2.safetensors"
    )


def test_the_round_taken_up_waits_for_every_site_training_until_it_is_back_or_dropped(
    tmp_path: Path,
) -> None:
    """The round waited only for the sites back already: the first two back closed it as
    soon as they reached min_num_clients, without the third, which a round never interrupted
    waits for (wait_after_min_clients)."""
    interrupted_round(tmp_path)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            training = server.training_for(4)
            assert training is not None and training.current_round == 2
            assert training.awaited() == list(TRAINING)
            for name in TRAINING[:2]:  # back, on a new control stream
                client = server.registry.by_instance(name)
                assert client is not None
                server.update_status(client, ClientStatus(st.STARTED, 4, 2), new_stream=True)
            assert training.ready == set(TRAINING[:2])
            assert training.awaited() == list(TRAINING)
            assert server.run_view().awaited == TRAINING
            gone = server.registry.by_instance("site-c")
            assert gone is not None
            server.drop(gone, "no heartbeat for 60s")  # the heartbeat timeout, as the sweep
            assert training.awaited() == list(TRAINING[:2])
        finally:
            await server.close(1)

    asyncio.run(scenario())


def test_sites_back_while_the_resume_waited_for_the_disk_are_offered_the_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server restarted on a full disk takes the run up once there is room. A site that
    came back meanwhile said it trained the run, before the server held it, and says so no
    more: nothing offered it the round, which waited for its update."""
    interrupted_round(tmp_path)
    full = full_state_disk(monkeypatch)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            assert server.training_for(4) is None  # waits for room
            back = server.registry.by_instance("site-a")
            assert back is not None
            link = server.attach(back, ClientStatus(st.STARTED, 4, 2))
            full["on"] = False
            await wait_until_async(lambda: server.training_for(4) is not None, 10, "the resume")
            training = server.training_for(4)
            assert training is not None and training.awaited() == list(TRAINING)
            assert [(o.kind, o.round) for o in await offers(link)] == [(TaskKind.TRAIN, 2)]
        finally:
            await server.close(1)

    asyncio.run(scenario())
