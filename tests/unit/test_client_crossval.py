"""flclientd.crossval.CrossSiteValidation against a stand-in connection: what one bad model
does to a site's cross-site phase."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from flclientd import crossval as crossval_module
from flclientd.crossval import CrossSiteValidation
from flclientd.runcontext import RunContext
from flclientd.worker.protocol import WorkerInfo, WorkResult
from flcore.appconfig import ClientAppConfig
from flcore.federation import GLOBAL_OWNER, SubmitOutcome, TaskKind, TaskOffer, Verdict
from flcore.feed import MAX_TEXT
from flcore.tensorfile import TensorFileError

T = TypeVar("T")
MESSAGE_LIMIT = 4 * 1024 * 1024


class Uplink:
    """Always connected: each call is made once."""

    instance = "site-a"

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call()


class Conn:
    """Serves site-b's model as megabytes of an error, the global model as a model; refuses
    a report past the message limit as gRPC does, and postpones the first ``postponing``
    reports as a server with a full disk does."""

    def __init__(self, postponing: int = 0) -> None:
        self.cells: dict[str, str] = {}
        self.postponing = postponing
        self.reports = 0

    async def get_model(self, run_number: int, round: int, path: Path, owner: str) -> None:
        if owner == "site-b":
            raise ValueError("tensor " + "x" * 5_000_000)
        path.write_bytes(b"model")

    async def submit_metrics(
        self,
        run_number: int,
        round: int,
        metrics: dict[str, float],
        samples: int,
        error: str = "",
        owner: str = "",
    ) -> Verdict:
        if len(error.encode()) > MESSAGE_LIMIT:
            metadata = grpc.aio.Metadata()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, metadata, metadata, "larger than max"
            )
        self.reports += 1
        if self.reports <= self.postponing:
            return Verdict(SubmitOutcome.POSTPONED, "server disk full: state database")
        self.cells[owner] = error or f"{metrics}"
        return Verdict(SubmitOutcome.ACCEPTED, "recorded")


class Worker:
    best_local_model = None

    async def validate(self, model: Path) -> WorkResult:
        return WorkResult(10, {"accuracy": 0.9})


def test_a_model_whose_error_is_megabytes_long_fails_only_its_own_cell(tmp_path: Path) -> None:
    """The error quotes what the server sent: unbounded, its report exceeded the message
    limit, and the whole cross-site phase failed with it."""
    conn = Conn()
    crossval = CrossSiteValidation(Uplink(), conn)  # type: ignore[arg-type]
    crossval.offered(TaskOffer(1, -1, TaskKind.CROSS_VALIDATE, ("site-b", GLOBAL_OWNER), ()))
    run = RunContext(1, tmp_path / "app", tmp_path, 1, ClientAppConfig(cross_validate=True))
    worker: Any = Worker()
    asyncio.run(crossval.run(run, worker))
    assert set(conn.cells) == {"site-a", "site-b", GLOBAL_OWNER}
    assert conn.cells["site-b"].startswith("the model the server sent is unusable: tensor x")
    assert len(conn.cells["site-b"]) <= MAX_TEXT
    assert conn.cells[GLOBAL_OWNER] == "{'accuracy': 0.9}"


def test_owners_and_errors_from_the_server_are_logged_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A newline and <3> in an owner's name or an error forged journal lines."""
    forged = "site-c\n<3>flclientd.crossval: forged"
    crossval = CrossSiteValidation(Uplink(), Conn())  # type: ignore[arg-type]
    crossval.offered(TaskOffer(1, -1, TaskKind.CROSS_VALIDATE, ("site-b", forged), ()))
    run = RunContext(1, tmp_path / "app", tmp_path, 1, ClientAppConfig(cross_validate=True))
    worker: Any = Worker()
    with caplog.at_level(logging.INFO, "flclientd.crossval"):
        asyncio.run(crossval.run(run, worker))
    said = [r.getMessage() for r in caplog.records if r.name == "flclientd.crossval"]
    assert "cross-site validation of site-c\\n<3>flclientd.crossval: forged's model" in said[-1]
    for line in said:
        assert "\n" not in line and len(line) <= 2 * MAX_TEXT


def test_a_report_the_server_postponed_is_sent_again_until_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The site moved on from a postponed report, and its cell stayed empty for good."""
    monkeypatch.setattr(crossval_module, "POSTPONED_RETRY_S", 0.0)
    conn = Conn(postponing=2)
    crossval = CrossSiteValidation(Uplink(), conn)  # type: ignore[arg-type]
    run = RunContext(1, tmp_path / "app", tmp_path, 1, ClientAppConfig(cross_validate=True))
    asyncio.run(crossval._report(run, "site-b", {"acc": 0.5}, 10, ""))
    assert conn.reports == 3 and conn.cells == {"site-b": "{'acc': 0.5}"}


class Sharing(Conn):
    """Takes the best local model with the given verdicts in turn, or fails to read it."""

    def __init__(self, verdicts: list[SubmitOutcome], unreadable: Exception | None = None) -> None:
        super().__init__()
        self.verdicts = verdicts
        self.unreadable = unreadable
        self.uploads = 0

    async def submit_model(self, *args: object) -> Verdict:
        if self.unreadable is not None:
            raise self.unreadable
        self.uploads += 1
        return Verdict(self.verdicts[self.uploads - 1], "server disk full: models")


class Sharer(Worker):
    info = WorkerInfo("cpu", 0, 1, 10, 10)

    def __init__(self, best: Path) -> None:
        self.best_local_model = best  # type: ignore[assignment]


def _share(tmp_path: Path, conn: Sharing, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crossval_module, "POSTPONED_RETRY_S", 0.0)
    crossval = CrossSiteValidation(Uplink(), conn)  # type: ignore[arg-type]
    run = RunContext(1, tmp_path / "app", tmp_path, 1, ClientAppConfig(cross_validate=True))
    worker: Any = Sharer(tmp_path / "best_local_model.safetensors")
    asyncio.run(crossval._share(run, worker))


def test_a_best_local_model_the_server_postponed_is_sent_again_until_it_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It was logged as shared and never sent again: the others never validated it."""
    conn = Sharing([SubmitOutcome.POSTPONED, SubmitOutcome.POSTPONED, SubmitOutcome.ACCEPTED])
    with caplog.at_level(logging.INFO, "flclientd.crossval"):
        _share(tmp_path, conn, monkeypatch)
    assert conn.uploads == 3
    said = [r.getMessage() for r in caplog.records if r.name == "flclientd.crossval"]
    assert said[0].startswith("upload of the local model postponed by the server (server disk")
    assert said[-1].startswith("best local model shared for cross-site validation")


def test_a_best_local_model_the_server_rejected_is_not_said_to_be_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    conn = Sharing([SubmitOutcome.REJECTED])
    with caplog.at_level(logging.INFO, "flclientd.crossval"):
        _share(tmp_path, conn, monkeypatch)
    said = [r.getMessage() for r in caplog.records if r.name == "flclientd.crossval"]
    assert said == ["best local model not shared: the server rejected it: server disk full: models"]


def test_a_damaged_best_local_model_leaves_only_this_site_s_column_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It failed the whole site with "an unexpected error"; the site still validates."""
    conn = Sharing([], TensorFileError("best_local_model.safetensors: header cut short"))
    _share(tmp_path, conn, monkeypatch)
    assert conn.cells == {
        "site-a": "no local model to share: best_local_model.safetensors cannot be read: "
        "best_local_model.safetensors: header cut short"
    }


def test_a_model_the_full_disk_cannot_hold_fails_only_its_own_cell(tmp_path: Path) -> None:
    """A full disk during a download failed the whole site with "an unexpected error"."""

    class FullDisk(Conn):
        async def get_model(self, run_number: int, round: int, path: Path, owner: str) -> None:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    conn = FullDisk()
    crossval = CrossSiteValidation(Uplink(), conn)  # type: ignore[arg-type]
    run = RunContext(1, tmp_path / "app", tmp_path, 1, ClientAppConfig(cross_validate=True))
    worker: Any = Worker()
    asyncio.run(crossval._validate(run, worker, "site-b"))
    model = tmp_path / crossval_module.CROSSVAL_MODEL
    assert conn.cells == {
        "site-b": f"cannot store the model: disk full: {model}: No space left on device"
    }
