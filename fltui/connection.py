"""The console's own link to the server, apart from the sites' links.

When only the console's connection drops, the sites are as healthy as they
were: the screens then say the *console* is disconnected (since when, and
when it tries again, ticking) and freeze the site rows as unknown instead
of drawing them stale. A server that an admin shut down is no outage: the
console says who did it and when, and waits to be told to reconnect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fltui.status import Look, clock_time

CONNECTED = Look("●", "connected", "success")
CONNECTING = Look("◌", "connecting", "warning")
DISCONNECTED = Look("✖", "disconnected", "error")
SHUT_DOWN = Look("■", "server shut down", "muted")


@dataclass(frozen=True)
class Shutdown:
    """Who shut the server down, and when (from the feed's audit or our own reply)."""

    user: str
    time: float


@dataclass(frozen=True)
class Connection:
    """The state of the console's link, as the header, banner and panes draw it."""

    look: Look = CONNECTING
    lost_at: float = 0.0
    """When the feed last broke; 0 once a snapshot made the picture current again."""
    problem: str = ""
    retry_at: float = 0.0
    """When the next attempt starts (0: none is planned)."""
    attempt: int = 0
    target: str = ""
    shutdown: Shutdown | None = None
    """Set when the link ended because an admin shut the server down."""

    @property
    def up(self) -> bool:
        """Whether the feed is live (commands may be sent)."""
        return self.look is CONNECTED

    @property
    def frozen_at(self) -> float | None:
        """Since when the site rows are unknown (None while the feed is live)."""
        if self.up or not self.lost_at:
            return None
        return self.lost_at

    def banner(self, now: float, keys: bool = True) -> str:
        """The line under the header, or "" when the link is fine; its countdown ticks.
        ``keys``: with the dashboard's keys for it (the views over it have none)."""
        if self.look is SHUT_DOWN and self.shutdown is not None:
            shut = f"■ server shut down by {self.shutdown.user} at {clock_time(self.shutdown.time)}"
            return shut + (" · r reconnect · q quit" if keys else "")
        if not self.lost_at or self.up:
            return ""
        since = f"✖ connection lost since {clock_time(self.lost_at)}"
        if self.look is DISCONNECTED:
            left = max(math.ceil(self.retry_at - now), 0)
            return f"{since}: {self.problem} · reconnecting in {left}s (attempt {self.attempt})" + (
                " · r now" if keys else ""
            )
        return f"{since} · reconnecting to {self.target} (attempt {self.attempt})…"
