"""``delete_run``: a run that is over leaves the server, its folder and its history, and
nothing else; driven on a real FLServer and AdminCommands, without gRPC."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.compression import WireChunk
from flcore.federation import (
    GLOBAL_OWNER,
    MAX_RUN_NUMBER,
    MachineInfo,
    MetricsKind,
    MetricsReport,
    SubmitOutcome,
    UploadKind,
    Verdict,
)
from flcore.identity import KIND_CLIENT, ROLE_MEMBER, ROLE_SUPER, Identity
from flcore.status import ClientStatus
from flcore.tensorfile import TensorFile
from flserverd import exchange as exchange_module
from flserverd import server as server_module
from flserverd.commands import AdminCommands, Reply
from flserverd.exchange import ModelExchange
from flserverd.runstore import RunStore
from flserverd.server import FLServer
from flserverd.statedb import RoundSummary, RunRecord
from tests.unit.serverparts import server_startup, upload
from tests.unit.test_exchange import header, train
from tests.unit.test_server_resume import APP, restarting_on_a_full_disk

ADMIN = "admin@lead.org"
MODEL_BYTES = 400_000


def finished_run(server: FLServer, number: int) -> None:
    """Run ``number`` as a finished run leaves it: models (the global ones hard links of a
    round's), metrics, TensorBoard files, its apps, a site's shared model, the matrix, and its
    history in the state database."""
    store = server.store
    folder = store.run_dir(number)
    (folder / "models").mkdir(parents=True)
    weights = {"w": np.zeros(MODEL_BYTES // 4, dtype=np.float32)}
    safetensors.numpy.save_file(weights, store.round_model(number, 2))
    store.publish(store.round_model(number, 2), store.global_model(number))
    store.publish(store.round_model(number, 2), store.best_model(number))
    (folder / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    (folder / "tb").mkdir()
    (folder / "tb" / "events.out").write_bytes(b"x" * 100)
    shutil.copytree(APP, store.server_app(number))
    (store.server_app(number) / ".app_name").write_text("digits_fedavg")
    shutil.copytree(APP, folder / "deploy" / "digits_fedavg")
    (folder / "cross_site" / "sites").mkdir(parents=True)
    safetensors.numpy.save_file(weights, folder / "cross_site" / "sites" / "site-a.safetensors")
    record = RunRecord(number, st.STOPPED, app="digits_fedavg", num_rounds=2, reason=st.FINISHED)
    for round_number in range(2):
        server.db.record_folded(number, round_number, "site-a", 10, {"acc": 0.5})
        record.next_round = round_number + 1
        summary = RoundSummary(number, round_number, 1.0e9, ["site-a"], {"acc": 0.5})
        server.db.complete_round(record, summary)
    server.db.save_validation(number, GLOBAL_OWNER, "site-a", {"acc": 0.5}, "")
    server.db.end_run(record)


def on_server(
    workspace: Path, scenario: Callable[[FLServer, AdminCommands], Awaitable[None]]
) -> None:
    async def run() -> None:
        server = FLServer(workspace, server_startup(), "test")
        await server.open()
        try:
            await scenario(server, AdminCommands(server))
        finally:
            await server.close(1)

    asyncio.run(run())


async def execute(
    cmds: AdminCommands,
    line: str,
    confirmed: bool = False,
    answered: str = "",
    role: str = ROLE_SUPER,
) -> Reply:
    return await cmds.execute(ADMIN, role, line, 5.0, confirmed, answered=answered)


async def confirmed(cmds: AdminCommands, line: str) -> Reply:
    """Ask, then answer the question asked (as the admin client does)."""
    asked = await execute(cmds, line)
    assert asked.confirm_prompt, asked.text
    return await execute(cmds, line, True, asked.data["confirm"]["digest"])


def history(server: FLServer, number: int) -> tuple[object, ...]:
    db = server.db
    return (
        db.get_run(number),
        db.round_count(number),
        db.fold_instances(number),
        db.validation_results(number),
    )


def audited(server: FLServer) -> list[tuple[str, bool]]:
    return [(line, ok) for _, _, line, ok in server.db.audit_log()]


def test_delete_run_asks_naming_what_goes_then_deletes_its_folder_and_history(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        finished_run(server, 20)
        server.set_run_number(21)
        server.crossval_for(2)  # a console asked about it: the server holds its matrix
        kept = history(server, 20)
        size = server.store.run_bytes(2)
        # The round model and its two published names are one file; the site's model another.
        assert 2 * MODEL_BYTES < size < 2 * MODEL_BYTES + 100_000

        asked = await execute(cmds, "delete_run 2")
        assert not asked.ok and (tmp_path / "run_2").is_dir()
        question = asked.data["confirm"]
        assert question["title"] == "Delete: run 2" and question["verb"] == "Delete"
        assert question["acts_on"] == ["delete_run", "2", f"{size / 1e6:.1f} MB"]
        assert asked.confirm_prompt.splitlines() == [
            "Delete: run 2",
            "This deletes:",
            f"  run_2/ ({size / 1e6:.1f} MB): its models, metrics.jsonl, TensorBoard files, the "
            "apps deployed for it and the sites' models shared for cross-site validation.",
            "  Its history: 2 completed round(s) of digits_fedavg (training stopped: finished), "
            "each site's results and the cross-site results.",
            "This cannot be undone: copy run_2/ away first if you may need it. The audit keeps "
            "the record of the commands that made and deleted it.",
            "Are you sure (Y/N):",
        ]
        assert audited(server) == []  # a question is not a command that ran

        done = await execute(cmds, "delete_run 2", True, question["digest"])
        assert done.ok and done.text == f"Deleted run 2 ({size / 1e6:.1f} MB)."
        assert done.data == {"run_number": 2, "bytes": size, "left": ""}
        assert not (tmp_path / "run_2").exists()
        assert list(server.store.deleting.iterdir()) == []
        assert history(server, 2) == (None, 0, [], [])
        assert history(server, 20) == kept
        assert (tmp_path / "run_20" / "models" / "round_2.safetensors").is_file()
        assert 2 not in server._crossvals
        assert audited(server) == [("delete_run 2", True)]

        listed = await execute(cmds, "list_runs")
        assert [run["run_number"] for run in listed.data["runs"]] == [21, 20]
        gone = await execute(cmds, "show_run 2")
        assert gone.text == "there is no run 2 on this server (list_runs lists them)"
        again = await execute(cmds, "delete_run 2", confirmed=True)
        assert again.text == "there is no run 2 on this server (list_runs lists them)"

    on_server(tmp_path, scenario)


def test_a_deleted_run_takes_no_more_reports_or_models_and_is_not_made_again(
    tmp_path: Path,
) -> None:
    """A site that still names the run (it validated it once) is refused; the run's folder
    is not created again by what it sends."""

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        server.set_run_number(3)
        site = Identity("site-a", "hospital", KIND_CLIENT)
        client = server.login(site, "", MachineInfo()).client
        server.update_status(client, ClientStatus(st.STOPPED, run_number=2, cross_validate=True))
        assert (await confirmed(cmds, "delete_run 2")).ok
        server.update_status(client, ClientStatus(st.STOPPED, run_number=2, cross_validate=True))
        report = MetricsReport(2, -1, MetricsKind.CROSS_VALIDATION, GLOBAL_OWNER, {"a": 1.0}, 5)
        verdict = ModelExchange(server).accept_metrics("site-a", report)
        assert verdict.outcome is SubmitOutcome.REJECTED
        assert verdict.message == "run 2 does not exist on this server"
        assert not (tmp_path / "run_2").exists() and server.db.validation_results(2) == []

    on_server(tmp_path, scenario)


@pytest.mark.parametrize("moment", ["streaming", "made durable"])
def test_a_local_model_received_while_its_run_is_deleted_is_refused_and_makes_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """A site's model for cross-site validation already streaming when its run was deleted
    made ``run_N/cross_site/sites`` again once it arrived (or failed with a file error)."""
    local = tmp_path.parent / f"{tmp_path.name}-local.safetensors"
    weights = {"w": np.ones(MODEL_BYTES // 4, dtype=np.float32)}
    safetensors.numpy.save_file(weights, local)
    model = TensorFile(local)
    data = weights["w"].tobytes()
    half = len(data) // 2

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        server.set_run_number(3)
        server.crossval_for(2).declare("site-b")

        async def delete() -> None:
            assert (await confirmed(cmds, "delete_run 2")).ok
            assert not (tmp_path / "run_2").exists()

        async def chunks() -> AsyncIterator[WireChunk]:
            yield WireChunk("w", 0, data[:half])
            if moment == "streaming":
                await delete()
            yield WireChunk("w", half, data[half:])

        loop = asyncio.get_running_loop()
        durable = asyncio.Event()
        deleted = threading.Event()

        def fsync_while_deleted(path: Path) -> None:
            loop.call_soon_threadsafe(durable.set)
            assert deleted.wait(10)

        async def upload_it() -> Verdict:
            declared = header(model.manifest, UploadKind.BEST_LOCAL, run_number=2, round=-1)
            return await upload(ModelExchange(server), "site-b", declared, chunks())

        if moment == "made durable":
            monkeypatch.setattr(exchange_module, "fsync_file", fsync_while_deleted)
            receiving = asyncio.ensure_future(upload_it())
            await asyncio.wait_for(durable.wait(), 10)
            await delete()
            deleted.set()
            verdict = await asyncio.wait_for(receiving, 10)
        else:
            verdict = await asyncio.wait_for(upload_it(), 10)
        assert verdict == Verdict(
            SubmitOutcome.REJECTED,
            "run 2 was deleted from this server while the local model was received; the model "
            "is not kept",
        )
        assert not (tmp_path / "run_2").exists()
        assert list(server.store.deleting.iterdir()) == []

    on_server(tmp_path, scenario)


def test_the_question_is_asked_again_when_the_run_grew_since(tmp_path: Path) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        server.set_run_number(3)
        asked = await execute(cmds, "delete_run 2")
        (tmp_path / "run_2" / "models" / "copied_in.bin").write_bytes(b"x" * 1_000_000)
        again = await execute(cmds, "delete_run 2", True, asked.data["confirm"]["digest"])
        assert not again.ok and (tmp_path / "run_2").is_dir()
        assert again.data["confirm"]["title"] == "Delete: run 2 (changed since you were asked)"
        done = await execute(cmds, "delete_run 2", True, again.data["confirm"]["digest"])
        assert done.ok and not (tmp_path / "run_2").exists()

    on_server(tmp_path, scenario)


@pytest.mark.parametrize(
    "line",
    [
        "delete_run",
        "delete_run x",
        "delete_run 0",
        "delete_run -1",
        "delete_run 2 3",
        "delete_run ²",
        "delete_run 99999999999999999999",
    ],
)
def test_a_bad_run_number_is_refused_with_the_usage(tmp_path: Path, line: str) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        reply = await execute(cmds, line, confirmed=True)
        assert not reply.ok
        assert reply.text == (
            f"usage: delete_run <N>  (N is a whole number from 1 to {MAX_RUN_NUMBER})"
        )

    on_server(tmp_path, scenario)


def test_runs_in_use_or_absent_are_refused_and_left_whole(tmp_path: Path) -> None:
    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        kept = history(server, 2)
        server.set_run_number(3)

        async def refused(line: str, role: str = ROLE_SUPER) -> str:
            reply = await execute(cmds, line, confirmed=True, role=role)
            assert not reply.ok and not reply.confirm_prompt
            assert (tmp_path / "run_2").is_dir() and history(server, 2) == kept
            return reply.text

        assert await refused("delete_run 7") == (
            "there is no run 7 on this server (list_runs lists them)"
        )
        assert await refused("delete_run 3") == (
            "run 3 is the current run: set another run number first (set_run_number <N>), "
            "then delete it"
        )
        assert (await refused("delete_run 2", ROLE_MEMBER)).startswith("permission denied")

        # Sites still validating the run (their models and reports would be refused).
        site = Identity("site-a", "hospital", KIND_CLIENT)
        client = server.login(site, "", MachineInfo()).client
        validating = ClientStatus(st.CROSS_VALIDATING, run_number=2, cross_validate=True)
        server.update_status(client, validating)
        assert await refused("delete_run 2") == (
            "sites still train or validate run 2 (cross-site validation): site-a; wait until "
            "they are done, or stop them (abort client <instance>...), then delete it"
        )
        server.update_status(client, ClientStatus(st.STOPPED, run_number=2, cross_validate=True))
        assert server.crossval_for(2).validating == set()
        # The server's picture of the validation counts too, whatever a status said last.
        server.crossval_for(2).start_validating("site-a")
        assert "site-a" in await refused("delete_run 2")
        server.crossval_for(2).withdraw("site-a", "stopped")

        train(server)  # run 1, training
        assert await refused("delete_run 1") == (
            "run 1 is training: abort it (abort server) and set another run number "
            "(set_run_number <N>) before deleting it"
        )
        assert server.abort_training("aborted by admin@lead.org")
        server.set_run_number(3)
        assert (await confirmed(cmds, "delete_run 2")).ok
        assert (await confirmed(cmds, "delete_run 1")).ok
        assert [ok for _, ok in audited(server)] == [False] * 6 + [True, True]

    on_server(tmp_path, scenario)


def test_a_run_that_is_starting_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    building = asyncio.Event()

    async def build(app_dir: Path, target: Path, _: object) -> None:  # the model-init child
        building.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(server_module, "build_initial_model", build)

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        server.set_run_number(5)
        shutil.copytree(APP, server.store.server_app(5))
        await server.start_training()
        await asyncio.wait_for(building.wait(), 10)
        reply = await execute(cmds, "delete_run 5", confirmed=True)
        assert reply.text == (
            "run 5 is starting training: abort it (abort server) and set another run number "
            "(set_run_number <N>) before deleting it"
        )
        assert (tmp_path / "run_5" / "app_server").is_dir()

    on_server(tmp_path, scenario)


def test_a_run_waiting_to_be_resumed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = restarting_on_a_full_disk(tmp_path, monkeypatch)

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        assert server.run_view().server_status == st.PAUSED
        reply = await execute(cmds, "delete_run 4", confirmed=True)
        assert reply.text.startswith("run 4 waits to be resumed (server disk full")
        full["on"] = False
        assert (tmp_path / "run_4" / "models" / "round_2.safetensors").is_file()

    on_server(tmp_path, scenario)


def test_nothing_outside_the_run_folder_is_touched(tmp_path: Path) -> None:
    """Links inside the run lead out of it; neighbours share its name's beginning."""
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "precious.txt").write_text("mine")
    (outside / "linked.bin").write_bytes(b"linked")
    neighbours = [tmp_path / "run_20" / "metrics.jsonl", tmp_path / "run_2.bak" / "notes"]
    for path in neighbours:
        path.parent.mkdir(parents=True)
        path.write_text("kept")
    (tmp_path / "transfer" / "app").mkdir(parents=True)

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        run = tmp_path / "run_2"
        (run / "to_folder").symlink_to(outside / "folder")
        (run / "tb" / "to_file").symlink_to(outside / "folder" / "precious.txt")
        (run / "models" / "hard.bin").hardlink_to(outside / "linked.bin")
        server.set_run_number(3)
        assert (await confirmed(cmds, "delete_run 2")).ok
        assert not run.exists()

    on_server(tmp_path, scenario)
    assert (outside / "folder" / "precious.txt").read_text() == "mine"
    assert (outside / "linked.bin").read_bytes() == b"linked"
    assert all(path.read_text() == "kept" for path in neighbours)
    assert (tmp_path / "transfer" / "app").is_dir() and (tmp_path / "run_3").is_dir()


def test_a_run_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    target = tmp_path.parent / f"{tmp_path.name}-moved-run"
    (target / "models").mkdir(parents=True)

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        (tmp_path / "run_2").symlink_to(target)
        server.set_run_number(3)
        reply = await execute(cmds, "delete_run 2", confirmed=True)
        assert reply.text == (
            f"run_2 is a link to {target}, not a folder of the server's own: remove the link "
            "(and what it leads to, if you mean to) by hand"
        )

    on_server(tmp_path, scenario)
    assert (tmp_path / "run_2").is_symlink() and (target / "models").is_dir()


def test_the_history_goes_first_and_a_folder_left_without_it_is_deleted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's folder that could not be moved (a crash would leave the same) is listed, with
    no history, never history pointing at files that are gone."""

    def cannot_move(store: RunStore, number: int) -> Path | None:
        raise PermissionError(13, "Permission denied")

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        server.set_run_number(3)
        with monkeypatch.context() as patch:
            patch.setattr(RunStore, "set_aside", cannot_move)
            reply = await confirmed(cmds, "delete_run 2")
        assert not reply.ok and reply.text == (
            "run 2's history is deleted, but its folder could not be moved aside "
            "(Permission denied): delete_run 2 again removes it"
        )
        assert history(server, 2) == (None, 0, [], []) and (tmp_path / "run_2").is_dir()
        listed = await execute(cmds, "list_runs")
        assert [(r["run_number"], r["status"]) for r in listed.data["runs"]] == [
            (3, st.NOT_STARTED),
            (2, st.NOT_STARTED),
        ]
        asked = await execute(cmds, "delete_run 2")
        assert "It has no history in the state database: it never trained." in (
            asked.confirm_prompt
        )
        assert (await confirmed(cmds, "delete_run 2")).ok
        assert not (tmp_path / "run_2").exists()
        assert audited(server) == [
            ("delete_run 2", False),
            ("list_runs", True),
            ("delete_run 2", True),
        ]

    on_server(tmp_path, scenario)


def test_the_deletion_is_in_the_audit_once_its_history_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit was written once the command answered: a server killed after the history
    went (before the folder moved, or before it answered) had no record of the deletion.
    Entries a full disk kept waiting go first, in order."""
    seen: list[list[tuple[str, bool]]] = []
    set_aside = RunStore.set_aside

    async def scenario(server: FLServer, cmds: AdminCommands) -> None:
        def killed_here(store: RunStore, number: int) -> Path | None:
            seen.append(audited(server))  # what a kill at this moment leaves in the audit
            return set_aside(store, number)

        finished_run(server, 2)
        server.set_run_number(3)
        cmds._unwritten.append((1.0, "other@lead.org", "list_runs", True))
        with monkeypatch.context() as patch:
            patch.setattr(RunStore, "set_aside", killed_here)
            assert (await confirmed(cmds, "delete_run 2")).ok
        assert seen == [[("list_runs", True), ("delete_run 2", True)]]
        assert audited(server) == [("list_runs", True), ("delete_run 2", True)]
        assert cmds._unwritten == []

    on_server(tmp_path, scenario)


def test_a_folder_set_aside_and_not_removed_goes_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder is renamed aside first and removed after: what a crash (or a file the
    server may not remove) left there is removed when the server starts again."""

    def cannot_remove(path: Path) -> None:
        raise PermissionError(13, "Permission denied")

    async def first(server: FLServer, cmds: AdminCommands) -> None:
        finished_run(server, 2)
        server.set_run_number(3)
        with monkeypatch.context() as patch:
            patch.setattr(shutil, "rmtree", cannot_remove)
            reply = await confirmed(cmds, "delete_run 2")
        (aside,) = server.store.deleting.iterdir()
        assert reply.ok and reply.text.splitlines()[1] == (
            f"Part of its folder could not be removed (Permission denied); the server "
            f"removes {aside} at its next start."
        )
        assert aside.name.startswith("run_2.") and (aside / "models").is_dir()
        assert not (tmp_path / "run_2").exists() and history(server, 2) == (None, 0, [], [])
        listed = await execute(cmds, "list_runs")
        assert [r["run_number"] for r in listed.data["runs"]] == [3]

    async def then(server: FLServer, cmds: AdminCommands) -> None:
        assert list(server.store.deleting.iterdir()) == []
        assert (tmp_path / "run_3").is_dir()

    on_server(tmp_path, first)
    on_server(tmp_path, then)
