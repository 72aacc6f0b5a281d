"""The metrics endpoint's settings and server, the server's metrics as the feed and the
exchange move them, and what the MLflow tracker hands its child."""

from __future__ import annotations

import asyncio
import collections
import io
import json
import re
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flclientd.agent import RoundDone
from flclientd.connection import Traffic
from flclientd.telemetry import ClientTelemetry
from flcore import startup
from flcore import status as st
from flcore.appconfig import MlflowSettings, parse_server_config
from flcore.certlife import CertLife
from flcore.compression import WireChunk
from flcore.exporter import EndpointSettings, endpoint_settings, exposure, serve_metrics
from flcore.federation import MetricsKind, MetricsReport, SubmitOutcome, UploadKind, Verdict
from flcore.feed import (
    ClientGone,
    ClientRow,
    CommandSeen,
    Heartbeat,
    RoundRecord,
    RunInfo,
    ServerInfo,
    Snapshot,
)
from flcore.identity import KIND_ADMIN, KIND_SERVER
from flcore.progress import ProgressWatch, TransferStalled
from flcore.schema import ConfigError
from flcore.status import ClientStatus
from fldev.cluster import free_ports
from flserverd import mlflow_child
from flserverd.exchange import ModelExchange
from flserverd.server import FLServer
from flserverd.telemetry import ServerTelemetry
from flserverd.tracking import Tracker, _keep_tail, end_status
from provision import pki
from tests.unit.serverparts import upload
from tests.unit.test_exchange import RUN, chunks_of, header, on_server, train, write_model
from tests.unit.test_schema_configs import CLIENT, SERVER, _workspace

ROOT = Path(__file__).resolve().parents[2]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def registry_of(*collectors: Any) -> CollectorRegistry:
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    return registry


def samples_of(*collectors: Any) -> Samples:
    text = generate_latest(registry_of(*collectors)).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("file_name", "signed", "load"),
    [
        ("fed_server.json", SERVER, startup.load_server),
        ("fed_client.json", CLIENT, startup.load_client),
    ],
    ids=["server", "client"],
)
def test_only_the_site_turns_the_metrics_endpoint_on(
    tmp_path: Path, file_name: str, signed: Any, load: Any
) -> None:
    assert "metrics_port" not in startup.to_json(signed)
    ws = _workspace(tmp_path / "site", file_name, startup.to_json(signed), {"metrics_port": 9102})
    loaded = load(ws)
    assert (loaded.metrics_port, loaded.metrics_host) == (9102, "127.0.0.1")
    assert endpoint_settings(loaded, ws, file_name) == EndpointSettings("127.0.0.1", 9102)
    kit = json.loads(startup.to_json(signed))
    kit["metrics_port"] = 9102
    ws = _workspace(tmp_path / "kit", file_name, json.dumps(kit))
    with pytest.raises(ConfigError, match=rf"startup/{file_name}: unknown key 'metrics_port'"):
        load(ws)
    assert endpoint_settings(signed, tmp_path, file_name) is None  # off unless set


def site_with(tmp_path: Path, files: dict[str, bytes], **local: Any) -> Path:
    """A server workspace whose local/fed_server.json sets ``local``, with ``files`` (mode
    0600) in local/."""
    ws = _workspace(tmp_path, "fed_server.json", startup.to_json(SERVER), local)
    for name, data in files.items():
        (ws / "local" / name).write_bytes(data)
        (ws / "local" / name).chmod(0o600)
    return ws


def settings_of(ws: Path) -> EndpointSettings | None:
    return endpoint_settings(startup.load_server(ws), ws, "fed_server.json")


@pytest.mark.parametrize(
    ("local", "message"),
    [
        ({"metrics_tls_cert": "c.pem"}, "metrics_tls_cert is set but metrics_port is not"),
        ({"metrics_port": 9, "metrics_tls_cert": "nope.pem"}, "nope.pem is not a readable file"),
        ({"metrics_port": 9, "metrics_tls_cert": "c.pem"}, "go together"),
        ({"metrics_port": 9, "metrics_tls_client_ca": "c.pem"}, "needs metrics_tls_cert"),
        (
            {"metrics_port": 9, "metrics_tls_cert": "c.pem", "metrics_tls_key": "open.key"},
            "may be read by others",
        ),
        ({"metrics_port": 70000}, "must be between 0 and 65535"),
    ],
    ids=["no-port", "missing", "no-key", "ca-without-tls", "open-key", "port"],
)
def test_endpoint_settings_say_what_is_wrong(
    tmp_path: Path, local: dict[str, Any], message: str
) -> None:
    ws = site_with(tmp_path, {"c.pem": b"cert", "open.key": b"key"}, **local)
    (ws / "local" / "open.key").chmod(0o644)
    with pytest.raises(ConfigError, match=message):
        settings_of(ws)


def test_only_loopback_counts_as_this_machine() -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert EndpointSettings(host, 1).loopback
    for host in ("0.0.0.0", "192.0.2.1", "metrics.example.org"):  # noqa: S104
        assert not EndpointSettings(host, 1).loopback
    assert EndpointSettings("::1", 9).url == "http://[::1]:9/metrics"


def test_an_endpoint_any_scraper_reaches_is_said_so() -> None:
    """With a certificate but no client CA, an HTTPS endpoint on the network was as open as
    plain HTTP, and nothing said so."""
    cert, key, ca = Path("m.crt"), Path("m.key"), Path("ca.pem")
    plain = exposure(EndpointSettings("0.0.0.0", 9))  # noqa: S104
    assert plain is not None and plain.startswith("is plain HTTP on a non-loopback address")
    tls = exposure(EndpointSettings("192.0.2.1", 9, cert, key))
    assert tls is not None and tls.startswith("takes any scraper over HTTPS")
    assert "give it metrics_tls_client_ca" in tls
    assert exposure(EndpointSettings("192.0.2.1", 9, cert, key, ca)) is None
    assert exposure(EndpointSettings("127.0.0.1", 9)) is None


LIVES = [
    CertLife("own", datetime.fromtimestamp(1.7e9, UTC), datetime.fromtimestamp(1.8e9, UTC), ""),
    CertLife("ca", datetime.fromtimestamp(1.7e9, UTC), datetime.fromtimestamp(2.1e9, UTC), ""),
]
"""A kit's certificates, as the endpoint shows when they end."""


def test_endpoint_serves_plain_http_on_loopback_and_refuses_a_port_in_use() -> None:
    (port,) = free_ports(1)
    endpoint = serve_metrics(EndpointSettings("127.0.0.1", port), [], LIVES)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        assert "process_resident_memory_bytes" in text
        expiry = "flstack_certificate_expiry_timestamp_seconds"
        assert f'{expiry}{{certificate="own"}} 1.8e+09' in text
        assert f'{expiry}{{certificate="ca"}} 2.1e+09' in text
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on {url}"):
            serve_metrics(EndpointSettings("127.0.0.1", port), [], LIVES)
    finally:
        endpoint.close()


def metrics_tls_files() -> dict[str, bytes]:
    """A CA (``ca.pem``), the endpoint's certificate for 127.0.0.1 (``m.crt``, ``m.key``)
    and a scraper's client certificate (``s.crt``, ``s.key``), all from that CA."""
    now = datetime.now(UTC)
    ca = pki.create_ca("p", "org", "ecdsa-p256", 30, now)
    server = pki.issue(ca, pki.Subject("127.0.0.1", "org", KIND_SERVER), "ecdsa-p256", 30, now)
    scraper = pki.issue(ca, pki.Subject("prom", "org", KIND_ADMIN), "ecdsa-p256", 30, now)
    return {
        "ca.pem": pki.cert_pem(ca.cert),
        "m.crt": pki.cert_pem(server.cert),
        "m.key": pki.key_pem(server.key),
        "s.crt": pki.cert_pem(scraper.cert),
        "s.key": pki.key_pem(scraper.key),
    }


def test_endpoint_over_tls_requires_the_scrapers_certificate(tmp_path: Path) -> None:
    files = metrics_tls_files()
    (port,) = free_ports(1)
    ws = site_with(
        tmp_path,
        files,
        metrics_port=port,
        metrics_tls_cert="m.crt",
        metrics_tls_key="m.key",
        metrics_tls_client_ca=str(tmp_path / "ca.pem"),  # an absolute path is kept
    )
    (tmp_path / "ca.pem").write_bytes(files["ca.pem"])
    settings = settings_of(ws)
    assert settings is not None and settings.url == f"https://127.0.0.1:{port}/metrics"
    endpoint = serve_metrics(settings, [], LIVES)
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            urllib.request.urlopen(settings.url, timeout=5, context=context)  # noqa: S310
        context.load_cert_chain(ws / "local" / "s.crt", ws / "local" / "s.key")
        with urllib.request.urlopen(settings.url, timeout=5, context=context) as reply:  # noqa: S310
            assert b"process_cpu_seconds_total" in reply.read()
    finally:
        endpoint.close()


def test_a_connection_that_sends_nothing_stops_neither_scrapes_nor_shutdown(
    tmp_path: Path,
) -> None:
    """prometheus_client's server shook hands inside accept(): one idle TCP connection to a
    TLS endpoint stopped every scrape while it stayed open, and the daemon's shutdown too."""
    files = metrics_tls_files()
    (port,) = free_ports(1)
    ws = site_with(
        tmp_path, files, metrics_port=port, metrics_tls_cert="m.crt", metrics_tls_key="m.key"
    )
    (tmp_path / "ca.pem").write_bytes(files["ca.pem"])
    settings = settings_of(ws)
    assert settings is not None
    endpoint = serve_metrics(settings, [], LIVES)
    idle = socket.create_connection(("127.0.0.1", port))
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with urllib.request.urlopen(settings.url, timeout=5, context=context) as reply:  # noqa: S310
            assert b"process_cpu_seconds_total" in reply.read()
    finally:
        closing = threading.Thread(target=endpoint.close)
        closing.start()
        closing.join(5)
        idle.close()
    assert not closing.is_alive(), "close() waited for the idle connection"


# --------------------------------------------------------------------------- mlflow config


def test_the_mlflow_key_of_an_app() -> None:
    config = parse_server_config({"mlflow": {"tracking_uri": "mlruns", "experiment": "spleen"}})
    assert config.mlflow == MlflowSettings("mlruns", "spleen")
    assert parse_server_config({}).mlflow is None
    database = "postgresql://db.example.org/mlflow?sslmode=require"  # its options, no token
    assert parse_server_config({"mlflow": {"tracking_uri": database}}).mlflow is not None
    for uri, message in (
        ("https://me:secret@mlflow.example.org", "must not carry a user name, password"),
        # a tracking server's token in the query reached every site with the app
        ("https://mlflow.example.org/?token=abc", "must not carry a user name, password or query"),
        ("ftp://mlflow.example.org", "has the scheme 'ftp'"),
        ("  ", "must not be empty"),
        ("file:///x\n", "control characters"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_server_config({"mlflow": {"tracking_uri": uri}})


def test_how_a_run_ended_in_mlflows_words() -> None:
    ends = ("finished", "aborted by admin", "server shut down by a@b.org", "an unexpected error")
    assert [end_status(r) for r in ends] == ["FINISHED", "KILLED", "KILLED", "FAILED"]


# --------------------------------------------------------------------------- server metrics


def test_server_metrics_follow_the_feed(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        telemetry = ServerTelemetry(server)
        now = 1_000_000.0
        row = ClientRow("flclient1", "flclient1", last_heartbeat=now)
        info = ServerInfo("p", "server", heartbeat_interval_s=1.0)
        history = (RoundRecord(0, {"acc": 0.5}, 2, 7.0),)
        telemetry.seen(Snapshot(info, RunInfo(1, st.STARTED, num_rounds=3, history=history)))
        telemetry.seen(row)
        telemetry.seen(replace(row, instance="flclient2", client_name="flclient2"))
        telemetry.seen(Heartbeat("flclient2", 4e9))  # far in the future: online
        telemetry.seen(ClientGone("flclient1", "no heartbeat for 31s"))
        telemetry.seen(CommandSeen("a@b.org", "start server", True))
        telemetry.seen(CommandSeen("a@b.org", "frobnicate now", False))
        for record in history, (*history, RoundRecord(1, {}, 2, 3.0)):
            telemetry.seen(RunInfo(1, st.STARTED, current_round=2, num_rounds=3, history=record))
        got = samples_of(*telemetry.collectors())
        assert value(got, "flstack_server_clients", state="online") == 1
        assert value(got, "flstack_server_clients", state="lost") == 1
        assert value(got, "flstack_server_clients_removed_total", reason="heartbeat_timeout") == 1
        beat = "flstack_server_site_last_heartbeat_timestamp_seconds"
        assert value(got, beat, site="flclient2") == 4e9
        assert value(got, "flstack_server_admin_commands_total", command="start", outcome="ok")
        assert value(got, "flstack_server_admin_commands_total", command="other", outcome="failed")
        # the round of an earlier server process is not observed; round 1 once
        assert value(got, "flstack_server_rounds_completed_total") == 1
        assert value(got, "flstack_server_round_duration_seconds_sum") == 3.0
        assert value(got, "flstack_server_round") == 2
        assert value(got, "flstack_server_run_status", status=st.STARTED) == 1
        # a fresh start of the same run counts its rounds again from the first
        telemetry.seen(RunInfo(1, st.STARTING))
        telemetry.seen(RunInfo(1, st.STARTED, num_rounds=3, history=history))
        again = samples_of(*telemetry.collectors())
        assert value(again, "flstack_server_rounds_completed_total") == 2
        telemetry.seen(replace(row, connected=True))  # back after being lost
        back = samples_of(telemetry)
        assert value(back, "flstack_server_clients", state="lost") == 0
        assert value(back, "flstack_server_clients", state="stale") == 1  # its beat is old

    on_server(tmp_path, scenario)


def test_rejected_uploads_are_counted_by_reason(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        telemetry = ServerTelemetry(server)
        exchange.watchers.append(telemetry)
        train(server, num_rounds=2, min_num_clients=2)
        good = write_model(tmp_path / "u.safetensors", 1.0)
        poisoned = write_model(tmp_path / "nan.safetensors", float("nan"))
        other = write_model(tmp_path / "f64.safetensors", dtype=np.float64)
        cases = [
            (header(good.manifest, run_number=5), good),
            (header(good.manifest, round=1), good),
            (header(other.manifest), other),
            (header(good.manifest, metrics={"x": float("inf")}), good),
            (header(poisoned.manifest), poisoned),
            (header(good.manifest), good),
            (header(good.manifest), good),
        ]
        verdicts = [await upload(exchange, "a", h, chunks_of(m)) for h, m in cases]
        assert [v.outcome for v in verdicts][-2:] == [
            SubmitOutcome.ACCEPTED,
            SubmitOutcome.DUPLICATE,
        ]
        exchange.refuse("a", "unknown upload kind 99")
        exchange.accept_metrics(
            "a", MetricsReport(RUN, 2, MetricsKind.GLOBAL_VALIDATION, "", {}, 1)
        )
        exchange.sent("model", 100)
        got = samples_of(*telemetry.collectors())
        rejected = "flstack_server_uploads_rejected_total"
        for reason in ("wrong_run", "manifest", "metrics", "content"):
            assert value(got, rejected, kind="update", reason=reason) == 1, reason
        assert value(got, rejected, kind="unknown", reason="unreadable") == 1
        assert value(got, "flstack_server_uploads_total", kind="update", outcome="rejected") == 4
        assert value(got, "flstack_server_uploads_total", kind="update", outcome="late") == 1
        assert value(got, "flstack_server_uploads_total", kind="update", outcome="duplicate") == 1
        # what arrived: the accepted update, and the poisoned one's "b" before its NaN "w"
        received = value(got, "flstack_server_received_bytes_total", kind="update")
        assert received == good.manifest.total_bytes + 4
        assert value(got, "flstack_server_sent_bytes_total", kind="model") == 100
        reports = "flstack_server_metrics_reports_total"
        assert value(got, reports, kind="global_validation", outcome="late") == 1

    on_server(tmp_path, scenario)


def test_paused_runs_and_outlier_scores_in_the_server_metrics(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        telemetry = ServerTelemetry(server)
        run = RunInfo(1, st.STARTED, num_rounds=5)
        telemetry.seen(Snapshot(ServerInfo("p", "s"), run))
        got = samples_of(*telemetry.collectors())
        assert value(got, "flstack_server_round_outlier_score_max") == 0
        scored = {"flclient3": 7.5, "flclient2": 3.0, "flclient1": 0.6}
        telemetry.seen(replace(run, history=(RoundRecord(0, {}, 3, 2.0, scored),)))
        telemetry.seen(replace(run, server_status=st.PAUSED, fault="server disk full: ..."))
        got = samples_of(*telemetry.collectors())
        assert value(got, "flstack_server_run_status", status=st.PAUSED) == 1
        assert value(got, "flstack_server_run_status", status=st.STARTED) == 0
        assert value(got, "flstack_server_round_outlier_score_max") == 7.5
        assert value(got, "flstack_server_outlier_updates_total") == 2
        # with two updates a score says little: the log names none, nor is any counted
        telemetry.seen(replace(run, history=(RoundRecord(1, {}, 2, 2.0, {"flclient1": 5.0}),)))
        got = samples_of(*telemetry.collectors())
        assert value(got, "flstack_server_round_outlier_score_max") == 5.0
        assert value(got, "flstack_server_outlier_updates_total") == 2
        # no fault text, site or instance name reaches the endpoint with the scores
        text = generate_latest(registry_of(*telemetry.collectors())).decode()
        assert "disk full" not in text and "flclient" not in text

    on_server(tmp_path, scenario)


def test_the_spool_gauges_count_uploads_in_flight_and_updates_kept_for_their_round(
    tmp_path: Path,
) -> None:
    async def scenario(server: FLServer) -> None:
        telemetry = ServerTelemetry(server)
        train(server, num_rounds=2)
        telemetry.seen(Snapshot(ServerInfo("p", "s"), RunInfo(RUN, st.STARTED, num_rounds=2)))
        spool = server.store.spool_dir(RUN)
        (spool / "arriving.safetensors").write_bytes(b"x" * 100)
        (spool / "kept.safetensors").write_bytes(b"y" * 1000)
        server.store.keep_update(RUN, 0, "flclient1", spool / "kept.safetensors")
        got = samples_of(telemetry)
        assert value(got, "flstack_server_spool_files") == 2
        assert value(got, "flstack_server_spool_bytes") == 1100
        server.store.drop_round_updates(RUN, 0)
        assert value(samples_of(telemetry), "flstack_server_spool_bytes") == 100

    on_server(tmp_path, scenario)


def test_a_stalled_upload_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("flserverd.exchange.ProgressWatch", partial(ProgressWatch, limit=0.2))

    async def scenario(server: FLServer) -> None:
        exchange = ModelExchange(server)
        telemetry = ServerTelemetry(server)
        exchange.watchers.append(telemetry)
        train(server, num_rounds=2, min_num_clients=2)
        model = write_model(tmp_path / "u.safetensors", 1.0)

        async def first_chunk_only() -> AsyncIterator[WireChunk]:
            yield WireChunk(*next(iter(model.iter_chunks())))
            await asyncio.Event().wait()  # the sender stops sending

        with pytest.raises(TransferStalled):
            await upload(exchange, "a", header(model.manifest), first_chunk_only())
        got = samples_of(*telemetry.collectors())
        assert value(got, "flstack_server_uploads_stalled_total", kind="update") == 1
        assert value(got, "flstack_server_uploads_total", kind="update", outcome="accepted") == 0

    on_server(tmp_path, scenario)


# --------------------------------------------------------------------------- tracking


class Recording(Tracker):
    """A tracker whose child is a list: what it would have been sent."""

    def __init__(self, server: FLServer) -> None:
        super().__init__(server, server.workspace)
        self.sent: list[dict[str, Any]] = []

    def _send(self, **message: Any) -> None:
        self.sent.append(message)


def test_the_tracker_hands_its_child_a_run_its_rounds_and_its_sites(tmp_path: Path) -> None:
    async def scenario(server: FLServer) -> None:
        tracker = Recording(server)
        mlflow = MlflowSettings("mlruns", "")
        train(server, num_rounds=2, mlflow=mlflow)
        r0 = RoundRecord(0, {"acc": 0.5}, 2, 1.0)
        r1 = RoundRecord(1, {"acc": 0.7}, 2, 1.0, {"flclient2": 1.1, "flclient1": 0.9})
        final = RoundRecord(2, {"acc": 0.8}, 2)
        tracker.seen(RunInfo(RUN, st.STARTING))
        tracker.seen(RunInfo(RUN, st.STARTED, app="digits", num_rounds=2))
        tracker.seen(RunInfo(RUN, st.STARTED, app="digits", num_rounds=2, history=(r0,)))
        manifest = write_model(tmp_path / "m.safetensors").manifest
        accepted = Verdict(SubmitOutcome.ACCEPTED, "")
        tracker.upload_judged("flclient1", header(manifest, round=1), accepted)
        tracker.upload_judged("flclient1", header(manifest, run_number=7), accepted)
        tracker.upload_judged("flclient1", header(manifest, kind=UploadKind.BEST_LOCAL), accepted)
        report = MetricsReport(RUN, 2, MetricsKind.GLOBAL_VALIDATION, "", {"acc": 0.8}, 5)
        tracker.report_judged("flclient2", report, accepted)
        tracker.seen(
            RunInfo(
                RUN,
                st.STOPPED,
                num_rounds=2,
                history=(r0, r1, final),
                reason="finished",
                best_metric="acc=0.8 (round 2)",
            )
        )
        ops = [(m["op"], m.get("round")) for m in tracker.sent]
        assert ops == [
            ("start", None),
            ("round", 0),
            ("site", 1),
            ("site", 2),
            ("round", 1),
            ("round", 2),
            ("end", None),
        ]
        start, end = tracker.sent[0], tracker.sent[-1]
        assert start["resume"] is False and start["run_name"] == "run_1"
        assert start["experiment"] == "digits"  # the app's name when none is given
        assert start["tracking_uri"] == (server.workspace / "mlruns").as_uri()
        assert start["params"]["num_rounds"] == 2
        assert end["status"] == "FINISHED" and end["best"] == "acc=0.8 (round 2)"
        assert end["models"] == [
            str(server.store.global_model(RUN)),
            str(server.store.best_model(RUN)),
        ]
        assert tracker.sent[1]["outliers"] == {}
        assert tracker.sent[4]["outliers"] == {"flclient2": 1.1, "flclient1": 0.9}
        # a run stopped early and continued (start server, no "training starting") logs on
        # in its MLflow run, from the round after the last one it logged
        tracker.sent.clear()
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2, history=(r0,)))
        tracker.seen(
            RunInfo(RUN, st.STOPPED, num_rounds=2, history=(r0,), reason="aborted by admin")
        )
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2, history=(r0,)))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2, history=(r0, r1)))
        assert [(m["op"], m.get("resume"), m.get("round")) for m in tracker.sent] == [
            ("start", True, None),
            ("end", None, None),
            ("start", True, None),
            ("round", None, 1),
        ]
        assert tracker.sent[1]["status"] == "KILLED"
        # after a restart of the server the run goes on in the MLflow run it had
        resumed = Recording(server)
        server.training = None
        train(server, num_rounds=3, mlflow=mlflow)
        later = RunInfo(RUN, st.STARTED, num_rounds=3, history=(r0, r1))
        resumed.seen(Snapshot(ServerInfo("p", "s"), later))
        assert [(m["op"], m.get("resume")) for m in resumed.sent] == [("start", True)]
        # an app without the key is not tracked
        quiet = Recording(server)
        server.training = None
        train(server, num_rounds=2)
        quiet.seen(RunInfo(RUN, st.STARTED, num_rounds=2, history=(r0,)))
        assert quiet.sent == []

    on_server(tmp_path, scenario)


def test_a_tracked_run_without_mlflow_installed_is_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(server: FLServer) -> None:
        tracker = Recording(server)
        train(server, num_rounds=2, mlflow=MlflowSettings("mlruns"))
        monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2))
        assert tracker.sent == []

    on_server(tmp_path, scenario)
    warnings = [r.getMessage() for r in caplog.records if "not installed" in r.getMessage()]
    assert len(warnings) == 1 and "pip install 'flstack[mlflow]'" in warnings[0]


def test_a_tracked_run_whose_store_leaves_the_workspace_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An app deployed before the server checked its store at upload and start (a run the
    server resumes after an upgrade): MLflow never gets the path, the run trains on."""

    async def scenario(server: FLServer) -> None:
        tracker = Recording(server)
        train(server, num_rounds=2, mlflow=MlflowSettings(str(tmp_path.parent / "mlruns")))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2))
        assert tracker.sent == []

    on_server(tmp_path, scenario)
    warnings = [r.getMessage() for r in caplog.records if "not logged to MLflow" in r.getMessage()]
    assert len(warnings) == 1
    assert "leads MLflow out of the server's workspace" in warnings[0]
    assert warnings[0].endswith("the run goes on without it")


# --------------------------------------------------------------------------- the child


def child_logger(monkeypatch: pytest.MonkeyPatch) -> tuple[mlflow_child.Logger, io.StringIO]:
    import mlflow
    import mlflow.entities
    import mlflow.tracking

    said = io.StringIO()
    monkeypatch.setattr(mlflow_child, "TO_SERVER", said)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow_child.Logger(mlflow), said


def start_message(tmp_path: Path, uri: str, resume: bool) -> dict[str, Any]:
    return {
        "op": "start",
        "run": 1,
        "tracking_uri": uri,
        "experiment": "e",
        "run_name": "run_1",
        "resume": resume,
        "record": str(tmp_path / "mlflow_run.json"),
        "tags": {"flstack.run_number": "1"},
        "params": {"num_rounds": 2},
    }


def test_the_child_logs_a_run_and_resumes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger, said = child_logger(monkeypatch)
    uri = (tmp_path / "store").as_uri()
    logger.handle(start_message(tmp_path, uri, resume=False))
    logger.handle(
        {"op": "round", "run": 1, "round": 0, "metrics": {"acc": 0.5}, "clients": 2, "seconds": 1.5}
    )
    logger.handle(
        {"op": "site", "run": 1, "site": "s1", "round": 0, "metrics": {"acc": 0.4}, "time": 1.0}
    )
    first = json.loads((tmp_path / "mlflow_run.json").read_text())
    resumed, _ = child_logger(monkeypatch)  # the server restarted
    resumed.handle(start_message(tmp_path, uri, resume=True))
    resumed.handle(
        {"op": "round", "run": 1, "round": 1, "metrics": {"acc": 0.7}, "clients": 2, "seconds": 1.0}
    )
    resumed.handle(
        {"op": "site", "run": 1, "site": "s1", "round": 1, "metrics": {"acc": 0.6}, "time": 2.0}
    )
    resumed.handle(
        {
            "op": "end",
            "run": 1,
            "status": "KILLED",
            "best": "acc=0.7 (round 1)",
            "models": [str(tmp_path / "mlflow_run.json"), str(tmp_path / "gone")],
        }
    )
    client = logger.runs[1].client
    run = client.get_run(first["run_id"])
    assert run.info.status == "KILLED" and run.data.tags["flstack.best"] == "acc=0.7 (round 1)"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "acc")] == [0, 1]
    assert run.data.metrics["round_duration_seconds"] == 1.0
    site = client.get_run(first["sites"]["s1"])
    assert site.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert [m.step for m in client.get_metric_history(site.info.run_id, "acc")] == [0, 1]
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "models")]
    assert artifacts == ["models/mlflow_run.json"]
    # the run is continued after it was killed: its runs are running again, and a round's
    # outlier scores go to the sites' runs, the highest to the run's
    continued, _ = child_logger(monkeypatch)
    continued.handle(start_message(tmp_path, uri, resume=True))
    continued.handle(
        {
            "op": "round",
            "run": 1,
            "round": 2,
            "metrics": {"acc": 0.8},
            "clients": 3,
            "seconds": 1.0,
            "outliers": {"s1": 4.5, "s2": 0.8},
        }
    )
    run = client.get_run(first["run_id"])
    assert run.info.status == "RUNNING" and run.data.metrics["outlier_score_max"] == 4.5
    assert client.get_run(first["sites"]["s1"]).info.status == "RUNNING"
    scores = client.get_metric_history(first["sites"]["s1"], "outlier_score")
    assert [(m.step, m.value) for m in scores] == [(2, 4.5)]
    s2 = json.loads((tmp_path / "mlflow_run.json").read_text())["sites"]["s2"]
    assert client.get_run(s2).data.tags["flstack.site"] == "s2"
    assert "warning" not in said.getvalue()


def test_a_tracking_server_away_is_a_warning_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger, said = child_logger(monkeypatch)
    (port,) = free_ports(1)  # nobody listens there
    logger.handle(start_message(tmp_path, f"http://127.0.0.1:{port}", resume=False))
    logger.handle(
        {"op": "round", "run": 1, "round": 0, "metrics": {}, "clients": 1, "seconds": 1.0}
    )
    lines = [json.loads(line) for line in said.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["warning"]
    assert lines[0]["message"].startswith("cannot log start of run 1 (1 failed call(s) so far)")
    assert logger.failures == 2


# --------------------------------------------------------------------------- the dashboard


def served_names(*collectors: Any) -> set[str]:
    """The names of every sample these collectors serve, empty families included."""
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    return {
        family.name + suffix
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for suffix in suffixes.get(family.type, ("",))
    }


def client_telemetry() -> ClientTelemetry:
    """A client's collector over a stand-in for its agent."""
    uplink = SimpleNamespace(connected=asyncio.Event(), logins=1, retries=0, stalls=0)
    agent = SimpleNamespace(
        startup=CLIENT,
        status=ClientStatus(),
        uplink=uplink,
        conn=SimpleNamespace(traffic=Traffic()),
        last_round=RoundDone(0, 1.0, 2.0, SubmitOutcome.ACCEPTED),
        worker=None,
    )
    return ClientTelemetry(agent)  # type: ignore[arg-type]


def test_the_grafana_dashboard_asks_only_for_metrics_the_daemons_serve(tmp_path: Path) -> None:
    dashboard = json.loads((ROOT / "packaging" / "grafana" / "flstack.json").read_text())
    asked = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in re.findall(r"\b((?:flstack|process)_\w+)", target["expr"])
    }

    async def scenario(server: FLServer) -> None:
        served = served_names(*ServerTelemetry(server).collectors(), client_telemetry())
        served |= {"process_resident_memory_bytes", "process_cpu_seconds_total"}
        assert asked <= served, asked - served
        ours = {name for name in served if name.startswith("flstack_")}
        assert all(re.fullmatch(r"flstack_(server|client)_[a-z_]+", name) for name in ours)
        assert len(asked) > 20

    on_server(tmp_path, scenario)


def test_a_store_the_server_cannot_write_is_a_warning_from_the_real_child(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="flserverd.tracking")

    async def scenario(server: FLServer) -> None:
        tracker = Tracker(server, server.workspace)
        (server.workspace / "blocker").write_text("a file, where MLflow needs a folder")
        train(server, num_rounds=2, mlflow=MlflowSettings("blocker/mlruns"))
        tracker.seen(RunInfo(RUN, st.STARTING))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2))
        tracker.seen(RunInfo(RUN, st.STARTED, num_rounds=2, history=(RoundRecord(0, {"a": 1}),)))
        await tracker.close()  # the child works through what it was sent, then ends

    on_server(tmp_path, scenario)
    said = [r.getMessage() for r in caplog.records if r.name == "flserverd.tracking"]
    assert said[0] == f"run 1: logging to MLflow at {(tmp_path / 'blocker' / 'mlruns').as_uri()}"
    assert said[1].startswith("MLflow: cannot log start of run 1 (1 failed call(s) so far): ")
    assert len(said) == 2  # the round failed too, within the same minute: no second warning
    assert all(r.levelname != "ERROR" for r in caplog.records)


def test_a_line_of_the_mlflow_child_longer_than_asyncio_reads_does_not_stop_the_reading() -> None:
    """A 200 KB line (a progress bar redrawn with carriage returns) once ended the reading of
    the child's stderr with an error; the child then blocked on a full pipe."""

    async def scenario() -> list[str]:
        stream = asyncio.StreamReader()
        stream.feed_data(b"\r" * 200_000 + b"\nlast words\n")
        stream.feed_eof()
        tail: collections.deque[str] = collections.deque(maxlen=5)
        await _keep_tail(stream, tail)
        return list(tail)

    assert asyncio.run(scenario())[-1] == "last words"
