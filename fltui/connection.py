"""The console's own link to the server, apart from the sites' links.

When only the console's connection drops, the sites are as healthy as they
were: the screens then say the *console* is disconnected (since when, and
when it tries again, ticking) and freeze the site rows as unknown instead
of drawing them stale. A server that an admin shut down is no outage: the
console says who did it and when, and waits to be told to reconnect.

Two more states freeze the rows the same way while the link stays up. The
server's feed says something at least every second (a tick when nothing
happened): when nothing came for ``SILENT_S``, the *server* is silent (a
stopped or overloaded process; the sites may be fine), and ages are not
counted against the sites meanwhile. And a console that fell behind its
feed (this computer was busy) refreshes: it shows nothing as live until a
fresh snapshot came.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fltui.status import Look, age, clock_time

CONNECTED = Look("●", "connected", "success")
CONNECTING = Look("◌", "connecting", "warning")
DISCONNECTED = Look("✖", "disconnected", "error")
SHUT_DOWN = Look("■", "server shut down", "muted")
SILENT = Look("◌", "server silent", "warning")
REFRESHING = Look("◌", "refreshing", "warning")

SILENT_S = 5.0
"""Seconds without a word from the server (it ticks every second) before it is called silent."""


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
        """Whether the feed is live (commands may be sent; a silent server may yet answer)."""
        return self.look is CONNECTED or self.look is SILENT

    @property
    def frozen_at(self) -> float | None:
        """Since when the site rows are unknown (None while the feed is live and talking)."""
        if self.look is CONNECTED or not self.lost_at:
            return None
        return self.lost_at

    def banner(self, now: float, keys: bool = True) -> str:
        """The line under the header, or "" when the link is fine; its countdown ticks.
        ``keys``: with the dashboard's keys for it (the views over it have none)."""
        if self.look is SHUT_DOWN and self.shutdown is not None:
            shut = f"■ server shut down by {self.shutdown.user} at {clock_time(self.shutdown.time)}"
            return shut + (" · r reconnect · q quit" if keys else "")
        if self.look is SILENT and self.lost_at:
            return (
                f"◌ nothing from the server since {clock_time(self.lost_at)} "
                f"({age(now - self.lost_at)}): it may be stopped or overloaded · "
                "the sites are shown as they were then"
            )
        if self.look is REFRESHING:
            return f"◌ {self.problem}"
        if not self.lost_at or self.up:
            return ""
        since = f"✖ connection lost since {clock_time(self.lost_at)}"
        if self.look is DISCONNECTED:
            left = max(math.ceil(self.retry_at - now), 0)
            return f"{since}: {self.problem} · reconnecting in {left}s (attempt {self.attempt})" + (
                " · r now" if keys else ""
            )
        return f"{since} · reconnecting to {self.target} (attempt {self.attempt})…"
