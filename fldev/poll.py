"""Waiting for a condition in tests and benchmarks: the one polling helper.

A test that must see something happen in another process, thread or task
checks a predicate until it holds and fails with what it waited for once a
deadline passes; a fixed sleep would pass on a slow runner for the wrong
reason or fail on it for none. The same deadline logic serves plain code
(:func:`wait_until`), asyncio code (:func:`wait_until_async`) and a Textual
app under test (:func:`wait_for`, which lets the app run between checks).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")


class _Poll(Generic[T]):
    """One wait: checks ``predicate`` and fails once ``timeout`` seconds have passed."""

    def __init__(self, predicate: Callable[[], T], timeout: float, what: str) -> None:
        self.predicate = predicate
        self.what = what
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def check(self) -> T | None:
        """The predicate's value when it holds, None when not yet; raise when time is up."""
        value = self.predicate()
        if value:
            return value
        if time.monotonic() > self.deadline:
            raise AssertionError(f"timed out after {self.timeout:g}s waiting for {self.what}")
        return None


def wait_until(
    predicate: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1
) -> T:
    """Call ``predicate`` every ``interval`` seconds until it returns something truthy; return it.

    Raises:
        AssertionError: naming ``what``, when ``timeout`` seconds passed first.
    """
    poll = _Poll(predicate, timeout, what)
    while (value := poll.check()) is None:
        time.sleep(interval)
    return value


async def wait_until_async(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.05,
    pause: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> T:
    """:func:`wait_until` in a coroutine: ``await pause(interval)`` lets the loop run meanwhile."""
    poll = _Poll(predicate, timeout, what)
    while (value := poll.check()) is None:
        await pause(interval)
    return value


class Pilot(Protocol):
    """The part of Textual's ``Pilot`` that waiting needs."""

    async def pause(self, delay: float | None = None) -> None:
        """Let the app process its messages, then wait ``delay`` seconds."""


async def wait_for(
    pilot: Pilot, predicate: Callable[[], T | None], timeout: float = 30.0, what: str = ""
) -> T:
    """Let the app under test run until ``predicate`` is truthy; fail after ``timeout`` seconds."""
    return await wait_until_async(predicate, timeout, what or repr(predicate), pause=pilot.pause)
