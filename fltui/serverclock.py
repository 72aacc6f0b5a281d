"""The server's clock, as the console reads it from the feed.

Every time the console shows is the server's or a site's: when a client
was last heard from, when a round's wait ends, when a log line was
written. Ages and countdowns subtract them from "now", and the admin's
laptop keeps its own time: one running two minutes ahead showed every
site stale, one behind showed a dead site online until the server dropped
it. So the console's "now" is its own clock moved by how far the server's
is ahead, read from the feed: each event carries the server's time of
publication, so ``stamp - local time it was handled`` is the offset less
the delay between the two. That delay is never negative, so every such
sample is a lower bound on the offset, and the largest of the recent ones
is the best estimate (the fastest delivery).

Only while some deliveries are fast. A console that falls behind its feed
(starved of CPU, or its network's buffers full) handles every event late
by about the same lag, and the largest of samples that are all late by a
minute took that minute for clock skew: it showed a picture a minute old as
live ("this computer's clock is 5s ahead", with server and console on one
host). So the snapshot, the first message of a fresh subscription, which
nothing queued before, sets a floor that later samples only raise (a
server clock stepped forward is followed; one stepped back is caught up
with at the next snapshot: events then look late, and the console
refreshes). Against that floor the lag shows: :meth:`behind` says how old
an event is when handled, and the console refreshes when it is too old.
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
        self._floor: float | None = None
        """The last snapshot's sample: no later estimate goes below it."""
        self._samples: deque[float] = deque(maxlen=SAMPLES)

    @property
    def settled(self) -> bool:
        """Whether enough events came to trust the offset."""
        return len(self._samples) >= SETTLED_AFTER

    def __call__(self) -> float:
        """The server's time now."""
        return self.local() + self.offset

    def heard(self, stamp: float, first: bool = False) -> None:
        """An event the server stamped ``stamp`` arrived just now; ``first``: it is the
        first of a fresh subscription (a snapshot), which waited behind nothing."""
        sample = stamp - self.local()
        if not (math.isfinite(sample) and abs(sample) <= MAX_OFFSET_S):
            return
        if first:
            self._floor = sample
        self._samples.append(sample)
        floor = sample if self._floor is None else self._floor
        self.offset = max(floor, max(self._samples))

    def behind(self, stamp: float) -> float:
        """How long ago, on the server's clock, the server stamped ``stamp`` (0 for a stamp
        too far off to be a time at all, which no refresh would mend)."""
        late = self() - stamp
        return late if math.isfinite(late) and abs(late) <= MAX_OFFSET_S else 0.0
