"""The daemons start after the clock is synchronized where the host waits for it.

A server or site started on a clock NTP is about to step judges certificates by the wrong
date and, before round durations came from the monotonic clock, recorded a negative round.
"""

from __future__ import annotations

from provision import templates


def test_both_units_start_after_time_sync() -> None:
    for unit in (templates.server_unit(), templates.client_unit()):
        (after,) = [line for line in unit.splitlines() if line.startswith("After=")]
        assert after.removeprefix("After=").split() == ["network-online.target", "time-sync.target"]
