"""What a command that stops or deletes something will really do: the question asked first.

The server decides, in one place, which commands ask (``shutdown`` always,
as in Clara; ``abort`` when the admin sits at a console that confirms
stops, see :class:`Confirmation`; ``start server fresh`` when the run has
trained before; ``delete_run`` always) and says what will happen from its
own picture at that moment: which sites are training and stop, which move
on to cross-site validation instead, which are idle and are left alone,
what a fresh start or a deletion deletes. The console shows this text as it
is; ``fltui --cmd`` prints it before its ``Are you sure (Y/N):``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flcore import status as st
from flcore.feed import ClientRow, RunInfo

QUESTION = "Are you sure (Y/N):"
MAX_LISTED = 8
"""Clients named one per line; the rest are counted."""


@dataclass(frozen=True)
class Confirmation:
    """The question: a title naming the target, what happens line by line, a warning."""

    title: str
    heading: str
    lines: list[str] = field(default_factory=list)
    warning: str = ""
    verb: str = ""
    """The word of the button that goes ahead (``Abort``, ``Shut down``)."""
    acts_on: tuple[str, ...] = ()
    """What an answer commits to (the sites that stop, the run that is deleted): a
    confirmation sent back for a question whose ``acts_on`` has changed since is asked
    again (another admin started a run, a site joined), since the answer was to the old one.
    Statuses and rounds are left out: they move on while the question is read."""

    def digest(self) -> str:
        """A short name of ``acts_on``, which the admin client sends back with its answer."""
        return hashlib.sha256("\0".join(self.acts_on).encode()).hexdigest()[:16]

    def prompt(self) -> str:
        """The question as text, for a terminal: everything, then ``Are you sure (Y/N):``."""
        body = [self.title, self.heading, *(f"  {line}" for line in self.lines)]
        if self.warning:
            body.append(self.warning)
        return "\n".join([*body, QUESTION])

    def as_json(self) -> dict[str, Any]:
        """The question as the reply's data carries it (the console draws it), with the
        digest its answer names."""
        data = asdict(self)
        data["acts_on"] = list(self.acts_on)
        data["digest"] = self.digest()
        return data


def listing(names: Sequence[str]) -> str:
    """``a, b and 3 more``."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _target(rows: Sequence[ClientRow], everyone: bool) -> str:
    return f"all clients ({len(rows)})" if everyone else listing([r.instance for r in rows])


def _client_line(row: ClientRow, current_run: int) -> str:
    """A site's line; one still training a run other than the server's current one says so,
    since an abort stops that run's training too."""
    where = ""
    if row.status in st.ACTIVE and row.round >= 0:
        where = f", round {row.round}"
        if row.run_number and row.run_number != current_run:
            where += f" of run {row.run_number}, not the current run"
    app = f" ({row.app})" if row.app else ""
    return f"{row.instance}: {row.status}{where}{app}"


def _listed(rows: Sequence[ClientRow], current_run: int) -> list[str]:
    lines = [_client_line(row, current_run) for row in rows[:MAX_LISTED]]
    if len(rows) > MAX_LISTED:
        lines.append(f"and {len(rows) - MAX_LISTED} more clients")
    return lines


def abort_clients(
    rows: Sequence[ClientRow], everyone: bool, current_run: int
) -> Confirmation | None:
    """What ``abort client …`` stops; None when none of them trains (nothing to ask)."""
    running = [row for row in rows if row.status in st.ACTIVE]
    if not running:
        return None
    lines = _listed(running, current_run)
    lines.append("Their training processes stop at once.")
    moving = [row.instance for row in running if row.status == st.STARTED and row.cross_validate]
    if moving:
        lines.append(
            f"{listing(moving)} then move on to cross-site validation (cross_validate is on); "
            "abort again to stop that too."
        )
    idle = [row.instance for row in rows if row.status not in st.ACTIVE]
    if idle:
        lines.append(f"Not training, left as they are: {listing(idle)}.")
    title = f"Abort training: {_target(rows, everyone)}"
    stopped = ("abort client", *sorted(row.instance for row in running))
    return Confirmation(title, "This stops:", lines, verb="Abort", acts_on=stopped)


def abort_server(run: RunInfo) -> Confirmation | None:
    """What ``abort server`` stops; None when the server trains nothing."""
    if run.server_status == st.STARTING:
        lines = [f"The start of run {run.run_number} ({run.app}): its initial model is not built."]
    elif run.server_status in st.ACTIVE:
        lines = [
            f"Run {run.run_number} ({run.app}) on the server, at round {run.current_round} of "
            f"{run.num_rounds}.",
            "The last completed round's model stays; sites still training stop when they hear.",
        ]
    else:
        return None
    stopped = ("abort server", str(run.run_number))
    return Confirmation(
        "Abort training: the server", "This stops:", lines, verb="Abort", acts_on=stopped
    )


def shutdown_clients(rows: Sequence[ClientRow], everyone: bool, current_run: int) -> Confirmation:
    """What ``shutdown client …`` ends."""
    lines = _listed(rows, current_run) or ["no client is registered"]
    if any(row.status in st.ACTIVE for row in rows):
        lines.append("Those training stop at once.")
    lines.append("Their client daemons exit; each site must start its own again.")
    title = f"Shut down: {_target(rows, everyone)}"
    ended = ("shutdown client", *sorted(row.instance for row in rows))
    return Confirmation(title, "This shuts down:", lines, verb="Shut down", acts_on=ended)


def shutdown_server(run: RunInfo, registered: Sequence[str]) -> Confirmation:
    """What ``shutdown server`` ends, warning while clients are still registered."""
    lines = ["The server daemon exits, and every console's feed with it."]
    if run.server_status in st.ACTIVE:
        lines.append(
            f"Run {run.run_number} stops at round {run.current_round} of {run.num_rounds}; once "
            "the server is back, start server continues it."
        )
    warning = ""
    if registered:
        warning = (
            f"{len(registered)} client(s) still registered ({listing(registered)}); shut clients "
            "down first (shutdown client), because they receive commands through the server."
        )
    training = str(run.run_number) if run.server_status in st.ACTIVE else ""
    return Confirmation(
        "Shut down: the server",
        "This shuts down:",
        lines,
        warning,
        "Shut down",
        acts_on=("shutdown server", training),
    )


def start_fresh(run_number: int, rounds_done: int, ended: str) -> Confirmation:
    """What ``start server fresh`` throws away of a run that has trained before (``ended``:
    its status and reason)."""
    lines = [
        f"Run {run_number}: {rounds_done} completed round(s) ({ended}).",
        "Training begins again from its first round, with a new initial model.",
    ]
    warning = "Starting fresh deletes its models, metrics and cross-site results."
    return Confirmation(
        f"Start fresh: run {run_number}",
        "This starts over:",
        lines,
        warning,
        "Start fresh",
        acts_on=("start server fresh", str(run_number)),
    )


def delete_run(run_number: int, size: str, history: str) -> Confirmation:
    """What ``delete_run`` throws away: the run's folder (``size``, as the reply will say it)
    and its ``history`` (a line saying what the state database holds of it)."""
    lines = [
        f"run_{run_number}/ ({size}): its models, metrics.jsonl, TensorBoard files, the "
        "apps deployed for it and the sites' models shared for cross-site validation.",
        history,
    ]
    warning = (
        f"This cannot be undone: copy run_{run_number}/ away first if you may need it. The "
        "audit keeps the record of the commands that made and deleted it."
    )
    return Confirmation(
        f"Delete: run {run_number}",
        "This deletes:",
        lines,
        warning,
        "Delete",
        acts_on=("delete_run", str(run_number), size),
    )


def question(
    words: Sequence[str], targets: Sequence[ClientRow], run: RunInfo, registered: Sequence[str]
) -> Confirmation | None:
    """What ``abort``/``shutdown`` ``server | client [instance…]`` asks (None: nothing to
    ask); ``targets`` are the rows of the clients it names (every client when it names
    none), ``registered`` the instances the server has."""
    verb, kind, everyone = words[0], words[1], len(words) == 2
    if verb == "abort":
        if kind == "server":
            return abort_server(run)
        return abort_clients(targets, everyone, run.run_number)
    if kind == "server":
        return shutdown_server(run, registered)
    return shutdown_clients(targets, everyone, run.run_number)
