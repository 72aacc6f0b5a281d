"""The uplink: keeping a client logged in, with its control stream open, across server
restarts.

One control stream carries everything small: heartbeats, statuses, command
results and forwarded log lines go up; commands and offers come down. When
the server goes away the client logs in again with its token (keeping its
instance name) until the retry window runs out; then the daemon exits
non-zero so that systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc

from flclientd.connection import Connection, ControlStream
from flclientd.logforward import LogForwarder
from flclientd.sitestate import SiteStore
from flcore.certlife import CertLife
from flcore.federation import (
    ClientHeartbeat,
    Downward,
    Hello,
    LogBatch,
    MachineInfo,
    StatusChanged,
    Unreadable,
    Upward,
)
from flcore.feed import LogEntry
from flcore.logs import one_line
from flcore.progress import TransferStalled
from flcore.startup import ClientStartup
from flcore.status import ClientStatus
from flcore.tls import foreign_server
from flcore.tokens import token_id
from flcore.wire import WireError

log = logging.getLogger(__name__)


def details(exc: grpc.aio.AioRpcError) -> str:
    """What the server said of a failed call, as a log argument (the peer's words, so
    through one_line), or the status code's name when it said nothing."""
    return one_line(exc.details() or exc.code().name)


T = TypeVar("T")

EXIT_RETRY_WINDOW = 3
EXIT_REFUSED = 2
LOG_FLUSH_S = 0.5
# Failures that a reconnect cures; retried as long as the retry window allows.
TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Errors of the server's own (a crash in a handler): worth a few more tries, not forever.
SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
SERVER_ERROR_TRIES = 5


CLOSED_HINT = (
    "; the server closed every TLS handshake, so it runs but refuses this kit: its clock may "
    "be wrong (ahead of this kit's end, or behind its start), this kit may be revoked, or it "
    "may be another project's kit; the server's IT can tell which"
)


def handshake_closed(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the server closed the connection during the TLS handshake: what a server that
    refuses the client's certificate does (gRPC says no more than "Socket closed")."""
    return exc.code() == grpc.StatusCode.UNAVAILABLE and "Socket closed" in (exc.details() or "")


class Uplink:
    """The client's side of its registration with the server and its control stream."""

    def __init__(
        self,
        conn: Connection,
        startup: ClientStartup,
        store: SiteStore,
        info: MachineInfo,
        status: Callable[[], ClientStatus],
        dispatch: Callable[[Downward | Unreadable], None],
        forwarder: LogForwarder | None,
        lives: Sequence[CertLife] = (),
    ) -> None:
        self.conn = conn
        self._lives = lives
        """The kit's certificates, checked again when connecting fails: TLS refuses one that
        ended while the daemon ran, and the server says nothing the client can read."""
        self.startup = startup
        self.store = store
        self.instance = startup.name
        self.connected = asyncio.Event()
        self._reconnected = asyncio.Condition()
        """Notified as each control stream is up: a call refused for its token waits for it."""
        self._info = info
        self._status = status
        self._dispatch = dispatch
        self._forwarder = forwarder
        # Flush markers travel in the queue: the writer sets one when it gets there.
        self._outbox: asyncio.Queue[Upward | asyncio.Event] = asyncio.Queue()
        self._stop = asyncio.Event()
        self.logins = 0
        """Logins since the daemon started: the first, then one per reconnect."""
        self.retries = 0
        """Calls tried again after a broken connection, a stalled transfer or a server error."""
        self.stalls = 0
        """Transfers given up because nothing moved for a while (then tried again)."""

    def send(self, message: Upward) -> None:
        """Queue a message for the control stream (sent once connected)."""
        self._outbox.put_nowait(message)

    async def flush(self, timeout: float) -> bool:
        """Wait until every message queued so far was written to the control stream, or
        for ``timeout`` seconds; returns whether they were."""
        written = asyncio.Event()
        self._outbox.put_nowait(written)
        try:
            await asyncio.wait_for(written.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def stop(self) -> None:
        """End the uplink's loop (shutdown)."""
        self._stop.set()

    async def run(self) -> int:
        """Stay connected until stopped (0), or until the retry window runs out (3)."""
        lost_since = time.monotonic()
        delay = 0.2
        tries = closed = 0
        """Tries since the connection was lost, and those the server closed at the handshake
        (a server down refuses the connection, or does not answer, instead)."""
        while not self._stop.is_set():
            try:
                login = await self.conn.login(self.store.state.token, self._info)
            except grpc.aio.AioRpcError as exc:
                ended = self._ended()
                if ended is not None:
                    log.error("%s", ended)
                    return EXIT_REFUSED
                tries += 1
                closed += handshake_closed(exc)
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    log.error("the server refused this client: %s", details(exc))
                    return EXIT_REFUSED
                # In a thread: for a misnamed server it looks at the certificate.
                foreign = await asyncio.to_thread(foreign_server, exc, self.startup.server_target)
                if foreign is not None:
                    log.error("%s", foreign)
                    return EXIT_REFUSED
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    log.warning("the server takes no more now: %s; trying again", details(exc))
                else:
                    log.warning(
                        "Could not connect to server %s: %s",
                        self.startup.server_target,
                        details(exc),
                    )
            except WireError as exc:
                log.error("the server's login reply cannot be used: %s", exc)
            else:
                delay = 0.2
                self.logins += 1
                self._logged_in(login.token, login.instance, login.resumed)
                await self._control()
                if self._stop.is_set():
                    break
                lost_since = time.monotonic()
                tries = closed = 0
            waited = time.monotonic() - lost_since
            if waited > self.startup.retry_window:
                log.error(
                    "server unreachable for %.0fs (retry window %.0fs): exiting so that the "
                    "service manager restarts this client%s",
                    waited,
                    self.startup.retry_window,
                    CLOSED_HINT if tries and closed == tries else "",
                )
                return EXIT_RETRY_WINDOW
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 2.0)
        return 0

    def _ended(self) -> str | None:
        """Why the kit's certificate or its CA has ended by this machine's clock, or None."""
        now = datetime.now(UTC)
        return next((life.problem(now) for life in self._lives if life.ended(now)), None)

    async def _logged_in_since(self, logins: int) -> bool:
        """Whether the uplink logged in again after ``logins`` and has its stream up, waiting
        for it as long as the retry window (past which the daemon exits anyway)."""
        async with self._reconnected:
            try:
                await asyncio.wait_for(
                    self._reconnected.wait_for(
                        lambda: self.logins > logins and self.connected.is_set()
                    ),
                    self.startup.retry_window,
                )
            except TimeoutError:
                return False
        return True

    def _logged_in(self, token: str, instance: str, resumed: bool) -> None:
        self.instance = instance
        self.store.update(token=token)
        if resumed:
            log.info("Resumed registration as %s with token %s", instance, token_id(token))
        else:
            log.info(
                "Successfully registered client %s as instance %s. Got token: %s",
                self.startup.name,
                instance,
                token_id(token),
            )

    async def _control(self) -> None:
        """Run one control stream until it breaks or the daemon shuts down."""
        call = self.conn.open_control()
        helpers: list[asyncio.Task[Any]] = []
        self._drop_stale_reports()
        try:
            await call.write(Hello(self.store.state.token, self._status()))
            self.connected.set()
            async with self._reconnected:
                self._reconnected.notify_all()
            jobs = [self._read(call), self._write(call), self._heartbeats(), self._stop.wait()]
            if self._forwarder is not None:
                jobs.append(self._forward_logs(self._forwarder))
            helpers = [asyncio.ensure_future(job) for job in jobs]
            # Any of them ending (stream broken, write failed, shutdown) ends the stream.
            await asyncio.wait(helpers, return_when=asyncio.FIRST_COMPLETED)
        except grpc.aio.AioRpcError as exc:
            log.warning("lost the control stream: %s", details(exc))
        finally:
            self.connected.clear()
            call.cancel()
            for task in helpers:
                task.cancel()
            for task in helpers:
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # a broken stream must never take the daemon down
                    log.debug("control stream task ended with %r", exc)

    def _drop_stale_reports(self) -> None:
        """Forget statuses and heartbeats queued while disconnected: the hello carries the
        current status, and an old one sent after it would overwrite it."""
        kept = []
        while not self._outbox.empty():
            entry = self._outbox.get_nowait()
            if not isinstance(entry, StatusChanged | ClientHeartbeat):
                kept.append(entry)
        for entry in kept:
            self._outbox.put_nowait(entry)

    async def _read(self, call: ControlStream) -> None:
        try:
            async for message in call:
                self._dispatch(message)
            log.warning("the server closed the control stream")
        except grpc.aio.AioRpcError as exc:
            log.warning("lost the control stream: %s", details(exc))

    async def _write(self, call: ControlStream) -> None:
        """Send queued messages; returns when the stream can take no more (it ended)."""
        while True:
            message = await self._outbox.get()
            if isinstance(message, asyncio.Event):
                message.set()
                continue
            try:
                await call.write(message)
            except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                # The next stream starts with a hello that carries the current status.
                return

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.startup.heartbeat_interval)
            self.send(ClientHeartbeat(self._status()))

    async def _forward_logs(self, forwarder: LogForwarder) -> None:
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            if not forwarder.pending():
                continue
            lines, dropped = forwarder.take()
            records = tuple(
                LogEntry(x.time, x.level, x.logger, x.message, self.instance) for x in lines
            )
            self.send(LogBatch(records, dropped))

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry a call across reconnects (bounded by the retry window: the daemon exits),
        a transfer that stalled, a token the server dropped once the uplink logged in again,
        and a server error a few times; anything else is the server's verdict."""
        server_errors = 0
        while True:
            await self.connected.wait()
            logins = self.logins
            try:
                return await call()
            except TransferStalled as exc:
                self.stalls += 1
                log.warning("%s; retrying", exc)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAUTHENTICATED:
                    # The server dropped the registration this call's token belonged to (the
                    # site was silent past heart_beat_timeout: a frozen VM, a stalled link).
                    # The uplink logs in again by itself: the call goes again with the new
                    # token, where it failed the site's run (an admin had to start it again).
                    if not await self._logged_in_since(logins):
                        raise
                elif code in SERVER_ERRORS and server_errors < SERVER_ERROR_TRIES:
                    server_errors += 1
                elif code not in TRANSIENT:
                    raise
                log.warning("%s interrupted (%s); retrying", what, code.name)
            self.retries += 1
            await asyncio.sleep(0.5)
