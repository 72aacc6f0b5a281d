"""Forwarding a site's log lines to the server, so admins see every site's log.

INFO and above, rate-limited by a token bucket (a crash loop must not flood
the federation), bounded while the server is unreachable (oldest lines go
first), and counted when dropped so the console can say so. Site IT can
turn it off with ``forward_logs: false`` in ``local/fed_client.json``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

BUFFER_LINES = 1000
MAX_MESSAGE = 2000


@dataclass(frozen=True)
class ForwardedLine:
    """A log line waiting to be sent."""

    time: float
    level: str
    logger: str
    message: str


class LogForwarder(logging.Handler):
    """Collects log records for the control stream, thread-safe."""

    def __init__(self, lines_per_second: float) -> None:
        super().__init__(logging.INFO)
        self._rate = lines_per_second
        self._tokens = lines_per_second * 2
        self._stamp = time.monotonic()
        self._lines: deque[ForwardedLine] = deque(maxlen=BUFFER_LINES)
        self._dropped = 0
        self._mutex = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        """Queue a record if the rate limit allows it."""
        if record.name.startswith("grpc"):
            return
        try:
            message = record.getMessage()
        except Exception:  # a malformed log call must not break the daemon
            self.handleError(record)
            return
        if record.exc_info and record.levelno >= logging.ERROR:
            message += "\n" + logging.Formatter().formatException(record.exc_info)
        with self._mutex:
            now = time.monotonic()
            self._tokens = min(self._rate * 2, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._tokens < 1:
                self._dropped += 1
                return
            self._tokens -= 1
            if len(self._lines) == self._lines.maxlen:
                self._dropped += 1
            self._lines.append(
                ForwardedLine(record.created, record.levelname, record.name, message[:MAX_MESSAGE])
            )

    def take(self) -> tuple[list[ForwardedLine], int]:
        """All queued lines and the number dropped since the last call."""
        with self._mutex:
            lines = list(self._lines)
            self._lines.clear()
            dropped, self._dropped = self._dropped, 0
        return lines, dropped

    def pending(self) -> bool:
        """Whether anything waits to be sent."""
        with self._mutex:
            return bool(self._lines) or self._dropped > 0
