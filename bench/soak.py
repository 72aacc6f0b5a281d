"""Whether a long run leaks: RSS, file descriptors and threads of every daemon while the small
model trains round after round with 8 real clients (30 minutes by default).

A server and ``--clients`` client daemons (real processes, mutual TLS, the
harness of the integration tests) train the small benchmark model
(``fldev/mlpapp.py``: 1 M parameters, one SGD step per round, a round
closes when every client reported) for ``--duration`` seconds. Every
``--interval`` seconds the script reads /proc for the server, each client
daemon and each training child: VmRSS, the number of open file descriptors
and the number of threads. After the warm-up (``--warmup``, by default a
tenth of the duration and at least 60 s) it fits a least-squares line to
each series and prints its slope per minute: a daemon that does not leak
shows slopes near zero. At the end it checks that every process is still
alive and the run still trains.

    .venv/bin/python bench/soak.py                           # 30 minutes, 8 clients
    .venv/bin/python bench/soak.py --duration 300 --clients 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import Usage, UsageSampler, table  # noqa: E402
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.mlpapp import MODELS, start_app_run, write_app  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

# What "flat" means in the verdict column: growth per minute below these.
FLAT_RSS_MB = 0.5
FLAT_COUNT = 0.1


def sustained(values: list[float]) -> bool:
    """Whether a series really rose: its last quarter stays above its first quarter's top.

    Open files and memory go up and down with each transfer; a slope alone
    would call that jitter growth over a short window.
    """
    quarter = max(1, len(values) // 4)
    return len(values) >= 4 and min(values[-quarter:]) > max(values[:quarter])


def verdict(samples: list[Usage], slopes: tuple[float, float, float]) -> str:
    """'flat' unless a series grows faster than its FLAT_* bound and for good."""
    series = {
        "RSS": ([s.rss_mb for s in samples], slopes[0], FLAT_RSS_MB),
        "fds": ([float(s.fds) for s in samples], slopes[1], FLAT_COUNT),
        "threads": ([float(s.threads) for s in samples], slopes[2], FLAT_COUNT),
    }
    growing = [
        name
        for name, (values, slope, bound) in series.items()
        if slope > bound and sustained(values)
    ]
    return "flat" if not growing else "GROWS: " + ", ".join(growing)


def rounds_done(c: Cluster) -> int:
    """Training rounds aggregated so far."""
    return len([r for r in c.metrics() if not r.get("final")])


def soak(root: Path, args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]]]:
    """Start the cluster, train for the duration while sampling; the summary's rows and one
    row per process."""
    names = tuple(f"flclient{i}" for i in range(1, args.clients + 1))
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    with cluster(root, clients=names, settings=settings) as c:
        write_app(
            c.root / ADMIN / "transfer", MODELS["small"], clients=args.clients, num_rounds=10**7
        )
        server = c.server()
        daemons = {name: c.client(name) for name in names}
        start_app_run(c)
        wait_until(lambda: c.metrics(), 600, "round 0", interval=0.5)
        workers = c.worker_pids()
        pids = {"flserverd": server.pid, **{n: d.pid for n, d in daemons.items()}}
        pids.update({f"training child {i + 1}": pid for i, pid in enumerate(sorted(workers))})
        first_round = rounds_done(c)
        print(f"training; sampling {len(pids)} processes for {args.duration:g} s ...", flush=True)
        with UsageSampler(pids, args.interval) as sampler:
            deadline = time.monotonic() + args.duration
            while time.monotonic() < deadline:
                time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))
                dead = [n for n, d in [("flserverd", server), *daemons.items()] if not d.alive()]
                if dead:
                    raise SystemExit(f"crashed during the soak: {', '.join(dead)}")
        rounds = rounds_done(c) - first_round
        state = c.run_state()
        c.ok("abort server")
    warmup = args.warmup if args.warmup is not None else max(60.0, args.duration / 10)
    summary = [
        ["rounds trained in the window", f"{rounds} ({rounds / args.duration:.1f}/s)"],
        ["run at the end", str(state["server_status"])],
        ["slopes fitted after", f"{warmup:g} s of warm-up, samples every {args.interval:g} s"],
    ]
    processes = []
    for name, (rss, fds, threads) in sampler.slopes(warmup).items():
        kept = sampler.after(name, warmup)
        if len(kept) < 2:
            continue
        start, end = kept[0], kept[-1]
        processes.append(
            [
                name,
                f"{start.rss_mb:.0f} -> {end.rss_mb:.0f}",
                f"{rss:+.3f}",
                f"{start.fds} -> {end.fds}",
                f"{fds:+.3f}",
                f"{start.threads} -> {end.threads}",
                f"{threads:+.3f}",
                verdict(kept, (rss, fds, threads)),
            ]
        )
    return summary, processes


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, soak, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=1800, help="seconds (1800)")
    parser.add_argument("--clients", type=int, default=8, help="client daemons (8)")
    parser.add_argument("--interval", type=float, default=5, help="seconds between samples (5)")
    parser.add_argument(
        "--warmup", type=float, help="seconds left out of the fit (a tenth, at least 60)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flbench-soak-") as tmp:
        summary, processes = soak((args.workdir or Path(tmp)) / f"soak-{args.clients}", args)
    print()
    print(table(["measure", "value"], summary))
    print()
    headers = ["process", "RSS MB", "MB/min", "fds", "fds/min", "threads", "threads/min", ""]
    print(table(headers, processes))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
