"""flserverd.throttle: a burst, then a steady rate, per name."""

from __future__ import annotations

from flserverd.throttle import Rarely, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_rate_per_name() -> None:
    clock = Clock()
    throttle = Throttle(burst=5, per_second=2, clock=clock)
    assert [throttle.take("site-a") for _ in range(5)] == [0.0] * 5
    wait = throttle.take("site-a")
    assert 0.4 < wait <= 0.5  # one login refills in half a second
    assert throttle.take("site-b") == 0.0  # another participant has its own bucket
    clock.now += wait
    assert throttle.take("site-a") == 0.0
    assert throttle.take("site-a") > 0
    clock.now += 100  # refills to the burst, no further
    assert [throttle.take("site-a") for _ in range(6)].count(0.0) == 5


def test_it_forgets_full_buckets_rather_than_grow() -> None:
    clock = Clock()
    throttle = Throttle(burst=2, per_second=1, clock=clock)
    for i in range(10_000):
        throttle.take(f"n{i}")
    clock.now += 10
    throttle.take("late")
    assert len(throttle._buckets) == 1


def test_a_repeated_line_is_written_once_a_minute_with_how_many_were_left_out() -> None:
    clock = Clock()
    rarely = Rarely(60, clock=clock)
    assert rarely.due("site-a", "late") == ""
    assert [rarely.due("site-a", "late") for _ in range(3)] == [None] * 3
    assert rarely.due("site-a", "flood") == ""  # another kind has its own minute
    assert rarely.due("site-b", "late") == ""  # and so has another site
    clock.now += 60
    assert rarely.due("site-a", "late") == " (3 more like it left out since the last)"
    assert rarely.due("site-a", "late") is None
    clock.now += 600
    assert rarely.due("site-a", "late") == " (1 more like it left out since the last)"
    assert rarely.due("site-a", "flood") == ""
