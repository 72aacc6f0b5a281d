"""flserverd.throttle: a burst, then a steady rate, per name."""

from __future__ import annotations

from flserverd.throttle import Throttle


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
