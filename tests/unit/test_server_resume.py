"""FLServer resuming a run after a restart, driven without gRPC."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.federation import MachineInfo
from flcore.identity import KIND_CLIENT, Identity
from flcore.tokens import new_token, token_key
from fldev.poll import wait_until_async
from flserverd import server as server_module
from flserverd.commands import AdminCommands
from flserverd.listings import when
from flserverd.server import CommandError, FLServer
from flserverd.statedb import ClientRecord, RoundSummary, RunRecord, StateDB
from tests.unit.serverparts import full_state_disk, server_startup

APP = Path(__file__).resolve().parents[2] / "examples" / "apps" / "digits_fedavg"


def interrupted_run(workspace: Path, with_app: bool) -> None:
    """A workspace whose database says run 4 was training when the server died."""
    (workspace / "state").mkdir(parents=True)
    db = StateDB(workspace / "state" / "flserverd.sqlite3")
    db.set_meta("run_number", "4")
    db.save_run(RunRecord(4, st.STARTED, phase="training", num_rounds=5, next_round=2))
    db.close()
    if with_app:
        shutil.copytree(APP, workspace / "run_4" / "app_server")


def reopen(workspace: Path) -> tuple[str, str]:
    async def scenario() -> tuple[str, str]:
        server = FLServer(workspace, server_startup(), "test")
        await server.open()
        try:
            view = server.run_view()
            return view.server_status, view.reason
        finally:
            await server.close(1)

    return asyncio.run(scenario())


def test_a_run_whose_round_model_is_gone_is_stopped_not_fatal(tmp_path: Path) -> None:
    interrupted_run(tmp_path, with_app=True)
    status, reason = reopen(tmp_path)
    assert status == st.STOPPED
    assert reason.startswith("could not resume:") and "round_2.safetensors" in reason
    # The next start sees the same verdict: nothing is retried behind the admin's back.
    assert reopen(tmp_path)[0] == st.STOPPED


def test_a_run_without_its_app_is_stopped_not_fatal(tmp_path: Path) -> None:
    interrupted_run(tmp_path, with_app=False)
    status, reason = reopen(tmp_path)
    assert status == st.STOPPED and "no config/ folder" in reason


def test_shutdown_waits_for_clients_that_agreed_to_leave(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], float, list[str], list[str]]:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            site = Identity("site", "org", KIND_CLIENT)
            leaving = server.registry.login(site, "", MachineInfo()).client
            staying = server.registry.login(site, "", MachineInfo()).client
            server.leaving([leaving])
            loop = asyncio.get_running_loop()
            loop.call_later(0.3, server.drop, leaving, "logged out")
            began = loop.time()
            gone = await server.departures(5.0)
            waited = loop.time() - began
            # A client that agreed but never logs out holds the shutdown for `wait` at most.
            server.leaving([staying])
            late = await server.departures(0.2)
            restarted = FLServer(tmp_path, server_startup(), "test")
            after_restart = [s.instance for s in restarted.registry.clients()]
            restarted.db.close()
            return gone, waited, late, after_restart
        finally:
            await server.close(1)

    gone, waited, late, after_restart = asyncio.run(scenario())
    assert gone == [] and waited >= 0.25  # returned when the client left, not before
    assert late == ["site_1"]
    assert after_restart == ["site_1"]  # the one that logged out is gone from the database too


def restarting_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Run 4 interrupted at round 2, and a state database on a disk that is full while the
    returned ``on`` is set; the server retries every 10 ms."""
    interrupted_run(tmp_path, with_app=True)
    models = tmp_path / "run_4" / "models"
    models.mkdir()
    weights = {"w": np.zeros(4, dtype=np.float32)}
    safetensors.numpy.save_file(weights, models / "round_2.safetensors")
    full = full_state_disk(monkeypatch)
    return full


def test_a_server_restarted_on_a_full_disk_resumes_the_run_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = restarting_on_a_full_disk(tmp_path, monkeypatch)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()  # does not fail: the admins can look
        try:
            view = server.run_view()
            assert view.server_status == st.PAUSED
            assert view.fault.startswith("server disk full: state database")
            with pytest.raises(CommandError) as refused:  # it would stay "started" for good
                server.set_run_number(5)
            assert str(refused.value).startswith(
                "run 4 waits to be taken up again (server disk full: state database"
            )
            assert server.run_number == 4
            full["on"] = False
            await wait_until_async(
                lambda: server.training_for(4) is not None, 10, "the run to resume"
            )
            view = server.run_view()
            assert view.server_status == st.STARTED and view.current_round == 2
            assert view.fault == ""
        finally:
            await server.close(1)

    asyncio.run(scenario())


def test_a_fresh_start_while_a_resume_waits_for_the_disk_is_the_only_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume kept retrying while ``start server fresh`` built its model, took up the old
    run meanwhile, and that run's timers later ended the new one."""
    full = restarting_on_a_full_disk(tmp_path, monkeypatch)
    built = asyncio.Event()
    building = asyncio.Event()

    async def build(app_dir: Path, target: Path, _: object) -> None:  # the model-init child, held
        building.set()
        await built.wait()
        safetensors.numpy.save_file({"w": np.ones(4, dtype=np.float32)}, target)

    monkeypatch.setattr(server_module, "build_initial_model", build)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            assert server.run_view().server_status == st.PAUSED
            full["on"] = False  # the admin made room, and starts over
            await server.start_training(fresh=True)
            assert server._resuming is None and server.resume_fault == ""
            await asyncio.wait_for(building.wait(), 10)
            assert server.training_for(4) is None  # the old run was not taken up meanwhile
            built.set()
            await wait_until_async(lambda: server.training_for(4) is not None, 10, "the start")
            view = server.run_view()
            assert view.server_status == st.STARTED and view.current_round == 0
        finally:
            await server.close(1)

    asyncio.run(scenario())


def write_round_2_model(workspace: Path) -> None:
    """The model run 4's record names as its latest (round 2), there for a start to find."""
    models = workspace / "run_4" / "models"
    models.mkdir()
    safetensors.numpy.save_file(
        {"w": np.zeros(4, dtype=np.float32)}, models / "round_2.safetensors"
    )


def test_a_continued_run_forgets_how_it_ended_before(tmp_path: Path) -> None:
    """start server continues a stopped run: the sites that failed before, their errors and
    when it ended are the previous attempt's, and the rows of the run date from now."""
    interrupted_run(tmp_path, with_app=True)
    db = StateDB(tmp_path / "state" / "flserverd.sqlite3")
    stopped = RunRecord(
        4,
        st.STOPPED,
        phase="training",
        num_rounds=5,
        next_round=2,
        failed_sites=["site_1"],
        reason="aborted by admin@lead.org",
        failures={"site_1": "no DATA_ROOT set"},
        started_at=100.0,
        ended_at=200.0,
    )
    db.save_run(stopped)
    db.close()
    models = tmp_path / "run_4" / "models"
    models.mkdir()
    weights = {"w": np.zeros(4, dtype=np.float32)}
    safetensors.numpy.save_file(weights, models / "round_2.safetensors")

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            assert server.run_view().site_errors == {"site_1": "no DATA_ROOT set"}
            reply = await server.start_training()
            assert reply.startswith("Server training continues run 4 at round 2")
            view = server.run_view()
            assert view.server_status == st.STARTED and view.ending() == ""
            assert view.failed_sites == () and view.site_errors == {}
            record = server.db.get_run(4)
            assert record is not None and record.failures == {}
            # The run started at 100 and continues now: list_runs keeps its first start,
            # show_run says when it continued.
            assert record.ended_at == 0.0 and record.started_at == 100.0
            assert record.resumed_at > 200.0 and record.last_started == record.resumed_at
            commands = AdminCommands(server)
            listed = await commands.execute("a@b.org", "member", "list_runs", 5.0, False)
            (line,) = listed.data["runs"]
            assert (line["started_at"], line["resumed_at"]) == (100.0, record.resumed_at)
            shown = await commands.execute("a@b.org", "member", "show_run 4", 5.0, False)
            assert shown.text.splitlines()[1] == (
                f"Started {when(100.0)}, continued {when(record.resumed_at)}"
            )
        finally:
            await server.close(1)

    asyncio.run(scenario())


def test_a_final_validation_taken_up_waits_for_the_last_rounds_sites_still_registered(
    tmp_path: Path,
) -> None:
    """The reports it had died with the last process: it waits for the last round's sites
    (they report again), but not for one no longer registered, which never would."""
    interrupted_run(tmp_path, with_app=True)
    db = StateDB(tmp_path / "state" / "flserverd.sqlite3")
    record = RunRecord(4, st.STARTED, phase="final validation", num_rounds=2, next_round=2)
    db.complete_round(record, RoundSummary(4, 1, 1.0e9, ["site-a", "site-b", "site-c"], {}))
    for name in ("site-a", "site-b"):
        db.save_client(ClientRecord(token_key(new_token()), name, name, "org", 1.0e9))
    db.close()
    write_round_2_model(tmp_path)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            training = server.training_for(4)
            assert training is not None and training.awaited() == ["site-a", "site-b"]
        finally:
            await server.close(1)

    asyncio.run(scenario())


def test_a_run_whose_final_validation_was_committed_ends_when_taken_up(tmp_path: Path) -> None:
    """Killed between the final validation's commit and the run's end: the restarted server
    took the run up in its final validation and waited for every site to report again."""
    interrupted_run(tmp_path, with_app=True)
    db = StateDB(tmp_path / "state" / "flserverd.sqlite3")
    record = RunRecord(4, st.STARTED, phase="final validation", num_rounds=2, next_round=2)
    db.complete_round(record, RoundSummary(4, 1, 1.0e9, ["site-a"], {}))
    db.record_folded(4, 2, "site-a", 10, {"val_accuracy": 0.9})
    db.complete_round(
        record, RoundSummary(4, 2, 1.0e9 + 1, ["site-a"], {"val_accuracy": 0.9}, final=True)
    )
    db.save_client(ClientRecord(token_key(new_token()), "site-a", "site-a", "org", 1.0e9))
    db.close()
    write_round_2_model(tmp_path)
    assert reopen(tmp_path) == (st.STOPPED, st.FINISHED)
    db = StateDB(tmp_path / "state" / "flserverd.sqlite3")
    try:
        ended = db.get_run(4)
        assert ended is not None and (ended.status, ended.reason) == (st.STOPPED, st.FINISHED)
        assert [r.round for r in db.round_records(4)] == [1, 2]
    finally:
        db.close()
    lines = (tmp_path / "run_4" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2]  # written once, after all


def test_a_run_recorded_aborted_after_its_final_result_is_finished_not_continued(
    tmp_path: Path,
) -> None:
    """An older server recorded an abort that came after the final result as the run's end:
    start server said it "continues run 4 at the final validation", then ended it at once."""
    interrupted_run(tmp_path, with_app=True)
    db = StateDB(tmp_path / "state" / "flserverd.sqlite3")
    record = RunRecord(4, st.STARTED, phase="final validation", num_rounds=2, next_round=2)
    db.complete_round(record, RoundSummary(4, 1, 1.0e9, ["site-a"], {}))
    db.complete_round(
        record, RoundSummary(4, 2, 1.0e9 + 1, ["site-a"], {"val_accuracy": 0.9}, final=True)
    )
    record.status, record.reason = st.STOPPED, "aborted by admin@lead.org"
    db.end_run(record)
    db.close()
    write_round_2_model(tmp_path)

    async def scenario() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            with pytest.raises(CommandError) as refused:
                await server.start_training()
            assert str(refused.value).startswith(
                "run 4 finished all its rounds: start server fresh trains run 4 again"
            )
            training = server.training_for(4)
            assert training is None or not training.active
        finally:
            await server.close(1)

    asyncio.run(scenario())
