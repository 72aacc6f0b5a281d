"""The log pane's filter: ``src:flclient1 level:warning text`` in one line.

Operators type filters into the same ``/`` box they use for tables, so the
syntax is a few prefixed words plus free text, in any order:

* ``src:NAME`` or ``@NAME``: lines from that source (``server``, an
  instance, ``console``, ``admin``); repeat it for several sources;
* ``level:LEVEL``: that level and worse (``warning`` shows errors too);
* anything else: text that must occur in the message or the logger name.
"""

from __future__ import annotations

from dataclasses import dataclass

from flcore.feed import LogEntry

LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50}


@dataclass(frozen=True)
class LogFilter:
    """A parsed filter; the empty filter lets everything through."""

    sources: frozenset[str] = frozenset()
    level: int = 0
    text: str = ""

    @classmethod
    def parse(cls, line: str) -> LogFilter:
        """Read a filter line (unknown levels count as text, so nothing is silently dropped)."""
        sources: set[str] = set()
        level = 0
        words: list[str] = []
        for word in line.split():
            lowered = word.lower()
            if lowered.startswith("src:") and len(word) > 4:
                sources.add(word[4:])
            elif word.startswith("@") and len(word) > 1:
                sources.add(word[1:])
            elif lowered.startswith("level:") and word[6:].upper() in LEVELS:
                level = LEVELS[word[6:].upper()]
            else:
                words.append(lowered)
        return cls(frozenset(sources), level, " ".join(words))

    def __bool__(self) -> bool:
        return bool(self.sources or self.level or self.text)

    def accepts(self, entry: LogEntry) -> bool:
        """Whether the line passes."""
        if self.sources and entry.source not in self.sources:
            return False
        if self.level and LEVELS.get(entry.level.upper(), 0) < self.level:
            return False
        if self.text:
            return self.text in entry.message.lower() or self.text in entry.logger.lower()
        return True
