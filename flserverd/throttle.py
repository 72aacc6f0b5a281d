"""How often one peer may do something: a token bucket per name; and how often the log
names it for doing the same thing again.

Every peer here passed mutual TLS, so a certificate's name (or a client
instance's) is who it is. Logins are counted per certificate name: a kit
that logs in in a loop (a bug, or a stolen kit in hostile hands) would keep
the event loop busy and fill the log. What arrives on a client's control
stream is counted per instance: one instance sending statuses or log lines
as fast as it can would otherwise flood every console's feed until each is
cut off for falling behind. Uploads and metrics reports are counted per
instance too: each is judged on the event loop, and a report may be written
to the state database. The bounds are far above what an honest site does, so
that only a site in a loop ever meets them.
"""

from __future__ import annotations

import math
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
UPLOADS_PER_SECOND = 2.0
UPLOAD_BURST = 20
"""Refused uploads (``SubmitModel`` calls) of one instance: an honest one is refused now and
then (a round that closed, a duplicate after a reconnect) and sends again at most twice a
second. Accepted and postponed uploads do not count: an honest site sends one update a
round, and small rounds go by many times a second."""
REPORTS_PER_SECOND = 2.0
REPORT_BURST = 500
"""Refused metrics reports (``SubmitMetrics`` calls) of one instance, counted as uploads are:
an honest site sends one for the final model, and in cross-site validation one per site of
the run, all at once when its validations fail fast (a model that cannot be fetched); a run
of 500 sites fits the burst."""
LOG_EVERY_S = 60.0
"""A site that does the same wrong thing again and again is named in the log once a minute
at most for each thing, with how often it did it meanwhile."""
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

    def give_back(self, name: str) -> None:
        """Undo one ``take`` of ``name``: the call turned out to be one that does not count."""
        bucket = self._buckets.get(name)
        if bucket is not None:
            bucket.tokens = min(self.burst, bucket.tokens + 1)

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled: they hold nothing a new one would not."""
        refill = self.burst / self.per_second
        self._buckets = {n: b for n, b in self._buckets.items() if now - b.stamp < refill}


class Rarely:
    """Which of a peer's repeated log lines to write: the first of each kind, then one per
    ``every_s`` at most, each saying how many were left out before it."""

    def __init__(self, every_s: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self._clock = clock
        self._said: dict[tuple[str, str], tuple[float, int]] = {}

    def due(self, name: str, kind: str) -> str | None:
        """None when the line is left out (and counted); else what to add to it: nothing,
        or how many lines like it were left out since the last one written."""
        now = self._clock()
        key = (name, kind)
        said_at, left_out = self._said.get(key, (-math.inf, 0))
        if now - said_at < self.every_s:
            self._said[key] = (said_at, left_out + 1)
            return None
        if key not in self._said and len(self._said) >= MAX_TRACKED:
            self._said = {k: v for k, v in self._said.items() if now - v[0] < self.every_s}
        self._said[key] = (now, 0)
        return f" ({left_out:,} more like it left out since the last)" if left_out else ""
