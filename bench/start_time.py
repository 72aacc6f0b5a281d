"""From launching the daemons to a finished run: where a short run's seconds go.

The peers' benchmark (``../shared/bench``) times a whole 5-round job of the
small model with 2 clients from launching the daemons; a round costs
~0.1 s, so most of that time is starting: each site finds out its device,
the server builds the initial model in a child process, each site starts
its training child, and the run ends with every site validating the final
model. This script measures those steps with real daemons on 127.0.0.1
(the cluster harness, :mod:`fldev.cluster`): per repeat a fresh project,
the server and the clients launched at once (as the peers' harness does),
an admin who logs in as soon as the server answers and runs set_run_number,
upload_folder, deploy server and client, ``start server`` and ``start
client`` once every client is registered. Reported per step, median, min
and max over ``--repeats``:

* launched -> registered: until every client is registered;
* ``start server`` and ``start client``: until each command's reply;
* start server -> round 0 offered: until every site has been offered
  round 0 (its status row in the console's feed shows the round);
* the rounds: from the first offer until the last round is aggregated
  (the run's phase becomes final validation);
* last round -> finished;
* start server -> finished, and launched -> finished (what the peers'
  harness reports as start->done).

Times are taken where an admin sees them: the replies and the live feed
(the admin ``Events`` stream) of one logged-in admin session; nothing is
polled but the admin's first login while the server is starting.

    .venv/bin/python bench/start_time.py       # small model, 2 clients, 5 rounds, 5 repeats
    .venv/bin/python bench/start_time.py --repeats 9 --clients 2 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import median, table  # noqa: E402
from fladmin import AdminClient, AdminError, load_kit  # noqa: E402
from flcore import status as st  # noqa: E402
from flcore.feed import ClientRow, RunInfo, Snapshot  # noqa: E402
from flcore.feedwire import events_from_proto  # noqa: E402
from fldev.cluster import ADMIN, Cluster, Daemon, cluster  # noqa: E402
from fldev.mlpapp import APP_NAME, MODELS, write_app  # noqa: E402

TARGET_S = 4.0
"""Issue 12: from start to a finished S/2 run of 5 rounds."""


@dataclass
class Timeline:
    """When each step of one run was seen, in ``time.monotonic()`` seconds."""

    run: int
    clients: int
    launched: float = 0.0
    registered: float = 0.0
    start: float = 0.0
    server_reply: float = 0.0
    client_reply: float = 0.0
    offered: dict[str, float] = field(default_factory=dict)
    last_round: float = 0.0
    done: float = 0.0
    reason: str = ""

    def see(self, event: object, now: float) -> None:
        """Note what a feed event says about the run."""
        if isinstance(event, Snapshot):
            for row in event.clients:
                self.see(row, now)
            self.see(event.run, now)
        elif isinstance(event, ClientRow):
            if event.run_number == self.run and event.round >= 0:
                self.offered.setdefault(event.instance, now)
        elif isinstance(event, RunInfo) and event.run_number == self.run:
            if event.phase == "final validation" and not self.last_round:
                self.last_round = now
            if event.server_status == st.STOPPED and self.start and not self.done:
                self.done = now
                self.reason = event.reason

    @property
    def first_offer(self) -> float:
        """When the last site was offered round 0."""
        return max(self.offered.values()) if len(self.offered) >= self.clients else 0.0


async def one_run(c: Cluster, clients: int, launched: float) -> Timeline:
    """Log in once the server answers, wait for every client, start run 1, follow it."""
    startup = c.kit(ADMIN)
    admin = AdminClient(startup, load_kit(startup), ADMIN)
    admin.timeout = 120
    timeline = Timeline(1, clients, launched=launched)
    while True:
        try:
            await admin.login()
            break
        except AdminError:
            await asyncio.sleep(0.02)  # the server is still starting
    registered = asyncio.Event()
    finished = asyncio.Event()
    names: set[str] = set()

    async def follow() -> None:
        async for message in admin.events():
            now = time.monotonic()
            for event in events_from_proto(message):
                timeline.see(event.body, now)
                rows = event.body.clients if isinstance(event.body, Snapshot) else (event.body,)
                names.update(r.instance for r in rows if isinstance(r, ClientRow))
            if len(names) >= clients and not registered.is_set():
                timeline.registered = now
                registered.set()
            if timeline.done:
                finished.set()
                return

    feed: asyncio.Future[object] = asyncio.ensure_future(follow())
    try:
        await until(registered, feed)
        for line in (
            "set_run_number 1",
            f"upload_folder {APP_NAME}",
            f"deploy {APP_NAME} server",
            f"deploy {APP_NAME} client",
        ):
            await execute(admin, line)
        timeline.start = time.monotonic()
        await execute(admin, "start server")
        timeline.server_reply = time.monotonic()
        await execute(admin, "start client")
        timeline.client_reply = time.monotonic()
        await until(finished, feed)
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError, AdminError):
            await feed
        await admin.close()
    if timeline.reason != st.FINISHED:
        raise RuntimeError(f"the run stopped: {timeline.reason}")
    return timeline


async def execute(admin: AdminClient, line: str) -> None:
    """Run one command; a failure ends the measurement."""
    reply = await admin.execute(line)
    if not reply.ok:
        raise RuntimeError(f"{line}: {reply.text}")


async def until(event: asyncio.Event, feed: asyncio.Future[object]) -> None:
    """Wait for ``event``; the feed ending first (the server went away) is an error."""
    waiting: asyncio.Future[object] = asyncio.ensure_future(event.wait())
    await asyncio.wait({waiting, feed}, timeout=600, return_when=asyncio.FIRST_COMPLETED)
    if not event.is_set():
        waiting.cancel()
        raise RuntimeError(f"the live feed ended: {feed.exception() if feed.done() else 'timeout'}")


def measure(root: Path, clients: int, rounds: int, repeats: int) -> list[Timeline]:
    """Per repeat: a fresh project, its daemons launched at once, one run to its end."""
    names = tuple(f"flclient{i}" for i in range(1, clients + 1))
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    timelines = []
    for repeat in range(1, repeats + 1):
        with cluster(root / f"repeat-{repeat}", clients=names, settings=settings) as c:
            write_app(
                c.root / ADMIN / "transfer", MODELS["small"], clients=clients, num_rounds=rounds
            )
            launched = time.monotonic()
            c.daemons.append(
                Daemon(
                    "server",
                    [sys.executable, "-m", "flserverd", "--workspace", str(c.root / "server")],
                    c.root / "server.log",
                    c.env(),
                ).start()
            )
            for name in names:
                c.client(name, wait=False)
            timeline = asyncio.run(one_run(c, clients, launched))
        timelines.append(timeline)
        print(
            f"repeat {repeat}: launched->finished {timeline.done - timeline.launched:.2f} s, "
            f"start server->finished {timeline.done - timeline.start:.2f} s",
            flush=True,
        )
    return timelines


def main(argv: list[str] | None = None) -> int:
    """Measure and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="runs to time (default 5)")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(prefix="flbench-start-") as tmp:
        root = (args.workdir or Path(tmp)) / f"start-{args.clients}"
        timelines = measure(root, args.clients, args.rounds, args.repeats)
    steps: list[tuple[str, Callable[[Timeline], float]]] = [
        ("daemons launched -> all clients registered", lambda t: t.registered - t.launched),
        ("start server (reply)", lambda t: t.server_reply - t.start),
        ("start client (reply)", lambda t: t.client_reply - t.server_reply),
        ("start server -> round 0 offered to all", lambda t: t.first_offer - t.start),
        (
            f"{args.rounds} rounds (first offer -> last aggregated)",
            lambda t: t.last_round - t.first_offer,
        ),
        ("last round -> finished", lambda t: t.done - t.last_round),
        ("start server -> finished", lambda t: t.done - t.start),
        ("submitted (start client reply) -> finished", lambda t: t.done - t.client_reply),
        ("daemons launched -> finished", lambda t: t.done - t.launched),
    ]
    rows = []
    for label, step in steps:
        values = [step(t) for t in timelines]
        rows.append([label, f"{median(values):.2f}", f"{min(values):.2f}", f"{max(values):.2f}"])
    print()
    print(
        f"small model ({MODELS['small'].megabytes:.0f} MB), {args.clients} clients, "
        f"{args.rounds} rounds, {len(timelines)} repeats; load average before: {load_before}"
    )
    print(table(["step", "median s", "min s", "max s"], rows))
    for what, total in (
        ("start server -> finished", median([t.done - t.start for t in timelines])),
        ("launched -> finished", median([t.done - t.launched for t in timelines])),
    ):
        verdict = "meets" if total <= TARGET_S else "MISSES"
        print(f"{what}: median {total:.2f} s, {verdict} the target (<= {TARGET_S:g} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
