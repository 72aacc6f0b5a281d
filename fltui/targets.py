"""Whom a command reaches, in words: the target pickers' choices.

What a command that stops something will do is the server's to say (its
confirmation, see ``flserverd.confirm``): the console shows that text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
