"""The server's decisions about downloads, uploads and reports, and its one query API for
"is run N training?", driven on a real FLServer without gRPC."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from flcore import status as st
from flcore.appconfig import ServerAppConfig
from flcore.compression import WireChunk, WireCompression, encoded_chunks
from flcore.federation import (
    GLOBAL_OWNER,
    MachineInfo,
    MetricsKind,
    MetricsReport,
    ModelKind,
    ModelRequest,
    SubmitHeader,
    SubmitOutcome,
    UploadKind,
    Verdict,
)
from flcore.feed import ClientGone, ClientRow
from flcore.identity import KIND_ADMIN, KIND_CLIENT, Identity
from flcore.tensorfile import Manifest, TensorFile, TensorFileError
from fldev.poll import wait_until_async
from flserverd.admins import MAX_LOGINS_PER_ADMIN
from flserverd.aggregator import RUNNING_SUM
from flserverd.commands import AdminCommands
from flserverd.events import Revoked
from flserverd.exchange import MAX_METRICS, ModelExchange, check_metrics
from flserverd.registry import AuthError
from flserverd.server import FLServer
from flserverd.statedb import RoundSummary, RunRecord, WireTally
from flserverd.throttle import REPORT_BURST, UPLOAD_BURST
from flserverd.training import (
    MAX_SAMPLES,
    PHASE_FINAL_VALIDATION,
    PHASE_TRAINING,
    Refusal,
    Training,
)
from flserverd.transfer import TransferError
from flserverd.transferslots import TransferSlots
from tests.unit.serverparts import Sender, server_startup, upload

RUN = 1


def write_model(path: Path, w: float = 0.0, dtype: type = np.float32) -> TensorFile:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(
        {"w": np.full(4, w, dtype=dtype), "b": np.zeros(1, dtype=dtype)}, path
    )
    return TensorFile(path)


def train(server: FLServer, **config: Any) -> Training:
    """Make run 1 train on ``server`` from a tiny model (what start server does, minus the
    model-init child)."""
    server.set_run_number(RUN)
    manifest = write_model(server.store.round_model(RUN, 0)).manifest
    app = ServerAppConfig(**config)
    record = RunRecord(RUN, st.STARTED, PHASE_TRAINING, "app", 0, app.num_rounds, 0)
    server.db.save_run(record)
    server.training = Training(record, app, manifest, server.store, server.db, server)
    return server.training


async def chunks_of(model: TensorFile) -> AsyncIterator[WireChunk]:
    for chunk in model.iter_chunks():
        yield WireChunk(*chunk)


def on_server(tmp_path: Path, scenario: Callable[[FLServer], Awaitable[None]]) -> None:
    async def run() -> None:
        server = FLServer(tmp_path, server_startup(), "test")
        await server.open()
        try:
            await scenario(server)
        finally:
            await server.close(1)

    asyncio.run(run())


def header(
    manifest: Manifest,
    kind: UploadKind = UploadKind.UPDATE,
    run_number: int = RUN,
    round: int = 0,
    metrics: dict[str, float] | None = None,
) -> SubmitHeader:
    metrics = {"val_accuracy": 0.5} if metrics is None else metrics
    return SubmitHeader(run_number, round, kind, 10, metrics, manifest)


def test_one_query_api_says_which_run_trains(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        assert server.training_for(RUN) is None and server.active_training() is None
        assert not server.busy and server.current_round == -1
        training = train(server, num_rounds=2)
        assert server.training_for(RUN) is training and server.training_for(2) is None
        assert server.active_training() is training and server.busy
        assert server.current_round == 0
        training.abort()
        assert server.training_for(RUN) is training  # still the run this server holds
        assert server.active_training() is None and not server.busy
        server.set_run_number(2)
        assert server.training_for(RUN) is None

    on_server(tmp_path, scenario)


def test_downloads_are_decided_by_the_run(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        with pytest.raises(Refusal, match="run 1 is not training"):
            exchange.model_for("site-a", ModelRequest(RUN, 0, ModelKind.GLOBAL))
        training = train(server, num_rounds=2, max_num_clients=1)
        path = exchange.model_for("site-a", ModelRequest(RUN, 0, ModelKind.GLOBAL)).path
        assert path == server.store.round_model(RUN, 0)
        assert training.round.participants == {"site-a"}
        with pytest.raises(Refusal, match="max_num_clients=1"):
            exchange.model_for("site-b", ModelRequest(RUN, 0, ModelKind.GLOBAL))
        with pytest.raises(Refusal, match="run 7 does not exist"):
            exchange.model_for("site-a", ModelRequest(7, -1, ModelKind.BEST_GLOBAL))
        with pytest.raises(Refusal, match="not available to site-a"):
            exchange.model_for("site-a", ModelRequest(RUN, -1, ModelKind.BEST_GLOBAL))
        with pytest.raises(Refusal, match="'site-b' is not available"):
            exchange.model_for("site-a", ModelRequest(RUN, -1, ModelKind.LOCAL, "site-b"))

    on_server(tmp_path, scenario)


def test_an_update_is_judged_before_its_bytes_arrive(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        model = write_model(tmp_path / "u.safetensors", 1.0)
        manifest = model.manifest
        assert exchange.check_upload("site-a", header(manifest), None) == (
            SubmitOutcome.LATE,
            "the server is not training; update discarded",
        )
        training = train(server, num_rounds=2, min_num_clients=2)
        cases = {
            "too many metrics": header(
                manifest, metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}
            ),
            "update is for run 2": header(manifest, run_number=2),
            "does not match the global model": header(
                write_model(tmp_path / "f64.safetensors", 1.0, np.float64).manifest
            ),
        }
        for expected, case in cases.items():
            verdict = exchange.check_upload("site-a", case, training)
            assert verdict is not None and verdict.outcome is SubmitOutcome.REJECTED
            assert expected in verdict.message
        assert exchange.check_upload("site-a", header(manifest), training) is None
        # Only a server restored from an earlier state offered a later round: the site follows.
        assert exchange.check_upload("site-a", header(manifest, round=4), training) == (
            SubmitOutcome.LATE,
            "round 4 is ahead of this server's round 0 (was the server restored from a "
            "backup?); update discarded",
        )

    on_server(tmp_path, scenario)


def test_a_site_may_send_updates_as_fast_as_rounds_go(tmp_path: Path) -> None:
    """Only refusals count towards a site's bound on uploads: small rounds go by many times
    a second, and an honest site was refused its update after the first 20."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        rounds = UPLOAD_BURST * 2
        training = train(server, num_rounds=rounds + 1, min_num_clients=1, max_num_clients=1)
        model = write_model(tmp_path / "u.safetensors", 1.0)

        def past(number: int) -> Callable[[], bool]:
            return lambda: training.round.number > number

        for number in range(rounds):
            sent = header(model.manifest, round=number)
            verdict = await upload(exchange, "site-a", sent, chunks_of(model))
            assert verdict.outcome is SubmitOutcome.ACCEPTED, verdict.message
            await wait_until_async(past(number), 10, "the next round")

    on_server(tmp_path, scenario)


def test_a_complete_update_is_counted_once_and_kept_until_its_round_is_aggregated(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=2, min_num_clients=2)
        model = write_model(tmp_path / "u.safetensors", 1.0)
        first = await upload(exchange, "site-a", header(model.manifest), chunks_of(model))
        assert first.outcome is SubmitOutcome.ACCEPTED
        assert training.round.contributed == {"site-a": 10}
        again = await upload(exchange, "site-a", header(model.manifest), chunks_of(model))
        assert again.outcome is SubmitOutcome.DUPLICATE
        spool = server.store.spool_dir(RUN)
        # The duplicate's spool is gone; the round keeps the update and FedAvg's running sum
        # (written by the fold, which runs after the verdict).
        expected = [Path("round_0") / RUNNING_SUM, Path("round_0/site-a.safetensors")]
        await wait_until_async(
            lambda: (
                sorted(p.relative_to(spool) for p in spool.rglob("*") if p.is_file()) == expected
            ),
            10,
            "the round to keep the update and the running sum, and nothing else",
        )

    on_server(tmp_path, scenario)


def test_a_poisoned_update_is_rejected_and_not_folded(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=2, min_num_clients=2)
        model = write_model(tmp_path / "nan.safetensors", float("nan"))
        verdict = await upload(exchange, "site-a", header(model.manifest), chunks_of(model))
        assert verdict.outcome is SubmitOutcome.REJECTED and "NaN" in verdict.message
        assert training.round.contributed == {}
        assert list(server.store.spool_dir(RUN).iterdir()) == []

    on_server(tmp_path, scenario)


def test_finite_values_whose_weighted_sum_could_overflow_are_refused(tmp_path: Path) -> None:
    """3e38 with 2 samples is finite and passed every check; FedAvg's float32 sum made the
    global model infinite. Sample counts no site has are refused from the header."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=2, min_num_clients=2)
        model = write_model(tmp_path / "big.safetensors", 3e38)
        weighted = SubmitHeader(RUN, 0, UploadKind.UPDATE, 2, {}, model.manifest)
        verdict = await upload(exchange, "site-a", weighted, chunks_of(model))
        assert verdict.outcome is SubmitOutcome.REJECTED
        assert "holds a value of" in verdict.message and "below 1e30" in verdict.message
        many = SubmitHeader(RUN, 0, UploadKind.UPDATE, 2**62, {}, model.manifest)
        verdict = await upload(exchange, "site-a", many, chunks_of(model))
        assert (
            verdict.outcome is SubmitOutcome.REJECTED
            and "more than any site has" in verdict.message
        )
        honest = write_model(tmp_path / "honest.safetensors", 0.5)
        verdict = await upload(exchange, "site-a", header(honest.manifest), chunks_of(honest))
        assert verdict.outcome is SubmitOutcome.ACCEPTED
        assert training.round.contributed == {"site-a": 10}

    on_server(tmp_path, scenario)


def test_a_refusal_mid_upload_waits_for_the_sender_to_finish_up_to_the_size_declared(
    tmp_path: Path,
) -> None:
    """gRPC's asyncio client loses the verdict when it writes after the server ended the call
    (grpc/grpc#36066), so the verdict on a refused chunk comes once the sender is done; a
    sender that goes on past the size it declared is cut off there."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        train(server, num_rounds=2, min_num_clients=2)
        path = tmp_path / "nan_first.safetensors"
        tensors = {"w": np.zeros(4, dtype=np.float32), "b": np.full(1, np.nan, dtype=np.float32)}
        safetensors.numpy.save_file(tensors, path)
        model = TensorFile(path)
        first, *rest = list(model.iter_chunks())
        assert first[0] == "b" and rest, "the refused chunk must come first"
        sent: list[int] = []

        async def honest() -> AsyncIterator[WireChunk]:
            for chunk in [first, *rest]:
                sent.append(len(chunk[2]))
                yield WireChunk(*chunk)

        poisoned = header(model.manifest)
        verdict = await upload(exchange, "site-a", poisoned, honest())
        assert verdict.outcome is SubmitOutcome.REJECTED and "NaN" in verdict.message
        assert len(sent) == 1 + len(rest)  # every chunk was read before the verdict

        async def endless() -> AsyncIterator[WireChunk]:
            for chunk in [first, *rest]:
                yield WireChunk(*chunk)
            while True:
                sent.append(len(rest[-1][2]))
                yield WireChunk(*rest[-1])

        sent.clear()
        verdict = await upload(exchange, "site-b", poisoned, endless())
        assert verdict.outcome is SubmitOutcome.REJECTED
        assert sum(sent) <= model.manifest.total_bytes + len(rest[-1][2])

        async def unreadable_after() -> AsyncIterator[WireChunk]:
            yield WireChunk(*first)
            # What the serde edge raises for a chunk in an encoding nobody knows.
            raise TensorFileError("tensor 'w': unknown chunk encoding 99")

        verdict = await upload(exchange, "site-c", poisoned, unreadable_after())
        assert verdict.outcome is SubmitOutcome.REJECTED and "NaN" in verdict.message

    on_server(tmp_path, scenario)


def test_empty_chunks_without_end_neither_keep_an_upload_nor_its_refused_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty chunk counted as progress and as nothing at once: a site that streamed them
    after its go kept an upload slot for good, and so did the rest of a refused upload,
    which never reached the size declared. Now an empty chunk is refused, the rest of a
    refused upload is read up to the chunks the model can come in, and for a bounded time."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        train(server, num_rounds=2, min_num_clients=2)
        model = write_model(tmp_path / "u.safetensors", 1.0)
        declared = header(model.manifest)
        first = model.manifest.tensors[0].name
        sent = 0

        async def empty_chunks(refused: WireChunk | None = None) -> AsyncIterator[WireChunk]:
            nonlocal sent
            if refused is not None:
                yield refused
            while True:
                sent += 1
                yield WireChunk(first, 0, b"")

        verdict = await asyncio.wait_for(upload(exchange, "site-a", declared, empty_chunks()), 10)
        assert verdict == Verdict(
            SubmitOutcome.REJECTED,
            f"tensor {first!r}: an empty chunk at byte 0; a chunk holds at least one value",
        )
        assert sent == 1 + model.manifest.most_chunks + 1  # refused, then the rest read and cut
        nan = WireChunk(first, 0, np.full(1, np.nan, dtype=np.float32).tobytes())
        sent = 0
        verdict = await asyncio.wait_for(
            upload(exchange, "site-b", declared, empty_chunks(nan)), 10
        )
        assert verdict.outcome is SubmitOutcome.REJECTED and "NaN" in verdict.message
        assert sent == model.manifest.most_chunks + 1

        async def then_silent() -> AsyncIterator[WireChunk]:
            yield nan
            await asyncio.Event().wait()
            yield nan

        monkeypatch.setattr("flserverd.exchange.REFUSED_REST_S", 0.2)
        verdict = await asyncio.wait_for(upload(exchange, "site-c", declared, then_silent()), 10)
        assert verdict.outcome is SubmitOutcome.REJECTED and "NaN" in verdict.message

    on_server(tmp_path, scenario)


def test_best_local_models_and_cross_site_reports(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        train(server, num_rounds=2)
        model = write_model(tmp_path / "local.safetensors", 2.0)
        local = header(model.manifest, UploadKind.BEST_LOCAL, round=-1)
        refused = await upload(exchange, "site-a", local, chunks_of(model))
        assert refused.outcome is SubmitOutcome.REJECTED
        assert "does not take part in cross-site validation" in refused.message
        server.crossval_for(RUN).declare("site-a")
        server.crossval_for(RUN).declare("site-b")
        accepted = await upload(exchange, "site-a", local, chunks_of(model))
        assert accepted.outcome is SubmitOutcome.ACCEPTED
        again = await upload(exchange, "site-a", local, chunks_of(model))
        assert again.outcome is SubmitOutcome.DUPLICATE
        path = exchange.model_for("site-b", ModelRequest(RUN, -1, ModelKind.LOCAL, "site-a")).path
        assert TensorFile(path).manifest == model.manifest
        server.crossval_for(RUN).end_training()
        with pytest.raises(Refusal, match="'global' is not available"):
            # A site's model named like the global one is a site's model, never the global one.
            exchange.model_for("site-b", ModelRequest(RUN, -1, ModelKind.LOCAL, GLOBAL_OWNER))
        report = MetricsReport(RUN, -1, MetricsKind.CROSS_VALIDATION, "site-a", {"acc": 0.9}, 5)
        assert exchange.accept_metrics("site-b", report).outcome is SubmitOutcome.ACCEPTED
        assert exchange.accept_metrics("site-c", report).outcome is SubmitOutcome.REJECTED
        unknown_owner = MetricsReport(RUN, -1, MetricsKind.CROSS_VALIDATION, "nobody", {}, 0)
        verdict = exchange.accept_metrics("site-b", unknown_owner)
        assert verdict.outcome is SubmitOutcome.REJECTED and "'nobody'" in verdict.message
        elsewhere = MetricsReport(9, -1, MetricsKind.CROSS_VALIDATION, GLOBAL_OWNER, {}, 0)
        assert "run 9 does not exist" in exchange.accept_metrics("site-b", elsewhere).message

    on_server(tmp_path, scenario)


def test_final_validation_reports(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        report = MetricsReport(RUN, 2, MetricsKind.GLOBAL_VALIDATION, GLOBAL_OWNER, {"a": 1.0}, 4)
        assert exchange.accept_metrics("site-a", report).outcome is SubmitOutcome.LATE
        train(server, num_rounds=2)
        late = exchange.accept_metrics("site-a", report)
        assert late.outcome is SubmitOutcome.LATE and "not in progress" in late.message
        bad = MetricsReport(RUN, 2, MetricsKind.GLOBAL_VALIDATION, GLOBAL_OWNER, {"a": 1e999}, 4)
        assert "not a finite number" in exchange.accept_metrics("site-a", bad).message

    on_server(tmp_path, scenario)


def test_a_report_s_owner_and_error_reach_the_log_only_once_accepted_and_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The owner a report names was logged as sent before it was checked, and its error
    went to the log unescaped: newlines and ``<3>`` forged server log lines."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        train(server, num_rounds=2)
        crossval = server.crossval_for(RUN)
        crossval.declare("site-a")
        crossval.declare("site-b")
        forged = "\n<3>flserverd: FORGED"
        reports = [
            ("site-b", MetricsReport(RUN, -1, MetricsKind.CROSS_VALIDATION, forged, {}, 0, "x")),
            (
                "site-c",
                MetricsReport(RUN, -1, MetricsKind.CROSS_VALIDATION, "site-a", {}, 0, forged),
            ),
            (
                "site-b",
                MetricsReport(RUN, -1, MetricsKind.CROSS_VALIDATION, "site-a", {}, 0, forged),
            ),
        ]
        with caplog.at_level(logging.INFO):
            verdicts = [exchange.accept_metrics(site, report).outcome for site, report in reports]
        assert verdicts == [SubmitOutcome.REJECTED, SubmitOutcome.REJECTED, SubmitOutcome.ACCEPTED]
        lines = [record.getMessage() for record in caplog.records]
        assert not any("\n" in line for line in lines)
        assert [line for line in lines if "FORGED" in line] == [
            "run 1: site-b validated the model of site-a: \\n<3>flserverd: FORGED"
        ]

    on_server(tmp_path, scenario)


async def one_round_to_final_validation(
    exchange: ModelExchange, training: Training, tmp_path: Path
) -> None:
    """Site-a's one update closes a one-round run's round: the run validates the final model."""
    model = write_model(tmp_path / "u.safetensors", 1.0)
    training.client_ready("site-a")
    assert (await upload(exchange, "site-a", header(model.manifest), chunks_of(model)))[0] is (
        SubmitOutcome.ACCEPTED
    )
    await wait_until_async(lambda: training.run.phase == PHASE_FINAL_VALIDATION, 10, "final")


def test_reports_and_uploads_past_what_a_site_sends_are_refused_and_logged_rarely(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Metrics reports and uploads had no bound: each was judged on the loop, a report could
    be written to the state database, and each refused upload wrote a log line."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        train(server, num_rounds=2)
        late = MetricsReport(RUN, 2, MetricsKind.GLOBAL_VALIDATION, GLOBAL_OWNER, {"a": 1.0}, 4)
        model = write_model(tmp_path / "u.safetensors", 1.0)
        elsewhere = header(model.manifest, run_number=7)
        with caplog.at_level(logging.INFO, "flserverd.exchange"):
            reports = [exchange.accept_metrics("site-a", late) for _ in range(REPORT_BURST + 5)]
            other = exchange.accept_metrics("site-b", late)
            uploads = [
                await upload(exchange, "site-a", elsewhere, chunks_of(model))
                for _ in range(UPLOAD_BURST + 5)
            ]
            unreadable = [exchange.refuse("site-a", "no\nheader") for _ in range(5)]
        assert {v.outcome for v in reports[:REPORT_BURST]} == {SubmitOutcome.LATE}
        assert other.outcome is SubmitOutcome.LATE  # each instance has its own bound
        assert {v.outcome for v in uploads + unreadable + reports[REPORT_BURST:]} == {
            SubmitOutcome.REJECTED
        }
        assert "for run 7" in uploads[0].message
        assert {v.message for v in reports[REPORT_BURST:]} == {
            "site-a had more reports refused than the server takes (500 at once, then 2 a second); "
            "this one is refused"
        }
        assert {v.message for v in uploads[UPLOAD_BURST:] + unreadable} == {
            "site-a had more uploads refused than the server takes (20 at once, then 2 a second); "
            "this one is refused"
        }
        assert [r.getMessage() for r in caplog.records] == [
            "site-a has more reports refused than the server takes: the rest are refused unread",
            "update from site-a for round 0 rejected: update is for run 7, the server trains run 1",
            "site-a has more uploads refused than the server takes: the rest are refused unread",
        ]

    on_server(tmp_path, scenario)


def test_the_final_model_s_validation_counts_from_a_site_of_the_run_with_a_weight_it_may_have(
    tmp_path: Path,
) -> None:
    """Any instance's report was counted, and its sample count (2^63 - 1, or negative)
    weighted the run's final metrics unbounded."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=1, min_num_clients=1)
        await one_round_to_final_validation(exchange, training, tmp_path)

        def final(site: str, samples: int) -> Verdict:
            report = MetricsReport(RUN, 1, MetricsKind.GLOBAL_VALIDATION, "", {"a": 1.0}, samples)
            return exchange.accept_metrics(site, report)

        assert final("site-b", 5) == (
            SubmitOutcome.REJECTED,
            "site-b does not take part in run 1; its validation of the final model is not counted",
        )
        assert final("site-a", 2**63 - 1) == (
            SubmitOutcome.REJECTED,
            f"validation of the final model reports {2**63 - 1:,} training samples, more than"
            f" any site has ({MAX_SAMPLES:,})",
        )
        assert final("site-a", -5) == (
            SubmitOutcome.REJECTED,
            "validation of the final model reports no training samples; it cannot be weighted",
        )
        assert training.final_reports == {}
        assert final("site-a", 5).outcome is SubmitOutcome.ACCEPTED
        assert training.final_reports == {"site-a": 5}

    on_server(tmp_path, scenario)


def test_a_site_without_training_samples_is_counted_in_the_final_validation_with_no_weight(
    tmp_path: Path,
) -> None:
    """Its report on the final model was refused, and the run waited for the final
    validation's timeout for a report it would never take."""

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=1, min_num_clients=1, wait_after_min_clients=0)
        training.client_ready("site-b")  # validation data only: it sends no update
        await one_round_to_final_validation(exchange, training, tmp_path)

        def final(site: str, metrics: dict[str, float], samples: int) -> Verdict:
            report = MetricsReport(RUN, 1, MetricsKind.GLOBAL_VALIDATION, "", metrics, samples)
            return exchange.accept_metrics(site, report)

        assert final("site-b", {"acc": 0.0, "only_b": 0.25}, 0) == (
            SubmitOutcome.ACCEPTED,
            "final validation metrics accepted",
        )
        assert training.active and training.awaited() == ["site-a"]
        assert final("site-a", {"acc": 0.8}, 5).outcome is SubmitOutcome.ACCEPTED
        await wait_until_async(lambda: not training.active, 10, "the run to end")
        assert training.run.reason == st.FINISHED
        last = server.db.round_records(RUN)[-1]
        assert last.final and last.clients == ["site-a", "site-b"]
        assert last.metrics == {"acc": 0.8, "only_b": 0.25}
        assert sorted(server.db.fold_instances(RUN)) == ["site-a", "site-b"]

    on_server(tmp_path, scenario)


def test_an_abort_after_the_final_result_leaves_the_run_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An abort while the final result's files were written (committed, the run's end not
    recorded yet) recorded the run as aborted: a later start offered to continue it "at the
    final validation", and then ended it at once as finished."""
    writing = threading.Event()
    written = threading.Event()
    write_outputs = Training._write_outputs

    def slow_outputs(training: Training, summary: RoundSummary) -> None:
        if summary.final:
            writing.set()
            assert written.wait(10)
        write_outputs(training, summary)

    monkeypatch.setattr(Training, "_write_outputs", slow_outputs)

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=1, min_num_clients=1)
        await one_round_to_final_validation(exchange, training, tmp_path)
        report = MetricsReport(RUN, 1, MetricsKind.GLOBAL_VALIDATION, "", {"acc": 0.8}, 5)
        assert exchange.accept_metrics("site-a", report).outcome is SubmitOutcome.ACCEPTED
        await asyncio.wait_for(asyncio.to_thread(writing.wait, 10), 11)
        try:
            reply = await AdminCommands(server).execute(
                "admin@lead.org", "super", "abort server", 5.0, True
            )
        finally:
            written.set()
        assert reply.ok and reply.text == (
            "Run 1 had already finished (its final validation is recorded); nothing was aborted."
        )
        record = server.db.get_run(RUN)
        assert record is not None and (record.status, record.reason) == (st.STOPPED, st.FINISHED)

    on_server(tmp_path, scenario)


def test_check_metrics_bounds_names_and_values() -> None:
    assert check_metrics({"val_accuracy": 0.5, "val/mean dice-2.5": 0.1}) is None
    assert "must be 1-64 letters" in (check_metrics({"": 1.0}) or "")
    assert "must be 1-64 letters" in (check_metrics({"x" * 65: 1.0}) or "")
    assert "not a finite number" in (check_metrics({"loss": float("inf")}) or "")
    # A name reaches the server's log (a newline forged a journal line) and MLflow (which
    # refused a round's whole batch for one name it does not take).
    forged = check_metrics({"x\n<3>flserverd.server: run 1 aborted": 1.0}) or ""
    assert forged.startswith("metric name 'x\\n<3>flserverd.server") and "\n" not in forged
    assert "must be 1-64 letters" in (check_metrics({"dice@0.5": 1.0}) or "")


def test_only_client_certificates_register(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        admin = Identity("admin@lead.org", "lead", KIND_ADMIN, "super")
        for identity in (None, admin):
            with pytest.raises(AuthError, match="accepts client certificates only"):
                server.login(identity, "", MachineInfo())
        site = Identity("site-a", "hospital", KIND_CLIENT)
        client, token, resumed = server.login(site, "", MachineInfo())
        assert (client.instance, resumed) == ("site-a", False)
        assert server.login(site, token, MachineInfo()) == (client, token, True)

    on_server(tmp_path, scenario)


def test_apps_are_served_only_once_deployed_to_clients(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        with pytest.raises(TransferError):
            exchange.app_folder(RUN, "../etc")
        with pytest.raises(Refusal, match="'digits' is not deployed to clients of run 1"):
            exchange.app_folder(RUN, "digits")
        folder = server.store.run_dir(RUN) / "deploy" / "digits"
        folder.mkdir(parents=True)
        assert exchange.app_folder(RUN, "digits") == folder

    on_server(tmp_path, scenario)


def test_revocation_drops_a_client_mid_upload_and_its_update_is_never_folded(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=2, min_num_clients=2)
        site = Identity("site-a", "hospital", KIND_CLIENT, serial=0x51)
        client = server.login(site, "", MachineInfo()).client
        link = server.attach(client, st.ClientStatus(status=st.STARTED, run_number=RUN))
        feed = server.bus.subscribe()
        model = write_model(tmp_path / "u.safetensors", 1.0)

        async def revoked_midway() -> AsyncIterator[WireChunk]:
            for i, chunk in enumerate(model.iter_chunks()):
                if i == 1:
                    server.revocations.revoke("site-a", "it@lead.org")
                    assert server.enforce_revocations() == (["site-a"], [])
                yield WireChunk(*chunk)

        verdict = await upload(exchange, "site-a", header(model.manifest), revoked_midway())
        assert verdict.outcome is SubmitOutcome.REJECTED
        assert "update discarded: site-a was revoked on this server" in verdict.message
        assert training.round.contributed == {} and len(server.registry) == 0
        assert link.closed
        bodies = []
        while not feed._queue.empty():
            event = feed._queue.get_nowait()
            assert event is not None
            bodies.append(event.body)
        rows = [b for b in bodies if isinstance(b, ClientRow) and b.instance == "site-a"]
        assert rows[-1].status == st.REVOKED  # the console shows the site as revoked
        assert ClientGone("site-a", st.REVOKED) in bodies

    on_server(tmp_path, scenario)


def test_revocation_logs_an_admin_out_and_ends_its_feed(tmp_path: Path) -> None:
    """Even once the token the feed was opened with is gone: feeds were cut by token, and a
    token is dropped after 12 idle hours (watching does not count) or as the admin's 65th
    login comes, which a revoked admin could make happen on purpose."""

    async def scenario(server: FLServer) -> None:
        admin = Identity("it@lead.org", "lead", KIND_ADMIN, "super", serial=0x71)
        first, _ = server.admins.login(admin, admin.name)
        feed = server.bus.subscribe(owner=(admin.name, admin.serial, admin.issued))
        for _ in range(MAX_LOGINS_PER_ADMIN):
            token, _ = server.admins.login(admin, admin.name)
        with pytest.raises(AuthError):
            server.admins.authenticate(first, admin)  # the feed's token is gone
        server.revocations.revoke(admin.name, "boss@lead.org")
        assert server.enforce_revocations() == ([], ["it@lead.org"])  # once, for 64 logins
        with pytest.raises(AuthError):
            server.admins.authenticate(token, admin)
        with pytest.raises(Revoked, match=r"it@lead\.org was revoked on this server"):
            await asyncio.wait_for(anext(aiter(feed)), 5)

    on_server(tmp_path, scenario)


def test_a_compressed_round_counts_its_bytes_and_folds_the_decoded_update(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=1, wire_compression=WireCompression.INT8)
        assert training.current_offer().compression is WireCompression.INT8
        download = exchange.model_for("site-a", ModelRequest(RUN, 0, ModelKind.GLOBAL))
        assert download.compression is WireCompression.INT8
        for chunk, raw in encoded_chunks(TensorFile(download.path), download.compression):
            exchange.sent_chunk(download, chunk, raw)
        update = write_model(tmp_path / "u.safetensors", 0.5)

        async def compressed() -> AsyncIterator[WireChunk]:
            for chunk, _ in encoded_chunks(update, WireCompression.INT8):
                yield chunk

        verdict = await upload(exchange, "site-a", header(update.manifest), compressed())
        assert verdict.outcome is SubmitOutcome.ACCEPTED
        await wait_until_async(
            lambda: bool(training.history) and not training._tasks, 10, "round 0 aggregated"
        )
        # 4 + 1 float32 values each way: 20 bytes of tensors, 5 bytes on the wire.
        expected = WireTally("int8", down_bytes=5, down_raw_bytes=20, up_bytes=5, up_raw_bytes=20)
        assert training.history[-1].wire == expected
        lines = (server.store.run_dir(RUN) / "metrics.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["wire"] == expected.as_json()
        folded = safetensors.numpy.load_file(server.store.round_model(RUN, 1))
        assert folded["w"].dtype == np.float32
        assert np.abs(folded["w"] - 0.5).max() <= 0.5 / 255 / 2 and (folded["b"] == 0).all()
        # The final model goes as stored, and no round counts it.
        final = exchange.model_for("site-a", ModelRequest(RUN, 1, ModelKind.GLOBAL))
        assert final.compression is WireCompression.NONE and final.tally is None
        assert training.current_offer().compression is WireCompression.NONE

    on_server(tmp_path, scenario)


def test_a_compressed_update_is_checked_on_its_decoded_values(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        training = train(server, num_rounds=2, min_num_clients=2)
        manifest = write_model(tmp_path / "u.safetensors").manifest
        nan_in_bf16 = np.array([0x7FC0], dtype="<u2").tobytes()

        async def poisoned() -> AsyncIterator[WireChunk]:
            yield WireChunk("b", 0, nan_in_bf16, WireCompression.BF16)

        verdict = await upload(exchange, "site-a", header(manifest), poisoned())
        assert verdict.outcome is SubmitOutcome.REJECTED
        assert verdict.message == "tensor 'b' contains NaN or infinite values"
        assert training.round.contributed == {}
        assert list(server.store.spool_dir(RUN).iterdir()) == []

    on_server(tmp_path, scenario)


def test_uploads_take_turns_and_are_judged_again_when_their_turn_comes(tmp_path: Path) -> None:
    """An upload's client sends nothing before its go; a refusal comes without one, and so
    does the verdict on an upload that became a duplicate while it waited for its turn."""
    order: list[str] = []

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        exchange.uploads = TransferSlots(1, 8, peer_paced_s=60)  # site-a's pauses keep its slot
        train(server, num_rounds=2, min_num_clients=3)
        model = write_model(tmp_path / "u.safetensors", 1.0)
        refused = Sender(chunks_of(model))
        verdict = await exchange.receive(
            "site-a", header(model.manifest, run_number=2), refused.chunks(), refused.go, site="a"
        )
        assert verdict.outcome is SubmitOutcome.REJECTED and not refused.went
        released = asyncio.Event()

        async def held_back() -> AsyncIterator[WireChunk]:
            await released.wait()
            async for chunk in chunks_of(model):
                yield chunk

        async def send(name: str, sender: Sender) -> Verdict:
            async def go() -> None:
                order.append(f"go {name}")
                await sender.go()

            instance = name[:6]
            verdict = await exchange.receive(
                instance, header(model.manifest), sender.chunks(), go, site=instance
            )
            order.append(f"{verdict.outcome.value} {name}")
            return verdict

        first = Sender(held_back())
        uploads = [
            asyncio.create_task(send(name, sender))
            for name, sender in (
                ("site-a", first),
                ("site-b", Sender(chunks_of(model))),
                ("site-a again", Sender(chunks_of(model))),
            )
        ]
        await wait_until_async(lambda: first.went, 5, "site-a's go")
        released.set()
        await asyncio.wait_for(asyncio.gather(*uploads), 10)

    on_server(tmp_path, scenario)
    assert order == [
        "go site-a",
        "accepted site-a",
        "go site-b",
        "accepted site-b",
        "duplicate site-a again",
    ]
