"""Whom a command reaches, in words: the target pickers' choices and the confirmations' text.

A confirmation must say exactly what will happen, so these read the same
live picture the panes show, at the moment the admin is asked: the title
names the target as the picker did ("all clients (3)"), only what is
running is listed as stopping, and an abort that sends a site on to
cross-site validation says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from flcore import status as st
from flcore.feed import ClientRow
from fltui.store import Store

MAX_LISTED = 8


@dataclass(frozen=True)
class Choice:
    """One option of a picker: the words it adds to the command, and its label."""

    value: str
    label: str


@dataclass(frozen=True)
class Consequences:
    """What a confirmation shows: a heading, one line per thing affected."""

    heading: str
    lines: list[str]


def listing(names: Sequence[str]) -> str:
    """``a, b and 3 more``."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def live_clients(store: Store) -> list[str]:
    """Instances the server still has (dropped ones cannot be reached)."""
    return [name for name in store.clients if name not in store.gone]


def target_choices(store: Store, selected: Sequence[str], careful: bool = False) -> list[Choice]:
    """Server, all clients, and the selected clients when some are selected.

    A ``careful`` picker (a command that stops something) lists the server
    last: the narrowest target comes first, the widest last.
    """
    run = store.run
    detail = f"run {run.run_number}, {run.server_status}" if run.run_number else "no run set"
    server = Choice("server", f"the server ({detail})")
    everyone = live_clients(store)
    choices = [Choice("client", f"all clients ({len(everyone)})")]
    chosen = set(selected)
    reachable = [name for name in everyone if name in chosen]  # in the table's order
    if reachable:
        choices.append(Choice("client " + " ".join(reachable), f"selected: {listing(reachable)}"))
    return [*reversed(choices), server] if careful else [server, *choices]


def describe_target(store: Store, words: Sequence[str]) -> str:
    """``the server``, ``all clients (3)`` or the named instances, as the picker said it."""
    kind, names = (words[1] if len(words) > 1 else ""), list(words[2:])
    if kind == "server":
        return "the server"
    if kind == "client":
        return listing(names) if names else f"all clients ({len(live_clients(store))})"
    return " ".join(words[1:])


def _client_line(row: ClientRow) -> str:
    where = f", round {row.round}" if row.status in st.ACTIVE and row.round >= 0 else ""
    app = f" ({row.app})" if row.app else ""
    return f"{row.instance}: {row.status}{where}{app}"


def _named(store: Store, names: Sequence[str]) -> list[ClientRow]:
    wanted = names or live_clients(store)
    return [store.clients[name] for name in wanted if name in store.clients]


def _listed(rows: Sequence[ClientRow]) -> list[str]:
    lines = [_client_line(row) for row in rows[:MAX_LISTED]]
    if len(rows) > MAX_LISTED:
        lines.append(f"and {len(rows) - MAX_LISTED} more clients")
    return lines


def describe_stop(store: Store, words: Sequence[str]) -> Consequences:
    """What ``abort …`` or ``shutdown …`` will do, one line per thing affected."""
    verb, kind, names = words[0], words[1] if len(words) > 1 else "", list(words[2:])
    if kind == "server":
        return _server(store, verb)
    rows = _named(store, names)
    if not rows:
        return Consequences("Nothing to stop:", ["no client is registered"])
    if verb == "shutdown":
        lines = _listed(rows)
        lines.append("Their client daemons exit; each site must start its own again.")
        return Consequences("This shuts down:", lines)
    running = [row for row in rows if row.status in st.ACTIVE]
    idle = [row.instance for row in rows if row.status not in st.ACTIVE]
    lines = _listed(running) or ["nothing: none of them is training"]
    if running:
        lines.append("Their training processes stop at once.")
    if any(row.status == st.STARTED for row in running):
        lines.append(
            "A site with cross_validate on moves to cross-site validation instead "
            "(abort it again to stop that too)."
        )
    if idle:
        lines.append(f"Not training, left as they are: {listing(idle)}.")
    return Consequences("This stops:", lines)


def _server(store: Store, verb: str) -> Consequences:
    run = store.run
    server = store.server
    name = f" ({server.name}, {server.admin_target})" if server else ""
    training = run.server_status in st.ACTIVE
    if verb == "shutdown":
        lines = [f"The server daemon{name} exits."]
        if training:
            lines.append(f"Run {run.run_number} stops training at round {run.current_round}.")
        return Consequences("This shuts down:", lines)
    if not training:
        return Consequences(
            "Nothing to stop:",
            [f"The server is not training ({run.server_status}): there is nothing to abort."],
        )
    return Consequences(
        "This stops:",
        [
            f"Run {run.run_number} ({run.app}) on the server, at round {run.current_round} of "
            f"{run.num_rounds}.",
            "The last completed round's model stays.",
        ],
    )
