"""The commands of the guides' ``console`` blocks, for the tests that run them as written.

A block is picked either by the section it is in (``## Revoking a kit``) or
by a marker on the line before its fence, which names the walkthrough it
belongs to and is invisible in the rendered guide::

    <!-- guide: one-machine -->
    ```console
    $ a command
    what it prints
    ```

In a block, a line starting with ``$ `` is a command; the lines after it,
up to the next command, are what it prints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
FENCE = re.compile(r"(?:<!-- guide: ([\w-]+) -->\n)?```console\n(.*?)```", re.DOTALL)


@dataclass
class Command:
    """A command of a guide and what the guide shows it printing."""

    line: str
    output: list[str] = field(default_factory=list)


def commands(block: str) -> list[Command]:
    """The commands of one block, in order."""
    found: list[Command] = []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith("$ "):
            found.append(Command(line[2:]))
        elif line and found:
            found[-1].output.append(line)
    return found


def section_commands(guide: Path, sections: tuple[str, ...]) -> list[Command]:
    """The commands of every console block in the ``## `` sections named, in order."""
    found: list[Command] = []
    for section in re.split(r"\n(?=## )", guide.read_text()):
        if section.startswith(sections):
            for _, block in FENCE.findall(section):
                found += commands(block)
    return found


def walkthrough(guide: Path, name: str) -> list[Command]:
    """The commands of the blocks marked ``<!-- guide: NAME -->``, in order."""
    return [
        c
        for marker, block in FENCE.findall(guide.read_text())
        if marker == name
        for c in commands(block)
    ]
