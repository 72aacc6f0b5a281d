"""Seconds per round and server memory on the DESIGN.md workload.

An MLP of about 1 M (``small``) or 25 M (``large``) parameters, trained one
SGD step per round (a dataset of exactly ``batch_size`` samples, one local
epoch), full model down and up, ``min_num_clients = max_num_clients`` = the
number of clients and a wait of an hour, so rounds close because every
client reported. Real ``flserverd`` and ``flclientd`` processes on
127.0.0.1, started by the cluster harness of the integration tests (:mod:`fldev.cluster`).

Reported per scenario: the median and p90 of ``duration_s`` in the server's
``run_1/metrics.jsonl`` (round 0 excluded: it includes starting the
training processes), the peak RSS (VmHWM) of the flserverd process, and the
CPU seconds per round of the server, the client daemons and the training
children over the measured rounds. Also the CPU the rest of the machine
used meanwhile ("other load": a high value means the run was disturbed),
and with ``--console`` what an admin's live feed attached during the run
received.

    .venv/bin/python bench/round_time.py                      # both scenarios
    .venv/bin/python bench/round_time.py --model small --clients 2 --rounds 60
    .venv/bin/python bench/round_time.py --model large --clients 8 --rounds 8
    .venv/bin/python bench/round_time.py --model small --rounds 600 --console
    .venv/bin/python bench/round_time.py --model large --clients 2,8,32 --rounds 2 --repeats 3

With a sweep (``--clients 2,8,32``) and ``--repeats``, every run gets its
column and a second table gives the server's median peak RSS per client
count and its growth from the fewest clients.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    ConsoleFeed,
    CpuTally,
    MemorySampler,
    machine_busy_seconds,
    median,
    percentile,
    proc_stat,
    table,
)
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.mlpapp import MODELS, ModelSize, start_app_run, write_app  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

TARGETS = {"small": (0.1, None), "large": (4.0, 500.0)}
DEFAULT_CLIENTS = {"small": 2, "large": 8}
DEFAULT_ROUNDS = {"small": 60, "large": 8}


TRANSFER_LINE = re.compile(
    r"^(\S+ \S+) INFO flclientd\.connection: (downloaded|uploaded) \S+: \d+ bytes in "
    r"([0-9.]+) s",
    re.MULTILINE,
)


def transfers(log: str) -> list[tuple[str, float, float]]:
    """(direction, start, end) in epoch seconds of every model a client daemon moved, from
    its log (the line is written when the transfer ended and says how long it took)."""
    out = []
    for stamp, direction, seconds in TRANSFER_LINE.findall(log):
        end = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append((direction, end - float(seconds), end))
    return out


@dataclass(frozen=True)
class Phases:
    """The server's anonymous memory before any model moved; its peak while round 0's
    downloads moved and no upload had begun (memory an upload left behind cannot count as
    a download's); its peak while only uploads moved. With the most transfers at once."""

    idle_mb: float
    download_mb: float
    downloads: int
    upload_mb: float
    uploads: int

    def describe(self, which: str) -> str:
        """``which``: ``download`` or ``upload``."""
        mb, most = (
            (self.download_mb, self.downloads)
            if which == "download"
            else (self.upload_mb, self.uploads)
        )
        return f"{mb:.0f} ({most} at once)"


def phases(samples: list[tuple[float, float]], moved: list[tuple[str, float, float]]) -> Phases:
    """Split a timeline of anonymous memory by the transfers in flight at each sample."""
    first = min((start for _, start, _ in moved), default=float("inf"))
    first_upload = min((s for d, s, _ in moved if d == "uploaded"), default=float("inf"))
    idle = [mb for t, mb in samples if t < first]
    peaks = {"downloaded": (0.0, 0), "uploaded": (0.0, 0)}
    for t, mb in samples:
        flying = {"downloaded": 0, "uploaded": 0}
        for direction, start, end in moved:
            if start <= t <= end:
                flying[direction] += 1
        if flying["downloaded"] and t < first_upload:
            peak, most = peaks["downloaded"]
            peaks["downloaded"] = (max(peak, mb), max(most, flying["downloaded"]))
        if flying["uploaded"] and not flying["downloaded"]:
            peak, most = peaks["uploaded"]
            peaks["uploaded"] = (max(peak, mb), max(most, flying["uploaded"]))
    return Phases(
        idle_mb=max(idle, default=0.0),
        download_mb=peaks["downloaded"][0],
        downloads=peaks["downloaded"][1],
        upload_mb=peaks["uploaded"][0],
        uploads=peaks["uploaded"][1],
    )


@dataclass(frozen=True)
class Result:
    """What one scenario measured."""

    model: ModelSize
    clients: int
    rounds: int
    median_s: float
    p90_s: float
    first_median_s: float
    last_median_s: float
    min_s: float
    max_s: float
    server_peak_mb: float
    server_peak_anon_mb: float
    server_peak_file_mb: float
    phases: Phases
    server_rss_start_mb: float
    server_rss_end_mb: float
    server_cpu_per_round: float
    daemons_cpu_per_round: float
    workers_cpu_per_round: float
    other_cores: float
    all_clients_every_round: bool
    console_events: int
    console_mb: float
    wall_s: float


def run_scenario(
    root: Path, model: ModelSize, clients: int, rounds: int, console: bool = False
) -> Result:
    """Start a server and ``clients`` clients, train ``rounds`` rounds, measure."""
    started = time.monotonic()
    names = tuple(f"flclient{i}" for i in range(1, clients + 1))
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    with cluster(root, clients=names, settings=settings) as c:
        write_app(c.root / ADMIN / "transfer", model, clients=clients, num_rounds=rounds)
        server = c.server()
        with contextlib.ExitStack() as stack:
            memory = stack.enter_context(MemorySampler(server.pid, interval=0.02))
            feed = stack.enter_context(ConsoleFeed(c.kit(), ADMIN)) if console else None
            result = _train(c, server.pid, model, names, rounds, memory, started)
        moved = [t for name in names for t in transfers(c.root.joinpath(f"{name}.log").read_text())]
        result = replace(result, phases=phases(memory.anon_timeline, moved))
        if feed is not None:
            if feed.error:
                print(f"console feed: {feed.error}", flush=True)
            result = replace(result, console_events=feed.events, console_mb=feed.bytes / 1e6)
        return result


def _train(
    c: Cluster,
    server_pid: int,
    model: ModelSize,
    names: tuple[str, ...],
    rounds: int,
    memory: MemorySampler,
    started: float,
) -> Result:
    """Train the run with the server already started; measure rounds 1 and later."""
    clients = len(names)
    daemons = [c.client(name) for name in names]
    start_app_run(c)
    # Round 0 pays for starting the training children; measure from its end.
    wait_until(lambda: c.metrics(), 600, "round 0", interval=0.05)
    pids = ([server_pid], [d.pid for d in daemons], c.worker_pids())
    tallies = [CpuTally(group) for group in pids]
    window_start = (time.monotonic(), machine_busy_seconds(), time.process_time())
    server_before = proc_stat(server_pid)
    cpu_before = tuple(tally.sample() for tally in tallies)

    def measured_all() -> bool:
        for tally in tallies:
            tally.sample()
        return len(_training_rows(c)) >= rounds

    wait_until(measured_all, 60 + rounds * 120, f"{rounds} rounds", interval=0.2)
    server_after = proc_stat(server_pid)
    cpu_after = tuple(tally.sample() for tally in tallies)
    window = time.monotonic() - window_start[0]
    machine = machine_busy_seconds() - window_start[1]
    ours = sum(after - before for after, before in zip(cpu_after, cpu_before, strict=True))
    ours += time.process_time() - window_start[2]
    rows = _training_rows(c)
    measured = [r for r in rows if r["round"] >= 1]
    durations = [float(r["duration_s"]) for r in measured]
    n = len(measured)
    tail = max(1, min(20, n // 5))
    return Result(
        model=model,
        clients=clients,
        rounds=n,
        median_s=median(durations),
        p90_s=percentile(durations, 90),
        first_median_s=median(durations[:tail]),
        last_median_s=median(durations[-tail:]),
        min_s=min(durations),
        max_s=max(durations),
        server_peak_mb=server_after.peak_rss_mb,
        server_peak_anon_mb=memory.peak["RssAnon"],
        server_peak_file_mb=memory.peak["RssFile"],
        phases=Phases(0.0, 0.0, 0, 0.0, 0),
        server_rss_start_mb=server_before.rss_mb,
        server_rss_end_mb=server_after.rss_mb,
        server_cpu_per_round=(cpu_after[0] - cpu_before[0]) / n,
        daemons_cpu_per_round=(cpu_after[1] - cpu_before[1]) / n,
        workers_cpu_per_round=(cpu_after[2] - cpu_before[2]) / n,
        other_cores=max(0.0, machine - ours) / window,
        all_clients_every_round=all(len(r["clients"]) == clients for r in rows),
        console_events=0,
        console_mb=0.0,
        wall_s=time.monotonic() - started,
    )


def _training_rows(c: Cluster) -> list[dict[str, Any]]:
    return [r for r in c.metrics() if not r.get("final")]


def verdict(result: Result) -> str:
    """Whether the scenario meets its DESIGN.md target (only the standard scenarios have one)."""
    limit_s, limit_mb = TARGETS[result.model.name]
    if result.clients != DEFAULT_CLIENTS[result.model.name]:
        return "n/a"
    ok = result.median_s <= limit_s and (limit_mb is None or result.server_peak_mb < limit_mb)
    target = f"<= {limit_s:g} s" + (f", < {limit_mb:g} MB" if limit_mb else "")
    return f"{'meets' if ok else 'MISSES'} ({target})"


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), help="default: small, then large")
    parser.add_argument(
        "--clients",
        type=client_counts,
        help="clients, or a comma-separated sweep such as 2,8,32 (default: 2 small, 8 large)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="fresh runs of each scenario (1)")
    parser.add_argument("--rounds", type=int, help="rounds (default: 60 small, 8 large)")
    parser.add_argument(
        "--console",
        action="store_true",
        help="keep a console's live feed (admin Events stream) attached during the run",
    )
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    models = [args.model] if args.model else ["small", "large"]
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    results = []
    for name in models:
        model = MODELS[name]
        rounds = args.rounds or DEFAULT_ROUNDS[name]
        if rounds < 2:
            parser.error("--rounds must be at least 2 (round 0 is not measured)")
        for clients in args.clients or [DEFAULT_CLIENTS[name]]:
            for repeat in range(1, args.repeats + 1):
                print(
                    f"[{name}] {model.parameters:,} parameters ({model.megabytes:.1f} MB), "
                    f"{clients} clients, {rounds} rounds, run {repeat} of {args.repeats} ...",
                    flush=True,
                )
                with tempfile.TemporaryDirectory(prefix=f"flbench-{name}-") as tmp:
                    root = (args.workdir or Path(tmp)) / f"{name}-{clients}-{repeat}"
                    result = run_scenario(root, model, clients, rounds, args.console)
                results.append(result)
                print(f"[{name}] done in {result.wall_s:.0f} s", flush=True)
    measures: list[tuple[str, Callable[[Result], object]]] = [
        ("parameters", lambda r: f"{r.model.parameters:,} ({r.model.megabytes:.0f} MB)"),
        ("clients", lambda r: r.clients),
        ("rounds measured (1..N-1)", lambda r: r.rounds),
        ("s/round median", lambda r: f"{r.median_s:.3f}"),
        ("s/round p90", lambda r: f"{r.p90_s:.3f}"),
        ("s/round min / max", lambda r: f"{r.min_s:.3f} / {r.max_s:.3f}"),
        (
            "s/round median, first / last 20% (<= 20 rounds)",
            lambda r: f"{r.first_median_s:.3f} / {r.last_median_s:.3f}",
        ),
        ("server peak RSS MB (VmHWM)", lambda r: f"{r.server_peak_mb:.0f}"),
        (
            "  sampled peak anon / file MB",
            lambda r: f"{r.server_peak_anon_mb:.0f} / {r.server_peak_file_mb:.0f}",
        ),
        ("  anon MB before any model moved", lambda r: f"{r.phases.idle_mb:.0f}"),
        (
            "  peak anon MB, round 0 downloads (no upload yet)",
            lambda r: r.phases.describe("download"),
        ),
        ("  peak anon MB, only uploads moving", lambda r: r.phases.describe("upload")),
        (
            "server RSS MB after round 0 / at end",
            lambda r: f"{r.server_rss_start_mb:.0f} / {r.server_rss_end_mb:.0f}",
        ),
        ("CPU s/round: server", lambda r: f"{r.server_cpu_per_round:.3f}"),
        ("CPU s/round: client daemons (all)", lambda r: f"{r.daemons_cpu_per_round:.3f}"),
        ("CPU s/round: training children (all)", lambda r: f"{r.workers_cpu_per_round:.3f}"),
        ("other load on the machine (cores)", lambda r: f"{r.other_cores:.2f}"),
        (
            "every round closed by all clients",
            lambda r: "yes" if r.all_clients_every_round else "NO",
        ),
        ("DESIGN.md target", verdict),
    ]
    if args.console:
        measures.insert(
            -1,
            (
                "console feed: events / MB received",
                lambda r: f"{r.console_events} / {r.console_mb:.1f}",
            ),
        )
    headers = ["", *(f"{r.model.name} / {r.clients} clients" for r in results)]
    rows = [[label, *(str(get(r)) for r in results)] for label, get in measures]
    print()
    print(table(headers, rows))
    growth = memory_growth(results)
    if growth:
        print()
        print(
            table(
                [
                    "model",
                    "clients",
                    "runs",
                    "server peak RSS MB, median",
                    "growth (target < 10 %)",
                ],
                growth,
            )
        )
    return 0


def client_counts(text: str) -> list[int]:
    """``--clients``: one count or a comma-separated sweep, each at least 1."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give numbers such as 8 or 2,8,32") from None
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: every count must be at least 1")
    return counts


def memory_growth(results: list[Result]) -> list[list[str]]:
    """Per model swept over client counts: the server's median peak RSS (VmHWM) per count and
    its growth from the fewest clients (the issue's target: under 10 % from 2 to 32)."""
    rows = []
    for name in dict.fromkeys(r.model.name for r in results):
        peaks: dict[int, list[float]] = {}
        for r in results:
            if r.model.name == name:
                peaks.setdefault(r.clients, []).append(r.server_peak_mb)
        if len(peaks) < 2:
            continue
        fewest = median(peaks[min(peaks)])
        for clients in sorted(peaks):
            peak = median(peaks[clients])
            rows.append(
                [
                    name,
                    str(clients),
                    str(len(peaks[clients])),
                    f"{peak:.0f}",
                    f"{100 * (peak / fewest - 1):+.1f} %",
                ]
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
