"""flclientd.logforward (rate-limited log forwarding) and flclientd.sitestate."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flclientd.logforward import BUFFER_LINES, MAX_MESSAGE, LogForwarder
from flclientd.runner import TrainingProcess, WorkerFailed, _child_environment, _work_result
from flclientd.sitestate import SiteState, SiteStore
from flclientd.worker.protocol import mark_log_line, parse_log_line
from flcore.schema import ConfigError

# --------------------------------------------------------------------------- logforward


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("flstack.test.logforward")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers = []


def _attach(log: logging.Logger, rate: float) -> LogForwarder:
    forwarder = LogForwarder(rate)
    log.handlers = [forwarder]
    return forwarder


def test_burst_then_drop(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 5)  # burst of 2 x 5 lines
    for i in range(15):
        logger.info("line %d", i)
    lines, dropped = forwarder.take()
    assert [line.message for line in lines] == [f"line {i}" for i in range(10)]
    assert dropped == 5
    assert forwarder.take() == ([], 0)
    assert not forwarder.pending()


def test_tokens_refill_at_the_rate(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 20)
    for i in range(45):
        logger.info("burst %d", i)
    lines, dropped = forwarder.take()
    assert (len(lines), dropped) == (40, 5)
    time.sleep(0.15)  # about 3 lines' worth of tokens
    for i in range(10):
        logger.info("later %d", i)
    lines, dropped = forwarder.take()
    assert 2 <= len(lines) <= 5
    assert len(lines) + dropped == 10
    assert [line.message for line in lines] == [f"later {i}" for i in range(len(lines))]


def test_buffer_is_bounded_and_keeps_newest(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 1_000_000)
    for i in range(BUFFER_LINES + 500):
        logger.warning("line %d", i)
    assert forwarder.pending()
    lines, dropped = forwarder.take()
    assert len(lines) == BUFFER_LINES
    assert lines[0].message == "line 500"
    assert lines[-1].message == f"line {BUFFER_LINES + 499}"
    assert dropped == 500


def test_dropped_alone_is_pending(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 0.5)  # burst of one line
    logger.info("one")
    logger.info("two")
    lines, dropped = forwarder.take()
    assert [line.message for line in lines] == ["one"] and dropped == 1
    logger.info("three")
    assert forwarder.pending()  # nothing queued, but the drop must still be reported
    assert forwarder.take() == ([], 1)


def test_grpc_loggers_and_debug_ignored(logger: logging.Logger) -> None:
    forwarder = LogForwarder(1_000)
    grpc_logger = logging.getLogger("grpc._cython.cygrpc")
    saved = (grpc_logger.handlers, grpc_logger.level, grpc_logger.propagate)
    grpc_logger.handlers, grpc_logger.propagate = [forwarder], False
    grpc_logger.setLevel(logging.DEBUG)
    logger.handlers = [forwarder]
    try:
        grpc_logger.error("connection reset")
        logger.debug("too chatty")
        logger.info("kept")
    finally:
        grpc_logger.handlers, grpc_logger.propagate = saved[0], saved[2]
        grpc_logger.setLevel(saved[1])
    lines, dropped = forwarder.take()
    assert [(line.logger, line.level, line.message) for line in lines] == [
        ("flstack.test.logforward", "INFO", "kept")
    ]
    assert dropped == 0


def test_long_messages_truncated_and_tracebacks_kept(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 100)
    logger.info("x" * (MAX_MESSAGE + 100))
    try:
        raise RuntimeError("boom in training")
    except RuntimeError:
        logger.exception("training failed")
    lines, _ = forwarder.take()
    assert len(lines[0].message) == MAX_MESSAGE
    assert lines[1].level == "ERROR"
    assert lines[1].message.startswith("training failed\nTraceback")
    assert "RuntimeError: boom in training" in lines[1].message


def test_emit_from_many_threads(logger: logging.Logger) -> None:
    forwarder = _attach(logger, 1_000_000)

    def work(n: int) -> None:
        for i in range(100):
            logger.info("t%d-%d", n, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines, dropped = forwarder.take()
    assert len(lines) == 800 and dropped == 0
    assert len({line.message for line in lines}) == 800


# --------------------------------------------------------------------------- sitestate


def test_site_state_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "site.json"
    SiteState(token="abc-123", training_run=7, gpus=2).save(path)
    assert SiteState.load(path) == SiteState("abc-123", 7, 2)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    SiteState(token="", training_run=0).save(path)  # overwrite keeps the mode
    assert SiteState.load(path) == SiteState()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["site.json"]


def test_site_state_missing_file(tmp_path: Path) -> None:
    assert SiteState.load(tmp_path / "nope.json") == SiteState()


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"token": "t"}',
        b'{"token": "t", "training_run": "seven", "gpus": 0}',
        b'{"token": "t", "training_run": null, "gpus": 0}',
        b'{"token": null, "training_run": 0, "gpus": 0}',
        b'{"token": ["t"], "training_run": 0, "gpus": 0}',
        b"",
        b"[" * 100_000 + b"]" * 100_000,  # was a RecursionError: a restart loop under systemd
        b" " * 2_000_000,  # more than any state file holds
    ],
)
def test_site_state_unreadable_gives_defaults(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "site.json"
    path.write_bytes(content)
    assert SiteState.load(path) == SiteState()


def test_site_state_path_is_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.mkdir()
    assert SiteState.load(path) == SiteState()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_site_state_unreadable_permissions(tmp_path: Path) -> None:
    path = tmp_path / "site.json"
    path.write_text(json.dumps({"token": "t", "training_run": 1, "gpus": 0}))
    path.chmod(0)
    assert SiteState.load(path) == SiteState()


def test_a_second_daemon_of_the_kit_does_not_share_the_state(tmp_path: Path) -> None:
    path = tmp_path / "state" / "flclientd_site.json"
    first = SiteStore(path)
    first.update(token="t1", training_run=3)
    second = SiteStore(path)
    assert first.owned and not second.owned
    assert second.state == SiteState()
    second.update(token="t2")
    assert SiteState.load(path).token == "t1"


# --------------------------------------------------------------------------- the child's output


def test_a_marked_line_with_a_digit_int_refuses_is_text_and_the_reading_goes_on() -> None:
    """A marked line whose level is "²", printed by the app's code, once killed the task
    reading the child's output; the child then blocked on its next 64 KiB and the run hung."""
    assert parse_log_line(mark_log_line(logging.WARNING, "hello"), 20) == (30, "hello")
    for odd in ("\x1e\u00b2 squared", "\x1e\u2460 circled", "\x1e" + "9" * 5000 + " big"):
        assert parse_log_line(odd, logging.INFO) == (logging.INFO, odd)

    async def pump() -> list[tuple[int, str]]:
        seen: list[tuple[int, str]] = []
        process = TrainingProcess(
            Path("."), Path("."), lambda level, text: seen.append((level, text))
        )
        stream = asyncio.StreamReader()
        stream.feed_data("first\n\x1e\u00b2 odd\nthird\n".encode())
        stream.feed_eof()
        await process._pump(stream, logging.INFO)
        return seen

    assert [text for _, text in asyncio.run(pump())] == ["first", "\x1e\u00b2 odd", "third"]


@pytest.mark.parametrize(
    "result",
    [
        {"num_samples": float("inf")},
        {"num_samples": 1, "metrics": [1]},
        {"num_samples": 1, "metrics": {"a": [1]}},
        "x",
        {},
    ],
)
def test_a_result_the_child_wrote_by_hand_that_cannot_be_read_is_the_child_s_failure(
    result: object,
) -> None:
    """Such results once escaped as OverflowError or AttributeError, which the run reported
    as "an unexpected error in the client daemon"."""
    with pytest.raises(WorkerFailed, match="the training process sent a result that cannot be"):
        _work_result(result)


def test_a_ready_event_with_an_infinite_count_is_a_broken_protocol_not_a_dead_reader(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``int(Infinity)`` escaped the reader of the child's socket: nothing killed the child,
    and the daemon waited out the whole ready timeout before saying it was not ready."""
    info = '{"device":"cpu","gpu_count":Infinity,"world_size":1,"train_samples":1,"val_samples":1}'

    async def scenario() -> None:
        process = TrainingProcess(Path("."), Path("."), None)
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        theirs.sendall(b'{"event":"ready","info":' + info.encode() + b"}\n")
        theirs.close()
        await process._read(reader, writer)

    with caplog.at_level(logging.ERROR, logger="flclientd.runner"):
        asyncio.run(scenario())
    assert "training process broke the protocol" in caplog.text


def test_a_state_folder_the_daemon_cannot_use_is_one_clear_error(tmp_path: Path) -> None:
    """It was an uncaught OSError: a traceback, and a restart loop under systemd."""
    (tmp_path / "state").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot keep this site's state in .*state: .*chown"):
        SiteStore(tmp_path / "state" / "site.json")


def test_the_training_child_does_not_import_from_its_work_folder(tmp_path: Path) -> None:
    """It runs in the run's work folder, which a deploy to the same run keeps: a json.py an
    earlier approved app left there was imported before the standard library's, in a later
    app that needed no approval."""
    (tmp_path / "json.py").write_text("raise SystemExit('the work folder was imported')\n")
    env = _child_environment(tmp_path / "socket")
    done = subprocess.run(
        [sys.executable, "-c", "import json; print(json.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert not done.stdout.startswith(str(tmp_path))
