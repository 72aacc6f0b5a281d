"""Whom a command reaches, in words: the target pickers' choices and the confirmations' text.

A confirmation must name exactly what will stop, so these read the same
live picture the panes show, at the moment the admin is asked.
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


def listing(names: Sequence[str]) -> str:
    """``a, b and 3 more``."""
    shown = ", ".join(names[:MAX_LISTED])
    more = len(names) - MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def live_clients(store: Store) -> list[str]:
    """Instances the server still has (dropped ones cannot be reached)."""
    return [name for name in store.clients if name not in store.gone]


def target_choices(store: Store, selected: Sequence[str], server: bool = True) -> list[Choice]:
    """Server, all clients, and the selected clients when some are selected."""
    choices = []
    if server:
        run = store.run
        detail = f"run {run.run_number}, {run.server_status}" if run.run_number else "no run set"
        choices.append(Choice("server", f"the server ({detail})"))
    everyone = live_clients(store)
    choices.append(Choice("client", f"all clients ({len(everyone)})"))
    chosen = set(selected)
    reachable = [name for name in everyone if name in chosen]  # in the table's order
    if reachable:
        choices.append(Choice("client " + " ".join(reachable), f"selected: {listing(reachable)}"))
    return choices


def _client_line(row: ClientRow) -> str:
    where = f", round {row.round}" if row.status in st.ACTIVE and row.round >= 0 else ""
    app = f" ({row.app})" if row.app else ""
    return f"{row.instance}: {row.status}{where}{app}"


def _named(store: Store, names: Sequence[str]) -> list[ClientRow]:
    wanted = names or live_clients(store)
    return [store.clients[name] for name in wanted if name in store.clients]


def describe_stop(store: Store, words: Sequence[str]) -> list[str]:
    """What ``abort …`` or ``shutdown …`` will stop, one line per thing stopped."""
    verb, kind, names = words[0], words[1] if len(words) > 1 else "", list(words[2:])
    if kind == "server":
        return _server_lines(store, verb)
    rows = _named(store, names)
    if not rows:
        return ["no client is registered: nothing to stop"]
    lines = [_client_line(row) for row in rows[:MAX_LISTED]]
    if len(rows) > MAX_LISTED:
        lines.append(f"and {len(rows) - MAX_LISTED} more clients")
    if verb == "shutdown":
        lines.append("Their client daemons exit; each site must start its own again.")
    else:
        lines.append("Their training processes stop at once.")
    return lines


def _server_lines(store: Store, verb: str) -> list[str]:
    run = store.run
    server = store.server
    name = f" ({server.name}, {server.admin_target})" if server else ""
    training = run.server_status in st.ACTIVE
    if verb == "shutdown":
        lines = [f"The server daemon{name} exits."]
        if training:
            lines.append(f"Run {run.run_number} stops training at round {run.current_round}.")
        return lines
    if not training:
        return [f"The server is not training ({run.server_status}): there is nothing to abort."]
    return [
        f"Run {run.run_number} ({run.app}) on the server, at round {run.current_round} of "
        f"{run.num_rounds}.",
        "The last completed round's model stays.",
    ]
