"""What 1,000 connected clients cost the server: CPU, memory, and admin command time.

Starting 1,000 ``flclientd`` processes is not possible on a 2-core
machine, so this script opens 1,000 real client sessions from one process
with the client daemon's own connection class
(``flclientd.connection.Connection``: one mutual-TLS channel, hence one TCP
connection, per session, as 1,000 daemons would have). Every session
logs in with the same client kit (the server names the instances
``flclient1``, ``flclient1_1``, ...; the server's local config lets one kit
run that many instances), opens its control stream with a
``Hello``, sends a heartbeat every ``heartbeat_interval`` (5 s here;
the kit is provisioned with ``heartbeat_interval: 5, heart_beat_timeout:
60``) and answers commands as a client daemon would.

Measured on the ``flserverd`` process (from /proc/<pid>/stat and status):

* its CPU (utime + stime) while idle with no client, then over a window
  (default 60 s) with every session connected: cores = CPU seconds / wall
  seconds (DESIGN.md target for 1,000 clients: under 0.5);
* its RSS and peak RSS (VmHWM) with every session connected;
* ``check_status server`` and ``check_status client`` (a fan-out to every
  session) timed by a separate admin process, with 1,000 clients registered.

    .venv/bin/python bench/many_clients.py                    # 1,000 sessions, 60 s
    .venv/bin/python bench/many_clients.py --sessions 200 --window 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.common import median, percentile, proc_stat, table  # noqa: E402
from flclientd.connection import Connection, ControlStream  # noqa: E402
from flcore import status as st  # noqa: E402
from flcore.federation import (  # noqa: E402
    ClientHeartbeat,
    Command,
    CommandResult,
    Hello,
    MachineInfo,
    Upward,
)
from flcore.startup import ClientStartup, load_client  # noqa: E402
from flcore.tls import TlsFiles  # noqa: E402
from flcore.version import flstack_version  # noqa: E402
from fldev.cluster import cluster  # noqa: E402

TARGET_CORES = 0.5
KIT = "flclient1"
CONNECT_CONCURRENCY = 50


@dataclass
class Counters:
    """What all sessions did, for checking that the load was what we claim."""

    heartbeats: int = 0
    commands: int = 0
    broken: int = 0


@dataclass
class Site:
    """One client session held by this process."""

    conn: Connection
    instance: str
    token: str
    call: ControlStream
    outbox: asyncio.Queue[Upward] = field(default_factory=asyncio.Queue)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def status(self) -> st.ClientStatus:
        """The status a fresh client daemon reports."""
        return st.ClientStatus(status=st.NOT_STARTED, round=-1)

    async def write_loop(self, counters: Counters) -> None:
        """The only writer of the stream, as in the agent."""
        try:
            while True:
                await self.call.write(await self.outbox.get())
        except grpc.aio.AioRpcError:
            counters.broken += 1

    async def heartbeat_loop(self, interval: float, counters: Counters) -> None:
        """A heartbeat every ``interval`` seconds, phases spread at random."""
        await asyncio.sleep(random.uniform(0, interval))
        while True:
            self.outbox.put_nowait(ClientHeartbeat(self.status()))
            counters.heartbeats += 1
            await asyncio.sleep(interval)

    async def read_loop(self, counters: Counters) -> None:
        """Answer commands like a client daemon that is not training."""
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for command in self.call:
                if not isinstance(command, Command):
                    continue
                counters.commands += 1
                self.outbox.put_nowait(idle_answer(command))

    async def close(self) -> None:
        """Stop the tasks and close the channel."""
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await task
        self.call.cancel()
        await self.conn.close()


def idle_answer(command: Command) -> CommandResult:
    """What a client daemon that is not training answers: its status to ``check_status``,
    ``not supported`` to anything else."""
    data = {"status": st.NOT_STARTED, "run_number": 0, "round": -1, "device": "cpu"}
    checked = command.name == "check_status"
    return CommandResult(
        command.command_id, checked, st.NOT_STARTED if checked else "not supported", data
    )


async def open_site(
    startup: ClientStartup, files: TlsFiles, index: int, counters: Counters
) -> Site:
    """Log in and open a control stream, as ``flclientd`` does."""
    conn = Connection(startup, files)
    info = MachineInfo(
        device="cpu", gpu_count=0, hostname=f"bench-{index}", version=flstack_version(), pid=0
    )
    login = await conn.login("", info)
    call = conn.open_control()
    await call.write(Hello(login.token, st.ClientStatus(status=st.NOT_STARTED, round=-1)))
    site = Site(conn, login.instance, login.token, call)
    loop = asyncio.get_running_loop()
    site.tasks = [
        loop.create_task(site.write_loop(counters)),
        loop.create_task(site.read_loop(counters)),
        loop.create_task(site.heartbeat_loop(startup.heartbeat_interval, counters)),
    ]
    return site


def established_connections(port: int) -> int:
    """ESTABLISHED TCP connections (IPv4 and IPv6) whose remote end is ``port``."""
    count = 0
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table_path).read_text().splitlines()[1:]:
                fields = line.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[3] == "01":
                    count += 1
    return count


def cpu_over(pid: int, seconds: float) -> tuple[float, float]:
    """(cores used by ``pid``, cores used by this process) over ``seconds`` of wall time."""
    before, own_before, started = proc_stat(pid).cpu_s, time.process_time(), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - started
    return (proc_stat(pid).cpu_s - before) / wall, (time.process_time() - own_before) / wall


async def probe(startup_dir: Path, calls: dict[str, int]) -> dict[str, list[list[float]]]:
    """Time admin commands from a separate process (this one is busy with the sessions):
    per command line, each call's admin-side ms, the server's own ms and when it was sent
    (wall clock)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        str(startup_dir),
        json.dumps(calls),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"admin probe failed with exit code {process.returncode}")
    return json.loads(out)  # type: ignore[no-any-return]


def command_rows(
    samples: dict[str, list[list[float]]], targets: dict[str, float] | None = None
) -> list[list[str]]:
    """Table rows for the probe's samples: the admin's round trip (median, p90, max) and the
    server's own time; with a target in ms for a command line, whether its median meets it."""
    rows = []
    for line, values in samples.items():
        admin_ms = [sample[0] for sample in values]
        server_ms = [sample[1] for sample in values]
        target = (targets or {}).get(line)
        verdict = ""
        if target is not None:
            met = "meets" if median(admin_ms) < target else "MISSES"
            verdict = f"; median {met} < {target:g} ms"
        rows.append(
            [
                f"{line} ({len(values)} calls)",
                f"median {median(admin_ms):.1f} ms, p90 {percentile(admin_ms, 90):.1f} ms, "
                f"max {max(admin_ms):.1f} ms (server's own: median {median(server_ms):.1f} ms)"
                f"{verdict}",
            ]
        )
    return rows


def run_probe(startup_dir: Path, calls: dict[str, int]) -> int:
    """The admin process: time each command line, print JSON samples."""
    from bench.command_latency import measure

    results: dict[str, list[tuple[float, float, float]]] = {}
    for line, count in calls.items():
        starts: dict[str, list[float]] = {}
        samples = asyncio.run(
            measure(startup_dir, [line], count, warmup=1, timeout=60, starts=starts)
        )
        timed = zip(samples[line], starts[line], strict=True)
        results[line] = [(admin, server, sent) for (admin, server), sent in timed]
    print(json.dumps(results))
    return 0


async def hold_sessions(
    root: Path, server_pid: int, fed_port: int, args: argparse.Namespace
) -> list[list[str]]:
    """Connect the sessions, measure, disconnect; returns table rows."""
    workspace = root / KIT
    startup = load_client(workspace)
    files = TlsFiles.named_by(startup, workspace / "startup")
    counters = Counters()
    rows: list[list[str]] = []
    idle_cores, _ = await asyncio.to_thread(cpu_over, server_pid, args.idle_window)
    rows.append(["server CPU, no client", f"{idle_cores:.3f} cores over {args.idle_window:g} s"])

    print(f"connecting {args.sessions} sessions ...", flush=True)
    sites: list[Site] = []
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)
    server_cpu_before = proc_stat(server_pid).cpu_s
    started = time.monotonic()

    async def one(index: int) -> None:
        async with limit:
            sites.append(await open_site(startup, files, index, counters))

    try:
        await asyncio.gather(*(one(i) for i in range(args.sessions)))
        connect_s = time.monotonic() - started
        connect_cpu = proc_stat(server_pid).cpu_s - server_cpu_before
        instances = {s.instance for s in sites}
        connections = established_connections(fed_port)
        rows.append(
            [
                "sessions connected",
                f"{len(sites)} ({len(instances)} instance names, {connections} TCP connections)",
            ]
        )
        rows.append(
            [
                "time to connect all",
                f"{connect_s:.1f} s ({args.sessions / connect_s:.0f} logins/s, "
                f"server CPU {connect_cpu:.1f} s)",
            ]
        )
        await asyncio.sleep(args.settle)
        print(f"measuring the server's CPU over {args.window:g} s ...", flush=True)
        beats_before = counters.heartbeats
        cores, own = await asyncio.to_thread(cpu_over, server_pid, args.window)
        beats = counters.heartbeats - beats_before
        memory = proc_stat(server_pid)
        verdict = "meets" if cores < TARGET_CORES else "MISSES"
        rows.append(
            [
                f"server CPU, {len(sites)} clients",
                f"{cores:.3f} cores over {args.window:g} s ({verdict} < {TARGET_CORES:g})",
            ]
        )
        rows.append(
            [
                "heartbeats sent in the window",
                f"{beats} ({beats / args.window:.0f}/s; this process used {own:.2f} cores)",
            ]
        )
        rows.append(
            [
                "server memory",
                f"RSS {memory.rss_mb:.0f} MB, peak (VmHWM) {memory.peak_rss_mb:.0f} MB",
            ]
        )
        print("timing admin commands ...", flush=True)
        lines = {"check_status server": args.calls, "check_status client": args.fanout_calls}
        samples = await probe(root / "admin@lead.org" / "startup", lines)
        rows.extend(command_rows(samples))
        rows.append(["sessions broken during the test", str(counters.broken)])
    finally:
        await asyncio.gather(*(site.close() for site in sites), return_exceptions=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Provision, start the server, hold the sessions, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000, help="client sessions (1000)")
    parser.add_argument("--window", type=float, default=60, help="CPU window in seconds (60)")
    parser.add_argument("--idle-window", type=float, default=10, help="idle CPU window (10)")
    parser.add_argument("--settle", type=float, default=10, help="wait after connecting (10)")
    parser.add_argument("--calls", type=int, default=20, help="check_status server calls (20)")
    parser.add_argument("--fanout-calls", type=int, default=5, help="check_status client calls (5)")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return run_probe(Path(args.probe[0]), json.loads(args.probe[1]))
    settings = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 60}
    with tempfile.TemporaryDirectory(prefix="flbench-many-") as tmp:
        root = (args.workdir or Path(tmp)) / f"many-{args.sessions}"
        # One kit plays every site here: let it run that many instances (and log them in).
        local = {"max_instances_per_kit": args.sessions}
        with cluster(root, clients=(KIT,), settings=settings, server_local=local) as c:
            server = c.server()
            print(f"server started (pid {server.pid})", flush=True)
            rows = asyncio.run(hold_sessions(root, server.pid, c.fed_port, args))
    print()
    print(table(["measure", "value"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
