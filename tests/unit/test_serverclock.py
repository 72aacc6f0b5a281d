"""fltui.serverclock: the server's clock as the console reads it, lag not taken for skew."""

from __future__ import annotations

from fltui.serverclock import SETTLED_AFTER, ServerClock


class Local:
    """This computer's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_console_behind_its_feed_sees_its_lag_not_a_clock_ahead() -> None:
    """Same host, no skew: the snapshot comes at once, then every event 60s late. The
    largest of the late samples alone was -60: "this computer's clock is 1m ahead"."""
    local = Local()
    clock = ServerClock(local)
    clock.heard(local.now, first=True)
    for _ in range(SETTLED_AFTER * 5):
        local.now += 1.0
        clock.heard(local.now - 60.0)
    assert clock.offset == 0.0
    assert clock.behind(local.now - 60.0) == 60.0


def test_a_skewed_server_clock_is_followed() -> None:
    local = Local()
    clock = ServerClock(local)
    clock.heard(local.now + 120.0, first=True)
    local.now += 1.0
    clock.heard(local.now + 120.0)
    assert clock.offset == 120.0 and clock.behind(local.now + 120.0) == 0.0
    clock.heard(local.now + 180.0)  # the server's clock stepped forward
    assert clock.offset == 180.0


def test_a_broken_stamp_is_no_lag() -> None:
    clock = ServerClock(Local())
    clock.heard(1_750_000_000.0, first=True)
    assert clock.behind(0.0) == 0.0
