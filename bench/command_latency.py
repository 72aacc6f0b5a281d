"""Admin command latency: how fast a command reaches clients and comes back.

Starts a server and N real ``flclientd`` processes (default 8) on
127.0.0.1, logs in once with the real admin client (``fladmin.client``)
and times, from the admin's side, ~50 calls each of

* ``check_status server``: the admin round trip alone (no client involved);
* ``check_status client flclient1``: one client's round trip through the
  server (command down its Session stream, result back up);
* ``check_status client``: a fan-out to every client, answered when the
  last one replied.

A fan-out round trip bounds the time for a command to reach every client
(DESIGN.md target: < 200 ms). The server's own measure of each call (the
``Done [<n> usecs]`` of the reply) is shown beside the admin-side time.
With ``--training small|large`` the clients train the round-time benchmark's
app (see round_time.py) while the commands are timed, so the server and the
client daemons are busy moving models.

    .venv/bin/python bench/command_latency.py                 # 8 idle clients, 50 calls
    .venv/bin/python bench/command_latency.py --clients 16 --calls 100
    .venv/bin/python bench/command_latency.py --training large --calls 20
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import median, percentile, table  # noqa: E402
from fladmin import AdminClient, load_kit  # noqa: E402
from fldev.cluster import ADMIN, cluster  # noqa: E402
from fldev.mlpapp import MODELS, start_app_run, write_app  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

TARGET_MS = 200.0


Samples = dict[str, list[tuple[float, float]]]


async def measure(
    startup: Path,
    lines: list[str],
    calls: int,
    *,
    warmup: int = 3,
    timeout: float = 10.0,
    starts: dict[str, list[float]] | None = None,
) -> Samples:
    """(admin-side ms, server-side ms) of each call of each command line, interleaved; with
    ``starts``, the wall-clock time each timed call was sent, per line (for matching a call
    with what other processes saw of it)."""
    client = AdminClient(startup, load_kit(startup), ADMIN)
    client.timeout = timeout
    await client.login()
    samples: Samples = {line: [] for line in lines}
    try:
        for _ in range(warmup):  # warm up connections and code paths
            for line in lines:
                await client.execute(line)
        for _ in range(calls):
            for line in lines:
                if starts is not None:
                    starts.setdefault(line, []).append(time.time())
                started = time.perf_counter()
                outcome = await client.execute(line)
                elapsed = (time.perf_counter() - started) * 1e3
                if not outcome.ok:
                    raise RuntimeError(f"{line!r} failed: {outcome.text}")
                samples[line].append((elapsed, outcome.usecs / 1e3))
    finally:
        await client.close()
    return samples


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, time the commands, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="client daemons (default 8)")
    parser.add_argument("--calls", type=int, default=50, help="calls per command (default 50)")
    parser.add_argument(
        "--training",
        choices=sorted(MODELS),
        help="time the commands while the clients train this model (default: idle clients)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    names = tuple(f"flclient{i}" for i in range(1, args.clients + 1))
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    print(f"starting a server and {args.clients} clients ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="flbench-cmd-") as tmp:
        root = (args.workdir or Path(tmp)) / f"cmd-{args.clients}"
        with cluster(root, clients=names, settings=settings) as c:
            c.server()
            for name in names:
                c.client(name)
            if args.training:
                model = MODELS[args.training]
                write_app(c.root / ADMIN / "transfer", model, clients=len(names), num_rounds=10000)
                start_app_run(c)
                print(f"waiting for round 1 of the {args.training} model ...", flush=True)
                wait_until(lambda: len(c.metrics()) >= 2, 600, "round 1", interval=0.2)
            lines = [
                "check_status server",
                f"check_status client {names[0]}",
                "check_status client",
            ]
            print(f"timing {args.calls} calls of each command ...", flush=True)
            samples = asyncio.run(measure(c.kit(), lines, args.calls))
            if args.training:
                rounds = len(c.metrics())
                print(f"(the run was at round {rounds} when the timing ended)", flush=True)
    rows = []
    for line, values in samples.items():
        admin_ms = [a for a, _ in values]
        server_ms = [s for _, s in values]
        fan_out = line == "check_status client"
        rows.append(
            [
                line + (f"  (all {args.clients})" if fan_out else ""),
                len(values),
                f"{median(admin_ms):.1f}",
                f"{percentile(admin_ms, 90):.1f}",
                f"{max(admin_ms):.1f}",
                f"{median(server_ms):.1f}",
                f"{percentile(server_ms, 90):.1f}",
                (
                    ("meets" if percentile(admin_ms, 90) < TARGET_MS else "MISSES")
                    + f" (< {TARGET_MS:g} ms)"
                )
                if fan_out
                else "",
            ]
        )
    headers = [
        "command",
        "calls",
        "median ms",
        "p90 ms",
        "max ms",
        "server median ms",
        "server p90 ms",
        "target",
    ]
    print()
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
