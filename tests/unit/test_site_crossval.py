"""flclientd.crossval: a site's cross-site reports, with stand-ins for its link."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import TypeVar, cast

import pytest

from flclientd import crossval
from flclientd.connection import Connection
from flclientd.crossval import CrossSiteValidation
from flclientd.runcontext import RunContext
from flclientd.uplink import Uplink
from flcore.federation import SubmitOutcome, Verdict

T = TypeVar("T")


class Link:
    """Answers reports with the verdicts given, in turn, and keeps what was sent."""

    def __init__(self, *outcomes: SubmitOutcome) -> None:
        self.outcomes = list(outcomes)
        self.sent: list[tuple[str, dict[str, float], str]] = []

    async def retrying(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        return await call()

    async def submit_metrics(
        self,
        run_number: int,
        round_number: int,
        metrics: dict[str, float],
        num_samples: int,
        error: str = "",
        owner: str = "",
    ) -> Verdict:
        self.sent.append((owner, metrics, error))
        return Verdict(self.outcomes.pop(0), "server disk full: state database")


def test_a_report_the_server_postponed_is_sent_again_until_it_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The site moved on from a postponed report, and its cell stayed empty for good."""
    monkeypatch.setattr(crossval, "POSTPONED_RETRY_S", 0.0)
    link = Link(SubmitOutcome.POSTPONED, SubmitOutcome.POSTPONED, SubmitOutcome.ACCEPTED)
    site = CrossSiteValidation(cast(Uplink, link), cast(Connection, link))
    run = cast(RunContext, SimpleNamespace(run_number=3))
    asyncio.run(site._report(run, "a", {"acc": 0.5}, 10, ""))
    assert link.sent == [("a", {"acc": 0.5}, "")] * 3 and not link.outcomes
