"""The HTTP(S) server under the metrics endpoint (:mod:`flcore.exporter`).

prometheus_client's own server wraps its listening socket in TLS, so each
handshake runs inside ``accept()`` on the one thread that serves: a single
connection that sends nothing stopped every scrape while it stayed open, and
the daemon's shutdown, which waits for that thread, with them. Here the loop
that accepts never reads: each connection gets a thread of its own, in which
its handshake runs, every connection is closed once it sends nothing for
:data:`CONNECTION_TIMEOUT_S`, and at most :data:`MAX_CONNECTIONS` are served
at once (the rest are closed as they arrive).
"""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT_S = 10.0
"""A connection, its TLS handshake included, that sends nothing for this long is closed."""
MAX_CONNECTIONS = 32
"""Connections served at once; a scraper needs one."""


class _QuietHandler(WSGIRequestHandler):
    """Serves one request; logs nothing per request (a scraper asks every few seconds)."""

    timeout = CONNECTION_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:
        """Nothing: the endpoint is not worth a log line per scrape."""


class MetricsServer(ThreadingMixIn, WSGIServer):
    """Serves a WSGI app on ``(host, port)``, over TLS when given a context."""

    daemon_threads = True

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family  # IPv6 for "::1", as http.server picks it
        self._tls = tls
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__((str(address[0]), port), _QuietHandler)

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept without reading: the handshake waits for the connection's own thread."""
        sock, address = self.socket.accept()
        sock.settimeout(CONNECTION_TIMEOUT_S)
        if self._tls is not None:
            sock = self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve in a thread of its own, or close the connection when all are taken."""
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """The connection's thread: its handshake, its request, then its slot back."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Shake hands (bounded by the socket's timeout), then serve the request."""
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed (a scraper without a certificate, one that went
        quiet) is the scraper's problem: a debug line, not a traceback on stderr."""
        log.debug("metrics connection from %s ended: %s", client_address[0], sys.exc_info()[1])
