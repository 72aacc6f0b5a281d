"""The daemons' serde edges: what one side writes, the other reads back the same, and
nothing unknown is read as something known."""

from __future__ import annotations

import math
import time

import pytest

from flclientd import serde as client_serde
from flcore.compression import WireCompression
from flcore.federation import (
    ClientHeartbeat,
    Closed,
    Command,
    CommandResult,
    Downward,
    Hello,
    LogBatch,
    Login,
    MetricsKind,
    MetricsReport,
    ModelKind,
    ModelRequest,
    RunEnded,
    StatusChanged,
    SubmitHeader,
    SubmitOutcome,
    TaskKind,
    TaskOffer,
    Unreadable,
    UploadKind,
    Upward,
    Verdict,
)
from flcore.feed import MAX_LABEL, MAX_TEXT, MAX_TRACEBACK, LogEntry
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.status import ClientStatus
from flcore.tensorfile import Manifest, TensorSpec
from flcore.tokens import new_token
from flcore.wire import WireError
from flserverd import serde as server_serde

STATUS = ClientStatus(
    status="training started",
    run_number=3,
    round=7,
    samples=48,
    app="digits",
    gpus_in_use=2,
    cross_validate=True,
)
MANIFEST = Manifest((TensorSpec("w", "F32", (2, 3)), TensorSpec("b", "F32", (3,))))


def _wire(message: fed_pb2.ClientMessage) -> fed_pb2.ClientMessage:
    return fed_pb2.ClientMessage.FromString(message.SerializeToString())


EARLIER = time.time() - 60  # a line dated within what the server takes


@pytest.mark.parametrize(
    "message",
    [
        Hello("token-1", STATUS),
        ClientHeartbeat(STATUS),
        StatusChanged(STATUS),
        CommandResult("c7", True, "deployed", {"app": "digits", "run_number": 3}),
        LogBatch((LogEntry(EARLIER, "INFO", "flclientd.agent", "round 7 done", "site-a"),), 4),
    ],
)
def test_upward_messages_survive_the_wire(message: Upward) -> None:
    proto = client_serde.upward_to_proto(message)
    assert server_serde.upward_from_proto(_wire(proto), "site-a") == message


def test_server_bounds_what_a_client_sends() -> None:
    long = "x" * 100_000
    trace = "Traceback (most recent call last):\n" + long + "\nValueError: the end"
    status = ClientStatus(status=long, error=long, traceback=trace, app=long)
    read = server_serde.upward_from_proto(
        client_serde.upward_to_proto(StatusChanged(status)), "site-a"
    )
    assert isinstance(read, StatusChanged)
    assert len(read.status.status) == 64 and len(read.status.app) == MAX_LABEL
    assert len(read.status.error) <= MAX_TEXT and "characters cut" in read.status.error
    # A traceback keeps its end, where the exception is.
    assert len(read.status.traceback) <= MAX_TRACEBACK
    assert read.status.traceback.endswith("ValueError: the end")
    result = client_serde.upward_to_proto(CommandResult("c1", True, long, {"pad": long}))
    read_result = server_serde.upward_from_proto(result, "site-a")
    assert isinstance(read_result, CommandResult)
    assert len(read_result.text) <= MAX_TEXT
    assert read_result.data == {}  # more than MAX_RESULT_JSON of data is dropped whole
    lines = tuple(LogEntry(0.0, "INFO", "x", "y", "site-a") for _ in range(900))
    batch = server_serde.upward_from_proto(client_serde.upward_to_proto(LogBatch(lines)), "s")
    assert isinstance(batch, LogBatch) and len(batch.records) == server_serde.MAX_LOG_BATCH
    assert {r.source for r in batch.records} == {"s"}  # the server names the source
    odd = fed_pb2.ClientMessage(logs=fed_pb2.LogBatch(dropped=-5))
    assert server_serde.upward_from_proto(odd, "s") == LogBatch((), 0)


def test_a_log_line_dated_where_no_honest_site_could_be_gets_the_time_it_arrived() -> None:
    """A NaN or year-30,000,000 time took every console down when it drew the line, and a line
    dated ahead stayed below every later one in the consoles' logs."""
    stamps = [math.nan, math.inf, -math.inf, 1e18, -1e18, 0.0]
    before = time.time()
    outside = [before + server_serde.LOG_AHEAD_S + 3600, before - server_serde.LOG_BEHIND_S - 60]
    kept = [before - 3600, before + 1]  # a line kept while away; a clock a second ahead
    lines = tuple(LogEntry(t, "INFO", "x", "y", "s") for t in (*stamps, *outside, *kept))
    batch = server_serde.upward_from_proto(client_serde.upward_to_proto(LogBatch(lines)), "s")
    after = time.time()
    assert isinstance(batch, LogBatch)
    *replaced, first_kept, second_kept = (r.time for r in batch.records)
    assert all(before <= t <= after for t in replaced) and len(replaced) == 8
    assert [first_kept, second_kept] == kept


def test_result_data_that_is_no_object_or_no_unicode_is_dropped() -> None:
    """An escaped lone surrogate, too: copied into a reply, it made every admin's
    check_status client an unexpected error."""
    for data_json in ("[1, 2]", "{not json", "", '{"error": "boom \\ud800"}'):
        message = fed_pb2.ClientMessage(
            result=fed_pb2.CommandResult(command_id="c1", ok=True, text="t", data_json=data_json)
        )
        read = server_serde.upward_from_proto(message, "site-a")
        assert read == CommandResult("c1", True, "t", {})


def test_a_control_message_without_a_body_is_unreadable_on_both_sides() -> None:
    read = server_serde.upward_from_proto(fed_pb2.ClientMessage(), "site-a")
    assert isinstance(read, Unreadable) and "no body" in read.reason
    assert isinstance(client_serde.downward_from_proto(fed_pb2.ServerMessage()), Unreadable)


@pytest.mark.parametrize(
    "message",
    [
        Command("c3", "start", {"run_number": 2, "gpus": 0}),
        TaskOffer(2, 5, TaskKind.TRAIN),
        *(TaskOffer(2, 5, TaskKind.TRAIN, compression=c) for c in WireCompression),
        TaskOffer(2, 6, TaskKind.VALIDATE_GLOBAL),
        TaskOffer(2, -1, TaskKind.CROSS_VALIDATE, ("global", "site-b"), ("site-c",)),
        RunEnded(2, "training stopped", "finished"),
        Closed("replaced by a new login"),
    ],
)
def test_downward_messages_survive_the_wire(message: Downward) -> None:
    proto = server_serde.downward_to_proto(message)
    wire = fed_pb2.ServerMessage.FromString(proto.SerializeToString())
    assert client_serde.downward_from_proto(wire) == message


def test_a_fan_outs_command_is_converted_once_and_a_new_one_anew() -> None:
    command = Command("c1", "check_status", {})
    first = server_serde.downward_to_proto(command)
    assert server_serde.downward_to_proto(command) is first  # the same object, every link
    equal = Command("c1", "check_status", {})  # equal, but another command
    assert server_serde.downward_to_proto(equal) is not first
    other = server_serde.downward_to_proto(Command("c2", "shutdown", {"force": True}))
    assert client_serde.downward_from_proto(other) == Command("c2", "shutdown", {"force": True})
    assert client_serde.downward_from_proto(first) == command


def test_an_unknown_compression_is_not_taken_for_none() -> None:
    compression = common_pb2.WireCompression.ValueType(7)
    task = fed_pb2.TaskOffer(
        run_number=2, round=1, kind=fed_pb2.TASK_KIND_TRAIN, compression=compression
    )
    read = client_serde.downward_from_proto(fed_pb2.ServerMessage(task=task))
    assert isinstance(read, Unreadable)
    assert "unknown wire compression 7" in read.reason


def test_an_unknown_task_kind_is_not_taken_for_training() -> None:
    task = fed_pb2.TaskOffer(run_number=2, round=1, kind=fed_pb2.TaskKind.ValueType(99))
    offer = fed_pb2.ServerMessage(task=task)
    read = client_serde.downward_from_proto(offer)
    assert isinstance(read, Unreadable)
    assert "unknown task kind 99" in read.reason and not read.command_id


def test_malformed_command_arguments_still_get_an_answer() -> None:
    for args_json in ("[1]", "{oops"):
        command = fed_pb2.ServerCommand(command_id="c9", name="start", args_json=args_json)
        read = client_serde.downward_from_proto(fed_pb2.ServerMessage(command=command))
        assert read == Unreadable("malformed command arguments", "c9")


@pytest.mark.parametrize("kind", list(ModelKind))
def test_model_requests_survive_the_wire(kind: ModelKind) -> None:
    request = ModelRequest(4, 2, kind, "site-b" if kind is ModelKind.LOCAL else "")
    proto = client_serde.model_request_to_proto("tok", request)
    assert proto.token == "tok"
    assert server_serde.model_request_from_proto(proto) == request


def test_an_unknown_model_kind_is_refused() -> None:
    for kind in (0, 99):
        with pytest.raises(WireError, match=f"unknown model kind {kind}"):
            request = fed_pb2.ModelRequest(kind=fed_pb2.ModelKind.ValueType(kind))
            server_serde.model_request_from_proto(request)


@pytest.mark.parametrize("kind", list(UploadKind))
def test_upload_headers_survive_the_wire(kind: UploadKind) -> None:
    header = SubmitHeader(4, 2, kind, 48, {"val_accuracy": 0.5}, MANIFEST)
    proto = client_serde.submit_header_to_proto("tok", header).header
    assert server_serde.submit_header_from_proto(proto) == header


def test_an_unknown_upload_kind_is_refused() -> None:
    proto = client_serde.submit_header_to_proto(
        "tok", SubmitHeader(4, 2, UploadKind.UPDATE, 48, {}, MANIFEST)
    ).header
    for kind in (0, 4, 99):
        proto.kind = fed_pb2.UploadKind.ValueType(kind)
        with pytest.raises(WireError, match=f"unknown upload kind {kind}"):
            server_serde.submit_header_from_proto(proto)


@pytest.mark.parametrize("kind", list(MetricsKind))
def test_metrics_reports_survive_the_wire(kind: MetricsKind) -> None:
    report = MetricsReport(4, -1, kind, "site-b", {"val_accuracy": 0.75}, 20, "")
    proto = client_serde.metrics_report_to_proto("tok", report)
    assert server_serde.metrics_report_from_proto(proto) == report


def test_metrics_reports_are_bounded_and_checked() -> None:
    proto = fed_pb2.MetricsReport(
        kind=fed_pb2.METRICS_KIND_CROSS_VALIDATION, model_owner="o" * 500, error="e" * 9000
    )
    report = server_serde.metrics_report_from_proto(proto)
    assert len(report.owner) == server_serde.MAX_OWNER
    assert len(report.error) == server_serde.MAX_VALIDATION_ERROR
    proto.kind = fed_pb2.MetricsKind.ValueType(99)
    with pytest.raises(WireError, match="unknown metrics kind 99"):
        server_serde.metrics_report_from_proto(proto)


@pytest.mark.parametrize("outcome", list(SubmitOutcome))
def test_verdicts_survive_the_wire(outcome: SubmitOutcome) -> None:
    verdict = Verdict(outcome, "because")
    proto = server_serde.verdict_to_proto(verdict, current_round=3)
    assert proto.current_round == 3
    assert client_serde.verdict_from_proto(proto) == verdict


def test_an_unknown_verdict_is_not_read_as_rejected() -> None:
    for result in (0, 7):
        with pytest.raises(WireError, match=f"unknown submit result {result}"):
            reply = fed_pb2.SubmitReply(result=fed_pb2.SubmitResult.ValueType(result))
            client_serde.verdict_from_proto(reply)


def test_a_verdict_s_message_is_cut_to_what_the_server_keeps_of_an_error() -> None:
    """The site copies a rejection's message into its status: a longer one made every
    status and heartbeat exceed the message limit."""
    reply = fed_pb2.SubmitReply(result=fed_pb2.SUBMIT_RESULT_REJECTED, message="x" * 5_000_000)
    assert len(client_serde.verdict_from_proto(reply).message) <= MAX_TEXT


@pytest.mark.parametrize("token", ["", "t" * 257, "a b", "tok\n<3>", "tok/../x", "é" * 22])
def test_a_login_token_that_is_no_short_url_safe_string_is_refused(token: str) -> None:
    """The site keeps its token in a state file it reads only up to 1 MiB: a longer token
    made it forget its run at the next start."""
    reply = fed_pb2.ClientLoginReply(token=token, instance_name="site-a")
    with pytest.raises(WireError, match="the server's login reply holds no usable token"):
        client_serde.login_from_proto(reply)


def test_a_token_as_the_server_issues_it_is_taken() -> None:
    token = new_token()
    reply = fed_pb2.ClientLoginReply(token=token, instance_name="site-a", resumed=True)
    assert client_serde.login_from_proto(reply) == Login(token, "site-a", True)


@pytest.mark.parametrize(
    ("number", "kind"),
    [(1, UploadKind.UPDATE), (3, UploadKind.BEST_LOCAL), (2, UploadKind.BEST_LOCAL)],
)
def test_upload_kinds_of_every_version_are_read(number: int, kind: UploadKind) -> None:
    """1 and 3 are what every version but one sent (ModelKind's GLOBAL and LOCAL); 2 is the
    best local model of sites of 2026-12-06 and -07."""
    header = fed_pb2.SubmitHeader(kind=number)  # type: ignore[arg-type]
    assert server_serde.submit_header_from_proto(header).kind is kind
