"""The server's clock, as the console reads it from the feed.

Every time the console shows is the server's or a site's: when a client
was last heard from, when a round's wait ends, when a log line was
written. Ages and countdowns subtract them from "now", and the admin's
laptop keeps its own time: one running two minutes ahead showed every
site stale, one behind showed a dead site online until the server dropped
it. So the console's "now" is its own clock moved by how far the server's
is ahead, read from the feed: each event carries the server's time of
publication, which is the server's clock at the moment of sending, so
``stamp - local receipt time`` is the offset less the delivery delay. The
largest of the recent ones is the best estimate (the fastest delivery),
and the console's own lines are dated on the same clock, so they sort
among the server's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

SAMPLES = 64
"""Recent events the offset is read from (a stepped server clock is followed this soon)."""
MAX_OFFSET_S = 7 * 86_400.0
"""An offset beyond this is no clock difference but a broken stamp: not taken."""
TOLD_OFFSET_S = 5.0
"""An offset the console says in its log, once, when it has read it from enough events."""
SETTLED_AFTER = 16
"""Events after which the offset is taken as known (a snapshot may have waited a moment)."""


class ServerClock:
    """``now`` on the server, as far as the console can tell (callable like ``time.time``)."""

    def __init__(self, local: Callable[[], float]) -> None:
        """Start at ``local`` (no event seen: no offset)."""
        self.local = local
        self.offset = 0.0
        """Seconds the server's clock is ahead of the local one (negative: behind)."""
        self._samples: deque[float] = deque(maxlen=SAMPLES)

    @property
    def settled(self) -> bool:
        """Whether enough events came to trust the offset."""
        return len(self._samples) >= SETTLED_AFTER

    def __call__(self) -> float:
        """The server's time now."""
        return self.local() + self.offset

    def heard(self, stamp: float) -> None:
        """An event the server stamped ``stamp`` arrived just now."""
        sample = stamp - self.local()
        if math.isfinite(sample) and abs(sample) <= MAX_OFFSET_S:
            self._samples.append(sample)
            self.offset = max(self._samples)
