"""The transport a hostile network meets: TLS 1.2+ with the project CA only, half-open
connections shed within seconds, and a flood that does not stop a real run."""

from __future__ import annotations

import selectors
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flcore.tls import HANDSHAKE_TIMEOUT_MS
from fldev.cluster import Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TLS_HANDSHAKE = 0x16
TLS_ALERT = 0x15
HTTP2_SETTINGS = 0x04


def _context(kit: Path | None, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client context offering exactly ``version``, with the kit's certificate if any."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # these tests judge the server's side only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0 and 1.1, on purpose
        context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")  # let this side offer what the server must refuse
    context.set_alpn_protocols(["h2"])
    if kit is not None:
        context.load_cert_chain(kit / "client.crt", kit / "client.key")
    return context


def _client_hello(context: ssl.SSLContext) -> bytes:
    """The first flight a client with ``context`` sends."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _answer_to(port: int, hello: bytes) -> bytes:
    """The server's first bytes after a client hello (b"" when it just closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(hello)
        try:
            return raw.recv(5)
        except ConnectionResetError:
            return b""


@contextmanager
def _tls(port: int, context: ssl.SSLContext) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to the server, handshake done."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        yield tls


def _first_frame(port: int, context: ssl.SSLContext) -> bytes:
    """What the server sends once a handshake with ``context`` is done (b"" or an SSL error:
    it hung up)."""
    with _tls(port, context) as tls:
        try:
            return tls.recv(9)
        except (ssl.SSLError, ConnectionResetError):
            return b""


def test_only_tls_12_and_13_with_a_project_certificate_get_through(
    make_cluster: Callable[..., Cluster],
) -> None:
    ours = make_cluster()
    ours.server()
    kit = ours.root / "flclient1" / "startup"
    for port in (ours.fed_port, ours.admin_port):
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
            with _tls(port, _context(kit, version)) as tls:
                assert tls.version() == version.name.replace("v1_", "v1.")
                assert tls.recv(9)[3] == HTTP2_SETTINGS  # gRPC talks to it
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            hello = _client_hello(_context(kit, version))
            assert hello[0] == TLS_HANDSHAKE  # this side did offer the old version...
            answer = _answer_to(port, hello)
            assert answer[:1] in (b"", bytes([TLS_ALERT])), answer  # ...and got no ServerHello
        # The newest version both ends know is chosen: 1.3.
        context = _context(kit, ssl.TLSVersion.TLSv1_3)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        with _tls(port, context) as tls:
            assert tls.version() == "TLSv1.3"

    # A certificate of another CA, or none, gets nothing from either port.
    foreign = make_cluster(fed_port=ours.fed_port, admin_port=ours.admin_port)
    for port in (ours.fed_port, ours.admin_port):
        for stranger in (foreign.root / "flclient1" / "startup", None):
            assert _first_frame(port, _context(stranger, ssl.TLSVersion.TLSv1_3)) == b""


def test_a_connection_that_never_says_hello_is_closed_within_the_handshake_timeout(
    cluster: Cluster,
) -> None:
    cluster.server()
    limit = HANDSHAKE_TIMEOUT_MS / 1000
    with socket.create_connection(("127.0.0.1", cluster.fed_port), timeout=3 * limit) as raw:
        opened = time.monotonic()
        assert raw.recv(1) == b""  # the server hung up
        assert time.monotonic() - opened < 2 * limit


@dataclass
class Flood:
    """Idle and slowly-handshaking connections kept open against one port by a thread."""

    port: int
    idle: int
    slow: int
    hello: bytes
    closed_by_server: int = 0
    most_open: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        sent: dict[socket.socket, int] = {}

        def open_one(slow: bool) -> None:
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", self.port))
            selector.register(sock, selectors.EVENT_READ, slow)
            if slow:
                sent[sock] = 0

        for _ in range(self.idle):
            open_one(False)
        for _ in range(self.slow):
            open_one(True)
        try:
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    sock, slow = key.fileobj, key.data
                    assert isinstance(sock, socket.socket)
                    try:
                        gone = not sock.recv(4096)
                    except (ConnectionError, BlockingIOError):
                        gone = True
                    if gone:
                        self.closed_by_server += 1
                        selector.unregister(sock)
                        sent.pop(sock, None)
                        sock.close()
                        open_one(slow)
                for sock, count in list(sent.items()):  # one byte of the hello per tick
                    if count < len(self.hello):
                        try:
                            sock.send(self.hello[count : count + 1])
                            sent[sock] = count + 1
                        except (BlockingIOError, OSError):
                            pass
                self.most_open = max(self.most_open, len(selector.get_map()))
        finally:
            for key in list(selector.get_map().values()):
                key.fileobj.close()  # type: ignore[union-attr]
            selector.close()

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def flooding(flood: Flood) -> Iterator[Flood]:
    thread = threading.Thread(target=flood.run, daemon=True)
    thread.start()
    try:
        yield flood
    finally:
        flood.stop()
        thread.join(10)


def test_a_flood_of_idle_and_slow_connections_does_not_stop_a_real_run(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    kit = cluster.root / "flclient1" / "startup"
    hello = _client_hello(_context(kit, ssl.TLSVersion.TLSv1_3))
    flood = Flood(cluster.fed_port, idle=300, slow=50, hello=hello)
    with flooding(flood):
        # The sites connect through the flood, and train through it.
        cluster.client("flclient1")
        cluster.client("flclient2")
        cluster.prepare_run(1, num_rounds=2, wait_after_min_clients=30)
        cluster.ok("start server")
        cluster.ok("start client")
        state = finished(cluster)
        # Every idle connection was shed by the handshake timeout at least once (on a fast
        # machine the run may end before the first timeout: the flood goes on until then).
        wait_until(
            lambda: flood.closed_by_server >= 300,
            10 * HANDSHAKE_TIMEOUT_MS / 1000,
            "the handshake timeout to shed every idle connection",
        )
        assert flood.closed_by_server >= 300
    assert flood.most_open == 350
    assert state["reason"] == "finished"
    assert [r["round"] for r in cluster.metrics()] == [0, 1, 2]
    assert server.alive()
