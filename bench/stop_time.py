"""How long the server takes from SIGTERM to its exit with clients connected: the downtime
of every restart, upgrade and backup (docs/operations.md).

Starts a server and ``--clients`` clients, then ``--repeats`` times sends the server
SIGTERM, times its exit, starts it again and waits until every client is back on its
control stream. Prints each time and the median.

    .venv/bin/python bench/stop_time.py
    .venv/bin/python bench/stop_time.py --clients 8 --repeats 5
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fldev.cluster import SERVER_READY, Cluster  # noqa: E402
from fldev.poll import wait_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2, help="(2)")
    parser.add_argument("--repeats", type=int, default=3, help="(3)")
    args = parser.parse_args()
    names = tuple(f"flclient{i + 1}" for i in range(args.clients))
    with tempfile.TemporaryDirectory() as folder:
        cluster = Cluster(Path(folder), clients=names)
        try:
            server = cluster.server()
            for name in names:
                cluster.client(name)
            times = []
            for _ in range(args.repeats):
                started = time.monotonic()
                server.signal(signal.SIGTERM)
                code = server.wait(60)
                times.append(time.monotonic() - started)
                if code != 0:
                    raise SystemExit(f"the server exited {code}")
                server.restart(SERVER_READY)
                wait_until(
                    lambda: sum(c["connected"] for c in cluster.status()["clients"]) == len(names),
                    120,
                    "every client back",
                )
        finally:
            cluster.stop()
    shown = ", ".join(f"{t:.2f}" for t in times)
    print(f"SIGTERM to exit, {args.clients} clients connected: {shown} s")
    print(f"median {statistics.median(times):.2f} s over {args.repeats}")


if __name__ == "__main__":
    main()
