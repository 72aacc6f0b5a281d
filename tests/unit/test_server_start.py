"""FLServer.start_training: the reply does not wait for the initial model, so the sites' training
processes start while it is built; a build that fails stops the sites started meanwhile."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.federation import Downward, MachineInfo, RunEnded, TaskKind, TaskOffer
from flcore.identity import KIND_CLIENT, Identity
from fldev.poll import wait_until_async
from flserverd import server as server_module
from flserverd.links import ClientLink
from flserverd.server import CommandError, FLServer
from tests.unit.serverparts import server_startup

RUN = 1


def deploy(server: FLServer, **settings: object) -> None:
    """What set_run_number and deploy <app> server leave: run 1 with its server app."""
    server.set_run_number(RUN)
    config = server.store.server_app(RUN) / "config"
    config.mkdir(parents=True)
    (config / "config_fed_server.json").write_text(json.dumps({"num_rounds": 2, **settings}))
    train = {"model": {"path": "flapp.models.MLP"}, "dataset": {"path": "flapp.datasets.X"}}
    (config / "config_train.json").write_text(json.dumps(train))


def started_site(server: FLServer, name: str, status: str = st.STARTED) -> ClientLink:
    client = server.login(Identity(name, "hospital", KIND_CLIENT), "", MachineInfo()).client
    return server.attach(client, st.ClientStatus(status=status, run_number=RUN))


def sent(link: ClientLink) -> list[Downward | None]:
    messages = []
    while not link._queue.empty():
        messages.append(link._queue.get_nowait())
    return messages


def run_with(
    tmp_path: Path,
    scenario: Callable[[FLServer, asyncio.Event], Awaitable[None]],
    checkpoint_dirs: tuple[str, ...] = (),
) -> None:
    async def go() -> None:
        startup = dataclasses.replace(server_startup(), checkpoint_dirs=checkpoint_dirs)
        server = FLServer(tmp_path, startup, "test")
        await server.open()
        try:
            await scenario(server, asyncio.Event())
        finally:
            await server.close(1)

    asyncio.run(go())


def test_the_reply_comes_before_the_model_and_sites_started_meanwhile_get_round_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(server: FLServer, built: asyncio.Event) -> None:
        async def build(app_dir: Path, target: Path, _: object) -> None:
            await built.wait()
            target.parent.mkdir(parents=True, exist_ok=True)
            safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, target)

        monkeypatch.setattr(server_module, "build_initial_model", build)
        deploy(server)
        assert await server.start_training() == "Server training is starting...."
        assert server.server_status() == st.STARTING
        link = started_site(server, "site-a")  # start client, while the model is built
        assert sent(link) == []
        built.set()
        await wait_until_async(lambda: not server.starting, 5, "the start to end")
        assert server.server_status() == st.STARTED
        assert sent(link) == [TaskOffer(RUN, 0, TaskKind.TRAIN)]

    run_with(tmp_path, scenario)


def test_a_failed_build_stops_the_sites_started_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(server: FLServer, failed: asyncio.Event) -> None:
        async def build(app_dir: Path, target: Path, _: object) -> None:
            await failed.wait()
            raise server_module.ModelInitError("cannot import 'flapp.models.Nope'")

        monkeypatch.setattr(server_module, "build_initial_model", build)
        deploy(server)
        assert await server.start_training() == "Server training is starting...."
        early = started_site(server, "site-a")
        starting = started_site(server, "site-b", st.STARTING)
        failed.set()
        await wait_until_async(lambda: not server.starting, 5, "the start to end")
        ended = RunEnded(
            RUN, st.STOPPED, "the server could not start run 1: cannot import 'flapp.models.Nope'"
        )
        assert sent(early) == [ended]
        assert server.server_status() == st.NOT_STARTED
        assert server.run_view().reason == "cannot import 'flapp.models.Nope'"
        # A site whose training process gets ready after the failure is told as it reports.
        sent(starting)
        client = server.registry.by_instance("site-b")
        assert client is not None
        server.update_status(client, st.ClientStatus(status=st.STARTED, run_number=RUN))
        assert sent(starting) == [ended]

    run_with(tmp_path, scenario)


def test_a_shutdown_during_the_build_ends_the_start_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build is a child process: a server stopping while it runs ends it and says why,
    before the state database is closed."""
    ended: list[str] = []

    async def go() -> None:
        never, building = asyncio.Event(), asyncio.Event()

        async def build(app_dir: Path, target: Path, _: object) -> None:
            building.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                ended.append("build ended")
                raise

        monkeypatch.setattr(server_module, "build_initial_model", build)
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        deploy(server)
        await server.start_training()
        await building.wait()
        await server.close(1)
        assert server.start_error == "start stopped by the server's shutdown"
        assert not server.starting

    asyncio.run(go())
    assert ended == ["build ended"]


def test_start_refuses_an_app_whose_checkpoint_the_server_may_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app uploaded before the server checked, or a folder the operator has taken off
    checkpoint_dirs since: start server says so, and nothing is built or started."""
    workspace, pretrained = tmp_path / "ws", tmp_path / "pretrained"
    workspace.mkdir()
    builds: list[list[Path]] = []

    async def build(app_dir: Path, target: Path, folders: list[Path]) -> None:
        builds.append(list(folders))
        target.parent.mkdir(parents=True, exist_ok=True)
        safetensors.numpy.save_file({"w": np.zeros(3, np.float32)}, target)

    monkeypatch.setattr(server_module, "build_initial_model", build)

    async def refused(server: FLServer, _: asyncio.Event) -> None:
        deploy(server, initial_checkpoint=str(pretrained / "x.pt"))
        with pytest.raises(CommandError) as refusal:
            await server.start_training()
        assert str(refusal.value).startswith("the deployed app cannot run on this server: ")
        assert "is outside the folders this server reads checkpoints from" in str(refusal.value)
        assert server.server_status() == st.NOT_STARTED

    run_with(workspace, refused)
    assert builds == []

    async def allowed(server: FLServer, _: asyncio.Event) -> None:
        assert await server.start_training() == "Server training is starting...."
        await wait_until_async(lambda: not server.starting, 5, "the start to end")
        assert server.server_status() == st.STARTED

    run_with(workspace, allowed, checkpoint_dirs=(str(pretrained),))
    assert builds == [[workspace, pretrained]]  # what the model-init child may read
