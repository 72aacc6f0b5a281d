"""How often one participant may log in: a token bucket per certificate name.

Logins are cheap, but a kit that logs in in a loop (a bug, or a stolen kit
in hostile hands) would keep the server's event loop busy and fill its log.
Every peer here passed mutual TLS, so the certificate's name is who it is:
one bucket per name, however many addresses or instances it uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

LOGINS_PER_SECOND = 10.0
LOGIN_BURST = 20
"""Logins a participant may make at once beyond two per instance it may run: after a
server restart every instance of a kit logs in again together."""
MAX_TRACKED = 10_000


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class LoginThrottle:
    """A token bucket per certificate name: ``burst`` logins at once, ``per_second`` after."""

    def __init__(
        self,
        burst: float,
        per_second: float = LOGINS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.burst = burst
        self.per_second = per_second
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, name: str) -> float:
        """Count a login by ``name``: 0 when it may go ahead, else the seconds to wait."""
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
