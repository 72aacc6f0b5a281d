"""flclientd.agent: what an admin reads when a command reaches a client malformed, or fails
in a way the client did not foresee: a sentence, never an exception's class name."""

from __future__ import annotations

import asyncio
import errno
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from flclientd import agent as agent_module
from flclientd import connection as connection_module
from flclientd.agent import FINAL_MODEL, Agent
from flclientd.device import DeviceInfo
from flclientd.runcontext import RunContext
from flclientd.runner import TrainingProcess, WorkerFailed
from flclientd.sitestate import SiteState
from flclientd.worker.protocol import WorkerInfo
from flcore import appreview
from flcore import status as st
from flcore.appconfig import ClientAppConfig
from flcore.federation import Closed, Command, CommandResult, RunEnded, StatusChanged
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK
from flcore.progress import TransferStalled
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.startup import STARTUP_DIR, load_client
from flcore.tensorfile import Manifest, TensorSpec
from flcore.tls import TlsFiles
from flcore.wire import WireError, manifest_to_proto
from fldev.cluster import APPS
from fldev.poll import wait_until_async
from provision import extract_kit


def _agent(provisioned_workspace: Any, tmp_path: Path) -> Agent:
    workspace = tmp_path / "site-a"
    kit = provisioned_workspace.kit("site-a")
    extract_kit(kit, provisioned_workspace.password("site-a"), workspace)
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / STARTUP_DIR)
    return Agent(workspace, startup, files, None, DeviceInfo("cpu", 0), None)


def run_entries(agent: Agent) -> list[str]:
    """What the site's run folders hold, as paths from its workspace."""
    return sorted(
        p.relative_to(agent.workspace).as_posix() for p in agent.workspace.glob("run_*/*")
    )


def _answer(
    provisioned_workspace: Any,
    tmp_path: Path,
    command: Command,
    prepare: Callable[[Agent], None] = lambda _: None,
) -> CommandResult:
    """Build an agent on a real kit (inside the loop, as the daemon does) and let it answer
    (its answer follows the statuses it changed on the way)."""

    async def run() -> CommandResult:
        agent = _agent(provisioned_workspace, tmp_path)
        prepare(agent)
        try:
            await agent._command(command)
            while not isinstance(sent := agent.uplink._outbox.get_nowait(), CommandResult):
                pass  # the statuses the command changed
            return sent
        finally:
            await agent.conn.close()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("name", "args", "words"),
    [
        ("start", {}, "start: the server sent no run_number;"),
        (
            "start",
            {"run_number": "1"},
            "start: the server sent run_number '1', which is not a whole",
        ),
        ("start", {"run_number": 1, "gpus": True}, "start: the server sent gpus 'True', which is"),
        ("deploy", {"run_number": 1}, "deploy: the server sent no app;"),
        (
            "deploy",
            {"run_number": 1, "app": 7},
            "deploy: the server sent app '7', which is not text",
        ),
    ],
)
def test_a_malformed_argument_gets_a_sentence(
    provisioned_workspace: Any, tmp_path: Path, name: str, args: dict[str, Any], words: str
) -> None:
    result = _answer(provisioned_workspace, tmp_path, Command("c1", name, args))
    assert not result.ok and result.text.startswith(words)
    assert "same flstack version" in result.text and "KeyError" not in result.text


@pytest.mark.parametrize(("name", "number"), [("deploy", -3), ("deploy", 0), ("start", 10**12)])
def test_a_run_number_no_server_could_have_set_is_refused_before_a_folder_is_made(
    provisioned_workspace: Any, tmp_path: Path, name: str, number: int
) -> None:
    """It names the site's folders (run_-3/): a server sends only what set_run_number took."""
    args = {"run_number": number, "app": "digits"}
    result = _answer(provisioned_workspace, tmp_path, Command("c1", name, args))
    assert not result.ok
    assert result.text == (
        f"{name}: the server sent run_number {number}, which is no run number (1 to 999999999)"
    )
    assert not list((tmp_path / "site-a").glob("run_*"))


def test_an_unforeseen_failure_is_a_sentence_and_its_traceback_stays_in_the_log(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> dict[str, Any]:
        raise KeyError("run_number")

    def break_status(agent: Agent) -> None:
        agent.status_data = broken  # type: ignore[method-assign]

    with caplog.at_level(logging.ERROR, "flclientd.agent"):
        command = Command("c1", "check_status", {})
        result = _answer(provisioned_workspace, tmp_path, command, break_status)
    assert not result.ok
    assert result.text == (
        "the client could not carry out check_status because of an unexpected error; "
        "the client's log has the details"
    )
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and record.exc_info[0] is KeyError


class StoppingChild:
    """An idle training child on its way out: it exits once the test lets it."""

    busy = False

    def __init__(self) -> None:
        self.stopping = False
        self.gone = asyncio.Event()

    async def stop(self) -> None:
        self.stopping = True
        await self.gone.wait()

    def kill(self) -> None:
        self.gone.set()

    async def wait(self) -> None:
        await self.gone.wait()


def test_a_start_right_after_the_server_ended_the_run_waits_for_the_end(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The server ends a run, and an admin starts the next one at once: the site's training
    child is still stopping. The start waits for it rather than answer 'already training'."""

    async def run() -> CommandResult:
        agent = _agent(provisioned_workspace, tmp_path)
        try:
            agent.app_dir(2).mkdir(parents=True)
            child = StoppingChild()
            agent.worker = child  # type: ignore[assignment]
            agent.status = st.ClientStatus(status=st.STARTED, run_number=1)
            agent._dispatch(RunEnded(1, st.STOPPED, "finished"))
            start = asyncio.ensure_future(agent._command(Command("c1", "start", {"run_number": 2})))
            await wait_until_async(lambda: child.stopping, 5, "the child to be asked to stop")
            assert not start.done()
            child.gone.set()
            await start
            results = []
            while not agent.uplink._outbox.empty():
                sent = agent.uplink._outbox.get_nowait()
                if isinstance(sent, CommandResult):
                    results.append(sent)
            (result,) = results
            return result
        finally:
            await agent._stop_worker(graceful=False)
            await agent.conn.close()

    result = asyncio.run(run())
    assert result.ok, result.text
    assert result.text == "Starting the client..."


def test_aborting_a_site_paused_by_a_full_disk_leaves_no_error_on_its_row(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The pause's reason was the state of a run that is gone once the site is aborted."""

    async def run() -> st.ClientStatus:
        agent = _agent(provisioned_workspace, tmp_path)
        try:
            child = StoppingChild()
            child.gone.set()
            agent.worker = child  # type: ignore[assignment]
            agent.status = st.ClientStatus(
                status=st.PAUSED, run_number=1, error="client disk full: /data"
            )
            await agent._command(Command("c1", "abort", {}))
            return agent.status
        finally:
            await agent._stop_worker(graceful=False)
            await agent.conn.close()

    status = asyncio.run(run())
    assert (status.status, status.error) == (st.STOPPED, "")


def test_a_deploy_whose_app_download_stalls_fails_with_the_reason(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """A stalled app download was "an unexpected error" (the stall was not among the
    deploy's failures), and the staging folder is gone with it."""
    stalled = "download of app digits: nothing moved for 60s; given up"

    async def stall(run_number: int, app: str, staging: Path) -> None:
        staging.mkdir()
        raise TransferStalled(stalled)

    def stalling(agent: Agent) -> None:
        agent.conn.get_app = stall  # type: ignore[method-assign]

    command = Command("c1", "deploy", {"run_number": 1, "app": "digits"})
    result = _answer(provisioned_workspace, tmp_path, command, stalling)
    assert not result.ok
    assert result.text == f"deploy failed: {stalled}"
    assert [p.name for p in (tmp_path / "site-a" / "run_1").iterdir()] == []


def _logins_refused(
    provisioned_workspace: Any, tmp_path: Path, refusal: Exception, caplog: Any
) -> tuple[int, int, list[str]]:
    """The uplink's exit code, its login attempts and what it logged, when every login
    raises ``refusal`` (the third stops the daemon)."""

    async def run() -> tuple[int, int]:
        agent = _agent(provisioned_workspace, tmp_path)
        tries = 0

        async def login(token: str, info: object) -> object:
            nonlocal tries
            tries += 1
            if tries == 3:
                agent.uplink.stop()
            raise refusal

        agent.conn.login = login  # type: ignore[method-assign,assignment]
        try:
            code = await asyncio.wait_for(agent.uplink.run(), 10)
        finally:
            await agent.conn.close()
        return code, tries

    with caplog.at_level(logging.WARNING, "flclientd.uplink"):
        code, tries = asyncio.run(run())
    return code, tries, [r.getMessage() for r in caplog.records if r.name == "flclientd.uplink"]


def test_a_login_reply_the_site_cannot_use_is_logged_and_tried_again(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reply naming an instance that is none of this kit's is no login: the uplink says why
    and logs in again, as after a lost link, instead of ending on an exception."""
    refused = "the server named this client 'x/../../local', which is no instance of site-a"
    code, tries, said = _logins_refused(provisioned_workspace, tmp_path, WireError(refused), caplog)
    assert (code, tries) == (0, 3)
    assert said == [f"the server's login reply cannot be used: {refused}"] * 3


def test_a_kit_at_its_instance_limit_tries_again_and_is_not_refused_for_good(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An instance that crashed counts until its heartbeat timeout: the restarted one is told
    "no more now" and tries again, where "refused" would end it with exit 2 (which systemd
    does not restart) and leave the site down."""
    full = "kit site-a already runs 4 instances, the most this server allows"
    metadata = grpc.aio.Metadata()
    busy = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, metadata, metadata, full)
    code, tries, said = _logins_refused(provisioned_workspace, tmp_path, busy, caplog)
    assert (code, tries) == (0, 3)
    assert said == [f"the server takes no more now: {full}; trying again"] * 3


def test_a_deploy_removes_what_a_deploy_cut_off_by_a_crash_left(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """A half-received app in its staging folder: nothing read or removed it, up to 1 GiB a
    crash. The previous copy (.app_site-a.old) is a crash's too, but it is put back, not
    removed; another instance's staging is its own."""
    run = tmp_path / "site-a" / "run_1"
    stalled = "download of app digits: nothing moved for 60s; given up"
    mine, theirs, previous = (
        run / f".app_site-a.{'a' * 32}",
        run / f".app_site-a_1.{'b' * 32}",
        run / ".app_site-a.old",
    )

    def prepare(agent: Agent) -> None:
        for folder in (mine, theirs, previous):
            (folder / "config").mkdir(parents=True)

        async def stall(run_number: int, app: str, staging: Path) -> None:
            raise TransferStalled(stalled)

        agent.conn.get_app = stall  # type: ignore[method-assign]

    command = Command("c1", "deploy", {"run_number": 1, "app": "digits"})
    result = _answer(provisioned_workspace, tmp_path, command, prepare)
    assert result.text == f"deploy failed: {stalled}"
    assert sorted(p.name for p in run.iterdir()) == [".app_site-a.old", ".app_site-a_1." + "b" * 32]


@pytest.mark.parametrize(
    "app",
    ["x" * 1_000_000, "../local", "digits\n<3>forged", ""],
    ids=["long", "path", "newline", "empty"],
)
def test_a_deploy_of_an_app_name_the_server_never_takes_is_refused_before_a_download(
    provisioned_workspace: Any, tmp_path: Path, app: str
) -> None:
    """The name goes into the site's status, its log and the answer: a megabyte of it cut
    the site off its control stream."""
    fetched: list[str] = []

    async def get_app(run_number: int, app: str, staging: Path) -> None:
        fetched.append(app)

    def prepare(agent: Agent) -> None:
        agent.conn.get_app = get_app  # type: ignore[method-assign]

    command = Command("c1", "deploy", {"run_number": 1, "app": app})
    result = _answer(provisioned_workspace, tmp_path, command, prepare)
    assert not result.ok and result.text.startswith("deploy: the app name ")
    assert "must be 1-63 letters, digits" in result.text and len(result.text) < 300
    assert fetched == [] and not (tmp_path / "site-a" / "run_1").exists()


def test_the_status_s_texts_are_bounded_whatever_they_quote(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The status goes with every heartbeat: a text of megabytes (a server's message quoted
    in an error) made each exceed the message limit."""

    async def run() -> tuple[st.ClientStatus, st.ClientStatus]:
        agent = _agent(provisioned_workspace, tmp_path)
        try:
            agent._set_status(
                status=st.FAILED, error="e" * 5_000_000, traceback="t" * 5_000_000 + "end"
            )
            agent._set_status(app="a" * 5_000_000)
            failed = agent._status_now()
            agent._set_status(status=st.WAITING_APPROVAL, detail="d" * 5_000_000)
            return failed, agent.status
        finally:
            await agent.conn.close()

    failed, waiting = asyncio.run(run())
    assert 0 < len(failed.error) <= MAX_TEXT and 0 < len(waiting.detail) <= MAX_TEXT
    assert len(failed.traceback) <= MAX_TRACEBACK and failed.traceback.endswith("end")
    assert 0 < len(failed.app) <= MAX_LABEL


def test_what_the_server_says_is_logged_on_one_line_and_cut_short(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under journald a newline followed by <3> in a reason wrote a forged error line of
    the server's choosing into the site's journal; a megabyte of it filled the log."""
    forged = "finished\n<3>flclientd.agent: site data copied to attacker" + "x" * 1_000_000

    async def run() -> str:
        agent = _agent(provisioned_workspace, tmp_path)
        try:
            agent._dispatch(RunEnded(7, st.STOPPED, forged))
            agent._dispatch(Closed(forged))
            await agent._command(Command("c1", "format\n<3>disk" * 100_000, {}))
            sent = agent.uplink._outbox.get_nowait()
            assert isinstance(sent, CommandResult)
            return sent.text
        finally:
            await agent.conn.close()

    with caplog.at_level(logging.INFO, "flclientd.agent"):
        refused = asyncio.run(run())
    assert refused.startswith("unknown command 'format\\n<3>disk") and len(refused) < 200
    said = [r.getMessage() for r in caplog.records if r.name == "flclientd.agent"]
    assert len(said) == 2
    assert said[0].startswith("server ended run 7: finished\\n<3>flclientd.agent: site data")
    for line in said:
        assert "\n" not in line and len(line) <= 2 * MAX_TEXT


@pytest.mark.parametrize(
    ("gpus", "device", "cpu_mgpu", "words"),
    [
        (-1, DeviceInfo("cpu", 0), False, "start: the server sent gpus -1, which is no GPU count"),
        (3, DeviceInfo("cuda", 2), False, "this site has 2 GPU(s); start_mgpu asked for 3"),
        (10**6, DeviceInfo("cpu", 0), True, "this site trains on its "),
    ],
)
def test_a_gpu_count_the_site_cannot_run_is_refused_and_not_kept(
    provisioned_workspace: Any,
    tmp_path: Path,
    gpus: int,
    device: DeviceInfo,
    cpu_mgpu: bool,
    words: str,
) -> None:
    """-1 was kept for the rejoin, and any count went to torchrun's --nproc_per_node."""

    def prepare(agent: Agent) -> None:
        agent.device = device
        agent.startup = replace(agent.startup, allow_cpu_mgpu=cpu_mgpu)
        agent.app_dir(1).mkdir(parents=True)

    command = Command("c1", "start", {"run_number": 1, "gpus": gpus})
    result = _answer(provisioned_workspace, tmp_path, command, prepare)
    assert not result.ok and result.text.startswith(words)
    state = SiteState.load(tmp_path / "site-a" / "state" / "flclientd_site-a.json")
    assert (state.training_run, state.gpus) == (0, 0)


def test_two_deploys_of_one_run_at_once_take_turns(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The second removed the first's staging folder, as if a crash had left it, while the
    first was still receiving into it: the first failed for no fault of the app."""
    first_in = asyncio.Event()
    go_on = asyncio.Event()

    async def get_app(run_number: int, app: str, staging: Path) -> None:
        shutil.copytree(APPS / "digits_fedavg", staging)
        if not first_in.is_set():
            first_in.set()
            await go_on.wait()

    async def run() -> tuple[list[CommandResult], Agent]:
        agent = _agent(provisioned_workspace, tmp_path)
        agent.conn.get_app = get_app  # type: ignore[method-assign]
        try:
            args = {"run_number": 1, "app": "digits"}
            first = asyncio.ensure_future(agent._command(Command("c1", "deploy", args)))
            await asyncio.wait_for(first_in.wait(), 10)
            second = asyncio.ensure_future(agent._command(Command("c2", "deploy", args)))
            await asyncio.sleep(0.2)
            go_on.set()
            await asyncio.gather(first, second)
            results = [agent.uplink._outbox.get_nowait() for _ in range(2)]
            return [r for r in results if isinstance(r, CommandResult)], agent
        finally:
            await agent.conn.close()

    results, agent = asyncio.run(run())
    assert [(r.command_id, r.ok, r.text) for r in results] == [
        ("c1", True, "digits deployed."),
        ("c2", True, "digits deployed."),
    ]
    assert agent._deploys == {}, "a lock is kept only while a deploy holds or awaits it"


def test_a_start_puts_back_the_app_a_crash_in_the_middle_of_a_deploy_set_aside(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """A crash between the two renames of a deploy left only .app_<instance>.old: the site
    said no app was deployed for the run."""

    def prepare(agent: Agent) -> None:
        shutil.copytree(APPS / "digits_fedavg", agent.app_dir(1).with_name(".app_site-a.old"))

    result = _answer(
        provisioned_workspace, tmp_path, Command("c1", "start", {"run_number": 1}), prepare
    )
    assert (result.ok, result.text) == (True, "Starting the client...")
    assert (tmp_path / "site-a" / "run_1" / "app_site-a" / "config").is_dir()


class _Child:
    """A training child as a pause sees it: running, or ended."""

    def __init__(self, running: bool) -> None:
        self.running = running


def _read_only(path: Path) -> OSError:
    return OSError(errno.EROFS, "Read-only file system", str(path))


def test_a_step_a_read_only_disk_stopped_is_tried_again_only_after_a_wait(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only disk reports free space: the step was tried again at once, over and over,
    and nothing else ran (no heartbeat, no abort, no SIGTERM)."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)

    async def run() -> list[bool]:
        agent = _agent(provisioned_workspace, tmp_path)
        others_ran = asyncio.Event()
        seen: list[bool] = []

        async def step() -> None:
            seen.append(others_ran.is_set())
            if len(seen) == 1:
                asyncio.get_running_loop().call_soon(others_ran.set)
                raise _read_only(tmp_path / "update_round_3.safetensors")

        agent.worker = _Child(running=True)  # type: ignore[assignment]
        try:
            await agent._despite_disk_faults(step, tmp_path)
        finally:
            await agent.conn.close()
        return seen

    assert asyncio.run(run()) == [False, True]


def test_a_paused_site_goes_on_only_once_its_folder_takes_a_write(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Free space alone said nothing of a read-only disk."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)
    probes: list[Path] = []
    write_bytes = Path.write_bytes

    def probed(path: Path, data: bytes) -> int:
        probes.append(path)
        if len(probes) < 3:
            raise _read_only(path)
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", probed)

    async def run() -> int:
        agent = _agent(provisioned_workspace, tmp_path)
        calls = 0

        async def step() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise _read_only(tmp_path / "global_round_0.safetensors")
            assert len(probes) == 3

        agent.worker = _Child(running=True)  # type: ignore[assignment]
        try:
            await agent._despite_disk_faults(step, tmp_path)
        finally:
            await agent.conn.close()
        return calls

    assert asyncio.run(run()) == 2
    assert all(p.parent == tmp_path and p.name.endswith(".tmp") for p in probes)
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_abort_on_a_read_only_disk_stops_the_site(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round files that could not be deleted raised, and the site stayed in `training
    stopping` for good."""
    unlink = Path.unlink

    def read_only(path: Path, missing_ok: bool = False) -> None:
        if "_round_" in path.name:
            raise _read_only(path)
        unlink(path, missing_ok)

    async def run() -> st.ClientStatus:
        agent = _agent(provisioned_workspace, tmp_path)
        try:
            work = agent.run_dir(1) / "work_site-a"
            models = agent.run_dir(1) / "models_site-a"
            models.mkdir(parents=True)
            (models / "update_round_3.safetensors").write_bytes(b"update")
            agent.context = RunContext(1, agent.app_dir(1), work, 1, ClientAppConfig())
            agent.status = st.ClientStatus(status=st.STARTED, run_number=1)
            monkeypatch.setattr(Path, "unlink", read_only)
            await agent._command(Command("c1", "abort", {}))
            return agent.status
        finally:
            await agent.conn.close()

    assert asyncio.run(run()).status == st.STOPPED


@pytest.mark.parametrize("ending", ["run ended", "abort"])
def test_a_site_paused_by_a_full_disk_still_takes_part_in_cross_site_validation(
    provisioned_workspace: Any, tmp_path: Path, ending: str
) -> None:
    """It stopped instead, and the other sites waited for its model until their timeout."""

    async def run() -> list[int]:
        agent = _agent(provisioned_workspace, tmp_path)
        crossvals: list[int] = []
        went = asyncio.Event()

        async def crossval(run: RunContext) -> None:
            crossvals.append(run.run_number)
            went.set()

        agent._crossval = crossval  # type: ignore[method-assign]
        try:
            work = agent.run_dir(1) / "work_site-a"
            config = ClientAppConfig(cross_validate=True)
            agent.context = RunContext(1, agent.app_dir(1), work, 1, config)
            agent.status = st.ClientStatus(
                status=st.PAUSED, run_number=1, error="client disk full: /data"
            )
            if ending == "abort":
                await agent._command(Command("c1", "abort", {}))
            else:
                agent._dispatch(RunEnded(1, st.STOPPED, "finished"))
            await asyncio.wait_for(went.wait(), 5)
            return crossvals
        finally:
            await agent.conn.close()

    assert asyncio.run(run()) == [1]


def test_a_child_a_full_disk_ended_is_started_again_before_the_step_is(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under start_mgpu torchrun ends with its rank 0: the step went to the dead child and the
    run failed as "training process exited with code 1", the disk never mentioned."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)

    async def run() -> list[bool]:
        agent = _agent(provisioned_workspace, tmp_path)
        used: list[bool] = []

        async def launch(run: RunContext) -> Any:
            agent.worker = _Child(running=True)  # type: ignore[assignment]
            return agent.worker

        async def step() -> None:
            assert agent.worker is not None
            used.append(agent.worker.running)
            if len(used) == 1:
                agent.worker = _Child(running=False)  # type: ignore[assignment]
                raise WorkerFailed("rank 0 failed", "", disk_fault="disk full: /data")

        agent._launch = launch  # type: ignore[method-assign]
        agent.worker = _Child(running=True)  # type: ignore[assignment]
        agent.context = RunContext(1, agent.app_dir(1), tmp_path, 2, ClientAppConfig())
        try:
            await agent._despite_disk_faults(step, tmp_path)
        finally:
            await agent.conn.close()
        return used

    assert asyncio.run(run()) == [True, True]


@dataclass
class _Relaunched:
    """What one round's work did when its child ended in a pause and was started again."""

    launches: int
    steps: int
    statuses: list[str]
    raised: WorkerFailed | None


def _relaunched(
    provisioned_workspace: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    starts: Callable[[int], Exception | None],
) -> _Relaunched:
    """A round whose first step a full disk stops, ending the child (torchrun's rank 0);
    ``starts`` says how the n-th start of a new child goes (None: it starts)."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)

    async def run() -> _Relaunched:
        agent = _agent(provisioned_workspace, tmp_path)
        launches = steps = 0

        async def launch(run: RunContext) -> Any:
            nonlocal launches
            launches += 1
            error = starts(launches)
            if error is not None:
                raise error
            agent.worker = _Child(running=True)  # type: ignore[assignment]
            return agent.worker

        async def step() -> None:
            nonlocal steps
            steps += 1
            assert agent.worker is not None and agent.worker.running
            if steps == 1:
                agent.worker = _Child(running=False)  # type: ignore[assignment]
                raise WorkerFailed("rank 0 failed", "", disk_fault="disk full: /data")

        agent._launch = launch  # type: ignore[method-assign]
        agent.worker = _Child(running=True)  # type: ignore[assignment]
        agent.context = RunContext(1, agent.app_dir(1), tmp_path, 2, ClientAppConfig())
        agent.status = st.ClientStatus(status=st.STARTED, run_number=1)
        raised = None
        try:
            await agent._despite_disk_faults(step, tmp_path)
        except WorkerFailed as exc:
            raised = exc
        finally:
            await agent.conn.close()
        sent = []
        while not agent.uplink._outbox.empty():
            sent.append(agent.uplink._outbox.get_nowait())
        statuses = [m.status.status for m in sent if isinstance(m, StatusChanged)]
        return _Relaunched(launches, steps, statuses, raised)

    return asyncio.run(run())


def test_a_new_child_a_full_disk_stops_at_its_start_pauses_the_site_again(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk filled again while the new child started (an app that writes a cache as it
    starts): the whole run failed at this site instead of pausing again."""
    failures: dict[int, Exception] = {
        1: WorkerFailed("client disk full: cache", "", disk_fault="disk full: cache"),
        2: _read_only(tmp_path / "work"),  # a start of the daemon's own that cannot write
    }
    done = _relaunched(provisioned_workspace, tmp_path, monkeypatch, failures.get)
    assert (done.raised, done.launches, done.steps) == (None, 3, 2)
    assert done.statuses == [st.PAUSED, st.PAUSED, st.PAUSED, st.STARTED]


def test_a_new_child_that_fails_to_start_for_another_reason_fails_the_run_saying_so(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed with the child's words alone, as if the run had just been started."""
    broken = WorkerFailed("train.npz: no such file in DATA_ROOT", "where it failed")
    done = _relaunched(provisioned_workspace, tmp_path, monkeypatch, lambda _: broken)
    assert done.raised is not None and (done.launches, done.steps) == (1, 1)
    assert str(done.raised) == (
        "the training process could not be started again after the site was paused: "
        "train.npz: no such file in DATA_ROOT"
    )
    assert done.raised.traceback == "where it failed"


def test_a_child_a_disk_fault_stops_at_every_start_is_started_a_bounded_number_of_times(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault the probe of the run's folder does not see (/tmp full) started a child every
    few seconds for good."""
    full = WorkerFailed("client disk full: /tmp", "", disk_fault="disk full: /tmp")
    done = _relaunched(provisioned_workspace, tmp_path, monkeypatch, lambda _: full)
    assert (done.launches, done.steps) == (agent_module.MAX_RELAUNCHES, 1)
    assert done.raised is not None and done.raised.disk_fault == ""
    assert str(done.raised) == (
        f"the training process was started again {agent_module.MAX_RELAUNCHES} times after the "
        "disk had room, and a disk fault stopped it each time (last: client disk full: /tmp); "
        "free room where that says, then start the client again"
    )


def test_a_deploy_for_another_run_leaves_the_app_the_site_trains_on_its_row(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """The row named the app just deployed for run 2 while run 1 trained another."""

    async def get_app(run_number: int, app: str, staging: Path) -> None:
        shutil.copytree(APPS / "digits_fedavg", staging)

    def training(agent: Agent) -> None:
        agent.conn.get_app = get_app  # type: ignore[method-assign]
        agent.status = st.ClientStatus(status=st.STARTED, run_number=1, app="app-a")
        statuses.append(agent.status)

    statuses: list[st.ClientStatus] = []
    command = Command("c1", "deploy", {"run_number": 2, "app": "digits"})
    result = _answer(provisioned_workspace, tmp_path, command, training)
    assert (result.ok, statuses[0].app) == (True, "app-a")


def test_a_deploy_removes_the_apps_the_site_no_longer_keeps(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every deploy left its app at the site for good: months of runs, months of apps."""

    async def get_app(run_number: int, app: str, staging: Path) -> None:
        shutil.copytree(APPS / "digits_fedavg", staging)

    async def run() -> Agent:
        agent = _agent(provisioned_workspace, tmp_path)
        agent.startup = replace(agent.startup, keep_deployed_apps=1)
        agent.conn.get_app = get_app  # type: ignore[method-assign]
        for number in range(1, 6):
            shutil.copytree(APPS / "digits_fedavg", agent.app_dir(number))
            (agent.app_dir(number) / ".app_name").write_text(f"app-{number}\n")
        final = agent.run_dir(3) / "models_site-a" / FINAL_MODEL
        final.parent.mkdir()
        final.write_bytes(b"kept")
        shutil.copytree(APPS / "digits_fedavg", agent.run_dir(3) / "app_site-a_2")
        # Run 1 is the site's last: `start client` continues it. Run 2 is being deployed again.
        agent.status = st.ClientStatus(status=st.STOPPED, run_number=1)
        agent._deploys[agent.app_dir(2)] = (asyncio.Lock(), 1)
        try:
            await agent._command(Command("c1", "deploy", {"run_number": 6, "app": "digits"}))
            await asyncio.gather(*agent._tasks)
            return agent
        finally:
            await agent.conn.close()

    caplog.set_level(logging.INFO, logger="flclientd.agent")
    agent = asyncio.run(run())
    left = run_entries(agent)
    assert left == [
        "run_1/app_site-a",
        "run_2/app_site-a",
        "run_3/app_site-a_2",
        "run_3/models_site-a",
        "run_5/app_site-a",
        "run_6/app_site-a",
    ]
    assert not list(agent.workspace.glob("run_*/.app_*"))
    removed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("removed")]
    assert sorted(removed) == [
        f"removed the app of run {n} (app-{n}): this site keeps the apps of the runs it uses "
        "and of the 1 newest others (keep_deployed_apps)"
        for n in (3, 4)
    ]


def test_a_start_removes_what_killed_children_left_half_written(
    provisioned_workspace: Any, tmp_path: Path
) -> None:
    """Nothing removed them, and each killed child added up to two models' worth."""

    async def run() -> list[str]:
        agent = _agent(provisioned_workspace, tmp_path)
        shutil.copytree(APPS / "digits_fedavg", agent.app_dir(1))
        work = agent.run_dir(1) / "work_site-a"
        models = agent.run_dir(1) / "models_site-a"
        for kept in (work / "best_local_model.safetensors", models / FINAL_MODEL):
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_bytes(b"kept")
        (work / ".best_local_model.safetensors.x1y2.tmp").write_bytes(b"cut off")
        (models / ".update_round_3.safetensors.a1b2.tmp").write_bytes(b"cut off")

        async def launch(run: RunContext) -> Any:
            raise WorkerFailed("not started in this test", "")

        agent._launch = launch  # type: ignore[method-assign]
        try:
            await agent._run_training(1, agent.app_dir(1), 1)
            return sorted(p.name for folder in (work, models) for p in folder.iterdir())
        finally:
            await agent.conn.close()

    assert asyncio.run(run()) == ["best_local_model.safetensors", FINAL_MODEL]


def test_a_site_whose_first_download_found_the_disk_full_waits_for_room_for_that_model(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round 0's model was never stored, so the site knew of no model's size and went on
    at the first megabyte free: the download failed again, and again, with no wait."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)
    manifest = Manifest((TensorSpec("w", "F32", (1 << 20,)),))
    frees = [2 * manifest.total_bytes - 1, 2 * manifest.total_bytes]
    asked: list[int] = []

    def free_bytes(folder: Path) -> int:
        asked.append(frees[min(len(asked), 1)])
        return asked[-1]

    monkeypatch.setattr(agent_module, "free_bytes", free_bytes)

    def full_disk(target: Path, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(connection_module, "SpoolWriter", full_disk)

    class Stub:
        def GetModel(self, request: object) -> Any:
            async def stream() -> Any:
                yield fed_pb2.ModelMessage(manifest=manifest_to_proto(manifest))

            return stream()

    async def run() -> int:
        agent = _agent(provisioned_workspace, tmp_path)
        agent.conn.stub = Stub()  # type: ignore[assignment]
        calls = 0

        async def download() -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                await agent.conn.get_model(1, 0, tmp_path / "global_round_0.safetensors")

        agent.worker = _Child(running=True)  # type: ignore[assignment]
        try:
            await agent._despite_disk_faults(download, tmp_path)
        finally:
            await agent.conn.close()
        return calls

    assert asyncio.run(run()) == 2
    assert asked == [2 * manifest.total_bytes - 1, 2 * manifest.total_bytes]


class _Started(_Child):
    """A training child that got ready, as a run's start and its end see it."""

    info = WorkerInfo("cpu", 0, 1, 10, 5)
    busy = False

    def __init__(self) -> None:
        super().__init__(running=True)

    def kill(self) -> None:
        self.running = False

    async def wait(self) -> None:
        return None

    async def stop(self) -> None:
        self.running = False


def _on_a_failing_disk(monkeypatch: pytest.MonkeyPatch, fault: str) -> list[int]:
    """The first start of a run's child stops on the disk: the child's own start (``child``:
    a full disk), or the review of the app before it (``review``: an I/O error). Returns the
    count of the child's starts, updated as they come."""
    monkeypatch.setattr(agent_module, "DISK_CHECK_S", 0.0)
    starts = [0]
    reviews = 0

    async def start(**kwargs: Any) -> _Started:
        starts[0] += 1
        if fault == "child" and starts[0] == 1:
            raise WorkerFailed("client disk full: cache", "", disk_fault="disk full: cache")
        return _Started()

    def review(root: Path, name: str) -> Any:
        nonlocal reviews
        reviews += 1
        if fault == "review" and reviews == 1:
            config = root / "config" / "config_fed_client.json"
            raise OSError(errno.EIO, "Input/output error", str(config))
        return appreview.review_app(root, name)

    monkeypatch.setattr(TrainingProcess, "start", start)
    monkeypatch.setattr(agent_module, "review_app", review)
    return starts


def _statuses(agent: Agent) -> list[st.ClientStatus]:
    """What the site told the server of itself so far."""
    sent = []
    while not agent.uplink._outbox.empty():
        sent.append(agent.uplink._outbox.get_nowait())
    return [m.status for m in sent if isinstance(m, StatusChanged)]


@pytest.mark.parametrize("fault", ["child", "review"])
@pytest.mark.parametrize("how", ["start", "rejoin"])
def test_a_disk_fault_at_a_run_s_first_start_pauses_the_site_and_it_goes_on(
    provisioned_workspace: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
    fault: str,
) -> None:
    """Only a start after a pause paused again: the first one (and a rejoin's) failed the run
    at the site, and so did an I/O error while the app was reviewed."""
    starts = _on_a_failing_disk(monkeypatch, fault)

    async def run() -> list[st.ClientStatus]:
        agent = _agent(provisioned_workspace, tmp_path)
        shutil.copytree(APPS / "digits_fedavg", agent.app_dir(1))
        try:
            if how == "start":
                await agent._command(Command("c1", "start", {"run_number": 1}))
            else:
                agent.store.update(training_run=1)
                agent.uplink.connected.set()
                await agent._rejoin(1, 0)
            await wait_until_async(
                lambda: agent.status.status in (st.STARTED, st.FAILED), 10, "the run's start"
            )
            await agent._stop_worker(graceful=False)
            return _statuses(agent)
        finally:
            await agent.conn.close()

    statuses = asyncio.run(run())
    said = [(s.status, s.error.split(": ")[0]) for s in statuses]
    assert said == [
        (st.STARTING, ""),
        (st.PAUSED, "client disk full" if fault == "child" else "client disk I/O error"),
        (st.STARTING, ""),
        (st.STARTED, ""),
    ]
    assert starts == [2 if fault == "child" else 1]


def test_a_disk_fault_at_the_start_of_cross_site_validation_pauses_the_site_and_it_goes_on(
    provisioned_workspace: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child that an abort stopped is started again for cross-site validation: a full
    disk at that start failed the site's part in it instead of pausing."""
    starts = _on_a_failing_disk(monkeypatch, "child")

    async def run() -> list[st.ClientStatus]:
        agent = _agent(provisioned_workspace, tmp_path)
        shutil.copytree(APPS / "digits_fedavg", agent.app_dir(1))
        validated: list[Any] = []

        async def crossval(run: RunContext, worker: Any) -> None:
            validated.append(worker)

        agent.crossval.run = crossval  # type: ignore[method-assign]
        work = agent.run_dir(1) / "work_site-a"
        config = ClientAppConfig(cross_validate=True)
        agent.context = RunContext(1, agent.app_dir(1), work, 1, config)
        agent.status = st.ClientStatus(status=st.STARTED, run_number=1)
        try:
            await agent._command(Command("c1", "abort", {}))
            assert agent._work is not None
            await agent._work
            assert len(validated) == 1 and isinstance(validated[0], _Started)
            return _statuses(agent)
        finally:
            await agent.conn.close()

    statuses = asyncio.run(run())
    assert [(s.status, s.error[:17]) for s in statuses] == [
        (st.STOPPING, ""),
        (st.CROSS_VALIDATING, ""),
        (st.PAUSED, "client disk full:"),
        (st.CROSS_VALIDATING, ""),
        (st.STOPPED, ""),
    ]
    assert starts == [2]


def test_the_daemon_s_start_removes_what_a_crash_left_set_aside_and_the_apps_it_no_longer_keeps(
    provisioned_workspace: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash while a retired app was deleted left it as ``.app_<instance>.<hex>`` until the
    next deploy of that run, and a site that deployed nothing more kept every app."""
    aside = ".app_site-a." + "0123456789abcdef" * 2

    async def run() -> Agent:
        agent = _agent(provisioned_workspace, tmp_path)
        agent.startup = replace(agent.startup, keep_deployed_apps=1)
        workspace = agent.workspace
        for number in range(1, 6):
            shutil.copytree(APPS / "digits_fedavg", agent.app_dir(number))
        for cut_off in ("run_2", "run_4", "run_6"):  # run 6: its app was set aside, then the crash
            shutil.copytree(APPS / "digits_fedavg", workspace / cut_off / aside)
        others = [
            "run_2/.app_site-a_2." + "ab" * 16,  # another instance's
            "run_3/app_site-a_2",
            "run_1/.app_site-a.old",  # a deploy's swap cut off: a start puts it back
            "run_3/models_site-a",
            "run_4/work_site-a",
        ]
        for other in others:
            (workspace / other).mkdir()
        linked = tmp_path / "elsewhere"
        (linked / aside).mkdir(parents=True)
        (workspace / "run_7").symlink_to(linked)
        agent.store.update(training_run=1)  # the run it rejoins
        agent.uplink.connected.set()
        try:
            await agent._tidy_apps()
            await asyncio.gather(*agent._tasks)
            return agent
        finally:
            await agent.conn.close()

    caplog.set_level(logging.INFO, logger="flclientd.agent")
    agent = asyncio.run(run())
    left = run_entries(agent)
    assert left == [
        "run_1/.app_site-a.old",
        "run_1/app_site-a",
        "run_2/.app_site-a_2." + "ab" * 16,
        "run_3/app_site-a_2",
        "run_3/models_site-a",
        "run_4/work_site-a",
        "run_5/app_site-a",
        f"run_7/{aside}",
    ]
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("remov")]
    assert said[:3] == [
        f"removing run_{n}/{aside}, left by a deploy or a removal of an app that did not finish"
        for n in (2, 4, 6)
    ]
    assert sorted(said[3:]) == [
        f"removed the app of run {n} (no name recorded): this site keeps the apps of the runs "
        "it uses and of the 1 newest others (keep_deployed_apps)"
        for n in (2, 3, 4)
    ]
