"""Helpers shared by the benchmark scripts: process statistics over time, tables.

The scripts put the repository root on ``sys.path`` themselves (they are run
as ``.venv/bin/python bench/<name>.py``), then reuse the cluster harness
the integration tests use (:mod:`fldev.cluster`) to provision a project and start
real daemons, and its MLP app of a chosen size (:mod:`fldev.mlpapp`).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    """CPU time and memory of one process, read from /proc."""

    cpu_s: float
    rss_mb: float
    peak_rss_mb: float


def proc_stat(pid: int) -> ProcStat:
    """utime+stime (seconds), VmRSS and VmHWM (MB) of a live process."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the command name, which is in parentheses and may hold spaces.
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    memory: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0]) / 1024
    return ProcStat(cpu, memory.get("VmRSS", 0.0), memory.get("VmHWM", 0.0))


class MemorySampler:
    """Samples a process's RSS split (anonymous / file-backed) in a background thread.

    VmHWM gives the true peak but not what it is made of; the samples (every
    ``interval`` seconds) tell anonymous memory (heaps, buffers) apart from
    file pages mapped by the process (e.g. memory-mapped model files).
    ``anon_timeline`` keeps each sample's ``RssAnon`` with its wall-clock time,
    so that memory can be matched to what the daemons logged at that moment.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak: dict[str, float] = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
        self.anon_timeline: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self._stop.wait(self.interval):
            try:
                text = status.read_text()
            except OSError:
                return
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in self.peak and value.strip():
                    megabytes = int(value.split()[0]) / 1024
                    self.peak[key] = max(self.peak[key], megabytes)
                    if key == "RssAnon":
                        self.anon_timeline.append((time.time(), megabytes))


class ConsoleFeed:
    """A console's live feed (the admin ``Events`` stream), read in a background thread.

    Counts events and their serialized bytes, as a console attached during
    training would receive them.
    """

    def __init__(self, startup_dir: Path, user: str) -> None:
        self.startup_dir = startup_dir
        self.user = user
        self.events = 0
        self.bytes = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConsoleFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import asyncio

        from fladmin import AdminClient, load_kit

        async def consume() -> None:
            client = AdminClient(self.startup_dir, load_kit(self.startup_dir), self.user)
            await client.login()
            try:
                async for message in client.events():
                    self.events += len(message.batch.events) if message.HasField("batch") else 1
                    self.bytes += message.ByteSize()
                    if self._stop.is_set():
                        return
            finally:
                await client.close()

        async def until_stopped() -> None:
            task = asyncio.ensure_future(consume())
            while not self._stop.is_set() and not task.done():
                await asyncio.sleep(0.2)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception as exc:  # reported, not raised: the feed is an observer
                self.error = f"{type(exc).__name__}: {exc}"

        asyncio.run(until_stopped())


class CpuTally:
    """Summed CPU seconds of a set of processes, each counted at its last sighting: a
    process that exits during a window keeps what it used (a difference of sums of the
    processes still alive went negative when a training child ended first)."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = list(pids)
        self._seen: dict[int, float] = {}

    def sample(self) -> float:
        for pid in self._pids:
            try:
                self._seen[pid] = proc_stat(pid).cpu_s
            except (OSError, ValueError):
                continue
        return sum(self._seen.values())


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy since boot (/proc/stat; not idle/iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / CLK_TCK


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, columns left-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


@dataclass(frozen=True)
class Usage:
    """A process's resources at one moment (/proc)."""

    time: float
    rss_mb: float
    fds: int
    threads: int


def usage(pid: int) -> Usage:
    """RSS, open file descriptors and threads of a live process, now."""
    rss, threads = 0.0, 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "VmRSS":
            rss = int(value.split()[0]) / 1024
        elif key == "Threads":
            threads = int(value)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return Usage(time.monotonic(), rss, fds, threads)


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute (0 for fewer than two)."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    if spread == 0:
        return 0.0
    return 60 * sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


class UsageSampler:
    """Samples :func:`usage` of named processes every ``interval`` seconds in a thread.

    A process that has exited is no longer sampled (its last samples stay).
    """

    def __init__(self, pids: dict[str, int], interval: float = 2.0) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.samples: dict[str, list[Usage]] = {name: [] for name in pids}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> UsageSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError, ValueError):
                self.samples[name].append(usage(pid))

    def after(self, name: str, warmup: float) -> list[Usage]:
        """A process's samples taken ``warmup`` seconds or more into the sampling."""
        return [s for s in self.samples[name] if s.time - self.started >= warmup]

    def slopes(self, warmup: float) -> dict[str, tuple[float, float, float]]:
        """Per process: slopes per minute of RSS (MB), file descriptors and threads, after the
        warm-up."""
        out = {}
        for name in self.samples:
            kept = self.after(name, warmup)
            out[name] = (
                slope_per_minute([(s.time, s.rss_mb) for s in kept]),
                slope_per_minute([(s.time, float(s.fds)) for s in kept]),
                slope_per_minute([(s.time, float(s.threads)) for s in kept]),
            )
        return out
