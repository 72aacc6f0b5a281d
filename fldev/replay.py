"""A :class:`fladmin.link.Link` that replays a fixed feed: the console without a server.

Snapshot tests and the documentation's screenshot use it, so the
dashboard's look is pinned from a recorded sequence of events with a
frozen clock. Commands get canned replies and are remembered, so tests can
check what a key sent.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fladmin.client import CommandReply
from flcore.feed import Body, ClientRow, FeedEvent, RunInfo
from flserverd.confirm import question

Reply = Callable[[str, bool], CommandReply]


def ok_reply(line: str, confirmed: bool) -> CommandReply:
    """Every command succeeds with a short text."""
    return CommandReply(line, True, f"{line}: done", {}, 42, "2025-06-15 12:00:00.000000")


def confirming(rows: Sequence[ClientRow], run: RunInfo, otherwise: Reply = ok_reply) -> Reply:
    """Replies that ask first where the server would, with its words for this picture
    (``rows`` and ``run``): abort and shutdown, from the console; ``otherwise`` answers
    the rest and what was confirmed."""

    def answer(line: str, confirmed: bool) -> CommandReply:
        words = shlex.split(line)
        if confirmed or words[:1] not in (["abort"], ["shutdown"]) or len(words) < 2:
            return otherwise(line, confirmed)
        named = set(words[2:])
        targets = [row for row in rows if not named or row.instance in named]
        asked = question(words, targets, run, [row.instance for row in rows])
        if asked is None:
            return otherwise(line, confirmed)
        return CommandReply(line, False, "", {"confirm": asked.as_json()}, 0, "", asked.prompt())

    return answer


class ReplayLink:
    """Replays ``events`` once, then stays connected and silent."""

    def __init__(
        self,
        events: Sequence[FeedEvent],
        reply: Reply = ok_reply,
        *,
        user: str = "admin@lead.org",
        role: str = "super",
        project: str = "hospitals",
        target: str = "fl.example.org:8003",
        transfer_dir: Path = Path("/nonexistent/transfer"),
    ) -> None:
        self._events = list(events)
        self._reply = reply
        self.user, self.role, self.project, self.target = user, role, project, target
        self.transfer_dir = transfer_dir
        self.startup = transfer_dir.parent / "startup"
        self.timeout = 10.0
        self.kit_warnings: list[str] = []
        self.sent: list[tuple[str, bool]] = []
        self._pushed: asyncio.Queue[FeedEvent] = asyncio.Queue()
        self._seq = self._events[-1].seq if self._events else 0

    async def login(self) -> None:
        """Nothing to do."""

    async def execute(self, line: str, confirmed: bool = False) -> CommandReply:
        """Remember the command and answer from ``reply``."""
        self.sent.append((line, confirmed))
        return self._reply(line, confirmed)

    def push(self, *bodies: Body, time: float = 0.0) -> None:
        """Send these as the next events of the feed."""
        for body in bodies:
            self._seq += 1
            stamp = time or (self._events[-1].time if self._events else 0.0)
            self._pushed.put_nowait(FeedEvent(self._seq, stamp, body))

    async def events(self) -> AsyncIterator[FeedEvent]:
        """The recorded events, then whatever is pushed (the feed stays open)."""
        for event in self._events:
            yield event
        while True:
            yield await self._pushed.get()

    async def close(self) -> None:
        """Nothing to close."""
