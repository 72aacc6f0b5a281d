"""Processes as /proc shows them: who is whose parent, in which process group, alive or not.

The client daemon uses it to find every process its training child started
(torchrun moves ranks into sessions of their own, out of reach of a group
kill); tests use it to check that nothing was left behind. Linux only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessEntry:
    """One process: its id, its parent's, its process group's, and its state letter
    (``Z`` for a zombie)."""

    pid: int
    parent: int
    group: int
    state: str


def process_table() -> list[ProcessEntry]:
    """Every process there is now (those that end while it is read are left out)."""
    table = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses; the fields follow the last ")".
        state, parent, group = stat.rsplit(")", 1)[1].split()[:3]
        table.append(ProcessEntry(int(entry.name), int(parent), int(group), state))
    return table


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` (children first found first)."""
    children: dict[int, list[int]] = {}
    for process in process_table():
        children.setdefault(process.parent, []).append(process.pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def command_line(pid: int) -> str:
    """The command line of a process, its arguments joined by spaces ('' once it is gone)."""
    try:
        return (
            (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def resident_bytes(pids: list[int]) -> int:
    """The resident memory of these processes together (those gone meanwhile count 0)."""
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    for pid in pids:
        try:
            total += int((PROC / str(pid) / "statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total
