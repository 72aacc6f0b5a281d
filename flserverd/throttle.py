"""How often one peer may do something: a token bucket per name.

Every peer here passed mutual TLS, so a certificate's name (or a client
instance's) is who it is. Logins are counted per certificate name: a kit
that logs in in a loop (a bug, or a stolen kit in hostile hands) would keep
the event loop busy and fill the log. What arrives on a client's control
stream is counted per instance: one instance sending statuses or log lines
as fast as it can would otherwise flood every console's feed until each is
cut off for falling behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

LOGINS_PER_SECOND = 10.0
LOGIN_BURST = 20
"""Logins a participant may make at once beyond two per instance it may run: after a
server restart every instance of a kit logs in again together."""
MESSAGES_PER_SECOND = 20.0
MESSAGE_BURST = 200
"""Control-stream messages of one instance: heartbeats (at most 10 a second), statuses,
command results and log batches."""
LOG_LINES_PER_SECOND = 100.0
LOG_LINE_BURST = 1000
"""Forwarded log lines of one instance; a client sends at most its own
``log_lines_per_second`` (20 by default)."""
MAX_TRACKED = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Throttle:
    """A token bucket per name: ``burst`` at once, ``per_second`` after."""

    def __init__(
        self,
        burst: float,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str) -> float:
        """Count one for ``name``: 0 when it may go ahead, else the seconds to wait."""
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._forget_full(now)
            bucket = self._buckets[name] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.per_second)
        bucket.stamp = now
        if bucket.tokens < 1:
            return (1 - bucket.tokens) / self.per_second
        bucket.tokens -= 1
        return 0.0

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold nothing a new one would not."""
        refill = self.burst / self.per_second
        self._buckets = {n: b for n, b in self._buckets.items() if now - b.stamp < refill}
