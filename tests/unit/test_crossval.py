"""flserverd.crossval.CrossValidation with a recording listener in place of the server."""

from __future__ import annotations

import errno
import json
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from flcore.crossvalmatrix import MatrixCell, ValidationMatrix
from flcore.federation import GLOBAL_OWNER, SubmitOutcome, TaskKind, TaskOffer
from flcore.tensorfile import TensorFile
from flserverd.crossval import CrossValidation
from flserverd.runstore import RunStore
from flserverd.statedb import StateDB
from flserverd.training import Refusal

RUN = 2


@dataclass
class RecordingServer:
    """Stands in for the server: the offers cross-site validation sends."""

    offers: list[tuple[str, TaskOffer]] = field(default_factory=list)

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        self.offers.extend((instance, offer) for instance in instances)

    def last(self, instance: str) -> TaskOffer:
        return [offer for who, offer in self.offers if who == instance][-1]


@dataclass
class Setup:
    root: Path
    store: RunStore
    db: StateDB
    server: RecordingServer

    def crossval(self) -> CrossValidation:
        return CrossValidation(RUN, self.store, self.db, self.server)

    def model(self, name: str) -> TensorFile:
        path = self.root / "spool" / f"{name}.safetensors"
        path.parent.mkdir(exist_ok=True)
        safetensors.numpy.save_file({"w": np.ones(3, dtype=np.float32)}, path)
        return TensorFile(path)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    store = RunStore(tmp_path)
    store.create_run(RUN)
    return Setup(tmp_path, store, StateDB(tmp_path / "state.db"), RecordingServer())


def offer(owners: tuple[str, ...], pending: tuple[str, ...]) -> TaskOffer:
    return TaskOffer(RUN, -1, TaskKind.CROSS_VALIDATE, owners, pending)


def test_participants_are_offered_each_others_models_as_they_come(setup: Setup) -> None:
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    crossval.start_validating("a")
    assert setup.server.offers == [("a", offer((), (GLOBAL_OWNER, "b")))]
    assert crossval.check_model("a") is None
    crossval.accept_model("b", setup.model("b"))
    assert setup.server.last("a") == offer(("b",), (GLOBAL_OWNER,))
    assert crossval.check_model("b") == (
        SubmitOutcome.DUPLICATE,
        "the local model was already received",
    )
    crossval.end_training()
    assert setup.server.last("a") == offer((GLOBAL_OWNER, "b"), ())
    assert crossval.record_report("a", "b", {"acc": 0.9}, "").outcome is SubmitOutcome.ACCEPTED
    crossval.start_validating("a")
    assert setup.server.last("a") == offer((GLOBAL_OWNER,), ())


def test_models_go_to_participants_only_once_they_exist(setup: Setup) -> None:
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    with pytest.raises(Refusal, match="'b' is not available to a"):
        crossval.site_model_for("a", "b")  # not submitted yet
    crossval.accept_model("b", setup.model("b"))
    sites = setup.store.run_dir(RUN) / "cross_site" / "sites"
    assert crossval.site_model_for("a", "b") == sites / "b.safetensors"
    with pytest.raises(Refusal):
        crossval.site_model_for("b", "b")  # its own model
    with pytest.raises(Refusal):
        crossval.site_model_for("outsider", "b")
    with pytest.raises(Refusal, match="global model is not available to a"):
        crossval.global_model_for("a")  # training is not over
    crossval.end_training()
    assert crossval.global_model_for("a") == setup.store.global_model(RUN)
    with pytest.raises(Refusal):
        crossval.global_model_for("outsider")


def test_a_site_named_global_never_touches_the_global_model(setup: Setup) -> None:
    """A kit named 'global' (made before the name was reserved) shares its best local model:
    it lands among the sites' models, the run's best global model keeps its bytes, and asking
    for the site model 'global' never yields the global model."""
    best = setup.store.best_model(RUN)
    safetensors.numpy.save_file({"w": np.zeros(3, dtype=np.float32)}, best)
    before = best.read_bytes()
    crossval = setup.crossval()
    crossval.declare(GLOBAL_OWNER)
    crossval.declare("a")
    crossval.accept_model(GLOBAL_OWNER, setup.model(GLOBAL_OWNER))
    crossval.end_training()
    assert best.read_bytes() == before
    site_copy = crossval.site_model_for("a", GLOBAL_OWNER)
    assert site_copy == setup.store.run_dir(RUN) / "cross_site" / "sites" / "global.safetensors"
    assert site_copy.read_bytes() != before
    assert crossval.global_model_for("a") == best


def test_site_models_of_an_older_run_folder_move_into_their_own_folder(setup: Setup) -> None:
    flat = setup.store.run_dir(RUN) / "cross_site"
    flat.mkdir()
    safetensors.numpy.save_file({"w": np.ones(3, dtype=np.float32)}, flat / "a.safetensors")
    crossval = setup.crossval()
    assert crossval.submitted == {"a"}
    assert not (flat / "a.safetensors").exists()
    assert (flat / "sites" / "a.safetensors").exists()
    crossval.declare("b")
    assert crossval.site_model_for("b", "a") == flat / "sites" / "a.safetensors"


def test_outsiders_and_unknown_owners_are_refused(setup: Setup) -> None:
    crossval = setup.crossval()
    crossval.declare("a")
    outsider = crossval.check_model("outsider")
    assert outsider is not None and outsider.outcome is SubmitOutcome.REJECTED
    report = crossval.record_report("outsider", GLOBAL_OWNER, {"acc": 1.0}, "")
    assert report.outcome is SubmitOutcome.REJECTED
    unknown = crossval.record_report("a", "nobody", {"acc": 1.0}, "")
    assert unknown.outcome is SubmitOutcome.REJECTED and "'nobody' has no model" in unknown.message
    assert crossval.results == {}


def test_a_withdrawn_site_is_no_longer_awaited(setup: Setup) -> None:
    crossval = setup.crossval()
    for site in ("a", "b"):
        crossval.declare(site)
    crossval.start_validating("a")
    crossval.withdraw("b", "failed: out of memory")
    assert setup.server.last("a") == offer((), (GLOBAL_OWNER,))
    crossval.declare("b")  # a withdrawn site does not come back by declaring again
    assert "b" not in crossval.declared
    assert crossval.matrix().notes == {"b": "failed: out of memory"}


def test_results_survive_a_restart_and_are_written_as_json(setup: Setup) -> None:
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    crossval.accept_model("a", setup.model("a"))
    crossval.record("a", "b", {"acc": 0.75}, "")
    crossval.record(GLOBAL_OWNER, "b", {}, "validation failed: shapes differ")
    restarted = setup.crossval()
    assert restarted.submitted == {"a"} and "a" in restarted.declared
    matrix = restarted.matrix()
    assert matrix.rows == [GLOBAL_OWNER, "a", "b"] and matrix.columns == ["a", "b"]
    assert matrix.cell("a", "b") == MatrixCell({"acc": 0.75}, "")
    assert matrix.cell(GLOBAL_OWNER, "b") == MatrixCell({}, "validation failed: shapes differ")
    assert matrix.metric_names() == ["acc"]
    written = json.loads((setup.store.run_dir(RUN) / "cross_site_validation.json").read_text())
    assert written == matrix.as_json()
    assert written["cells"]["a"]["b"] == {"metrics": {"acc": 0.75}, "error": ""}


def test_a_full_disk_postpones_a_cell_and_loses_none(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk made a report "an unexpected error" five times, and the site failed; a
    cell held only in memory died with a restart."""
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    crossval.accept_model("a", setup.model("a"))
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL

    def no_room(*_: object) -> None:
        raise full

    with monkeypatch.context() as patched:
        patched.setattr(setup.db, "save_validation", no_room)
        verdict = crossval.record_report("b", "a", {"acc": 0.75}, "")
    assert verdict.outcome is SubmitOutcome.POSTPONED
    assert verdict.message.startswith("server disk full: state database")
    assert crossval.results == {} and setup.crossval().results == {}

    matrix_file = setup.store.run_dir(RUN) / "cross_site_validation.json"

    def file_full(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(matrix_file))

    with monkeypatch.context() as patched:
        patched.setattr("flserverd.crossval.atomic_write_bytes", file_full)
        assert crossval.record_report("b", "a", {"acc": 0.75}, "").outcome is (
            SubmitOutcome.ACCEPTED
        )
    assert not matrix_file.exists()  # the database has the cell; the file follows it
    restarted = setup.crossval()
    assert restarted.matrix().cell("a", "b") == MatrixCell({"acc": 0.75}, "")
    assert json.loads(matrix_file.read_text()) == restarted.matrix().as_json()


def test_a_site_model_a_power_loss_cut_short_is_asked_for_again(setup: Setup) -> None:
    """It was accepted once and counted as submitted after the restart, whole or not: the
    owner's resend was a duplicate, and every other site's validation of it failed."""
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    crossval.accept_model("a", setup.model("a"))
    crossval.accept_model("b", setup.model("b"))
    kept = crossval.site_model("b")
    kept.write_bytes(kept.read_bytes()[:-5])  # what a power loss left of it
    restarted = setup.crossval()
    assert restarted.submitted == {"a"} and not kept.exists()


def test_the_matrix_can_be_narrowed_and_shows_bystanders(setup: Setup) -> None:
    crossval = setup.crossval()
    for site in ("a", "b", "c"):
        crossval.declare(site)
    crossval.record(GLOBAL_OWNER, "a", {"acc": 0.5}, "")
    crossval.record(GLOBAL_OWNER, "c", {"acc": 0.6}, "")
    matrix = crossval.matrix(["a", "d"], {"d": "does not take part"})
    assert matrix.rows == [GLOBAL_OWNER, "a", "d"]
    assert matrix.columns == ["a", "d"]
    assert matrix.cells == {GLOBAL_OWNER: {"a": MatrixCell({"acc": 0.5}, "")}}
    assert matrix.notes == {"d": "does not take part"}


def test_a_site_that_cannot_validate_its_own_model_withdraws(setup: Setup) -> None:
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.record("a", "a", {}, "no local model to share")
    assert crossval.withdrawn == {"a": "no local model to share"}
    assert crossval.results == {}


def test_the_matrix_reads_back_from_its_json_and_other_shapes_read_as_no_results() -> None:
    matrix = ValidationMatrix(
        4,
        ["global", "site-a"],
        ["site-a", "site-b"],
        {"global": {"site-b": MatrixCell({"acc": 0.5}, "")}, "site-a": {}},
        {"site-c": "does not take part"},
    )
    assert ValidationMatrix.from_json(json.loads(json.dumps(matrix.as_json()))) == matrix
    older = ValidationMatrix.from_json({"results": []})
    assert older == ValidationMatrix(-1, [], [], {}, {})
    odd = ValidationMatrix.from_json(
        {"rows": ["global"], "columns": ["s"], "cells": {"global": {"s": {"metrics": {"a": "x"}}}}}
    )
    assert odd.cell("global", "s") == MatrixCell({}, "")


def test_a_cell_is_written_once_and_a_site_s_error_is_logged_on_one_line(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Each report was a durable write and a rewrite of the matrix file, and its error went
    to the log as the site wrote it: a newline followed by ``<3>`` forged a journal line of
    another priority."""
    crossval = setup.crossval()
    crossval.declare("a")
    crossval.declare("b")
    crossval.accept_model("a", setup.model("a"))
    writes: list[tuple[object, ...]] = []
    save = setup.db.save_validation

    def counted(*cell: Any) -> None:
        writes.append(cell)
        save(*cell)

    monkeypatch.setattr(setup.db, "save_validation", counted)
    forged = "boom\n<3>flserverd: FORGED by site b"
    with caplog.at_level(logging.INFO, "flserverd.crossval"):
        assert crossval.record_report("b", "a", {}, forged).outcome is SubmitOutcome.ACCEPTED
        for metrics, error in (({}, forged), ({"acc": 0.1}, "")):
            again = crossval.record_report("b", "a", metrics, error)
            assert again == (
                SubmitOutcome.DUPLICATE,
                "b's validation of this model was recorded",
            )
    assert len(writes) == 1
    assert crossval.matrix().cell("a", "b") == MatrixCell({}, forged)
    (line,) = [r.getMessage() for r in caplog.records if "validated" in r.getMessage()]
    assert "\n" not in line and line.endswith("boom\\n<3>flserverd: FORGED by site b")
