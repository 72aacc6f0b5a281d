"""A fleet that comes and goes: 1,000 clients, each with its own certificate, joining and
leaving at random for ten minutes while a real run trains.

The project is provisioned as usual with two real client daemons, which
train the digits app for the whole window. Then the script issues
``--clients`` more client certificates from the project's CA (ECDSA P-256,
``provision.pki``, as flprovision would) and runs one simulated client per
certificate in this process, each with its own mutual-TLS channel (one TCP
connection) made by the client daemon's own connection class: it logs in
(resuming its registration with its token when the server still has it),
opens its control stream, sends a heartbeat every second, and after an
online spell (exponential, mean ``--mean-online`` s) leaves the way a
crashed site or a cut cable does: it stops and closes its connection
without logging out. After an offline spell (mean ``--mean-offline`` s) it
comes back.

An admin feed (the console's ``Events`` stream) is followed in a process of
its own (not beside the simulated clients, whose interpreter would delay
it) and gives:

* heartbeat round trip: from the simulated client writing a heartbeat to
  the feed delivering the server's ``Heartbeat`` event for it (through the
  control stream, the server's loop and its event bus), p50 / p99;
* every ``ClientGone`` (timed by the server): a client that left for good
  must be dropped ``no heartbeat``, never sooner than
  ``heart_beat_timeout`` after its last heartbeat (the table counts drops
  more than 3 s later apart: the server sweeps every second, so more means
  its loop was held up), a client that came back in time must be kept, and
  a client that is online must never be dropped. Departures whose offline
  spell ended within 3 s of the timeout either way are not judged.

The server's RSS, file descriptors and threads are sampled every 2 s; the
slopes after the warm-up are printed. At the end every simulated client
leaves, the script waits out the timeout and checks that only the two real
clients are registered, that every process is alive and that the run
trained throughout.

With ``--no-churn`` the fleet holds still instead (the scale check of
issue 12): no run trains, every simulated client joins once and stays;
once all have joined and settled, the script measures over ``--duration``
seconds the server's CPU (target under 0.5 core for 1,000 clients) and
the heartbeat round trip (p99 under 50 ms), then, with every client still
connected, times ``check_status server`` (median under 5 ms) and the
fan-out ``check_status client`` (median under 300 ms) from a separate admin
process (as ``bench/many_clients.py`` does); then every client leaves and
the drops are judged as above.

With ``--fleet-processes N`` the simulated clients are spread over N
processes of their own (:class:`Fleet`), so that a fan-out's commands do not
queue in one interpreter; the fan-out rows show where each command's time
went (to the clients, answering there, back to the admin).

    .venv/bin/python bench/churn.py                              # 1,000 clients, 10 minutes
    .venv/bin/python bench/churn.py --clients 300 --duration 180
    .venv/bin/python bench/churn.py --no-churn --duration 60     # the scale check, 1,000 clients
    .venv/bin/python bench/churn.py --no-churn --fleet-processes 8   # where there are cores for it
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402

from bench.common import UsageSampler, median, percentile, proc_stat, table, usage  # noqa: E402
from bench.many_clients import command_rows, idle_answer, probe  # noqa: E402
from fladmin import AdminClient, AdminError, load_kit  # noqa: E402
from flclientd.connection import Connection, ControlStream  # noqa: E402
from flcore import status as st  # noqa: E402
from flcore.federation import ClientHeartbeat, Command, Hello, MachineInfo  # noqa: E402
from flcore.feed import ClientGone, Heartbeat  # noqa: E402
from flcore.feedwire import events_from_proto  # noqa: E402
from flcore.identity import KIND_CLIENT  # noqa: E402
from flcore.startup import ClientStartup, load_client  # noqa: E402
from flcore.tls import TlsFiles  # noqa: E402
from flcore.version import flstack_version  # noqa: E402
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.poll import wait_until  # noqa: E402
from provision.pki import Subject, cert_pem, issue, key_pem  # noqa: E402
from provision.workspace import Workspace  # noqa: E402

REAL = ("flclient1", "flclient2")
HEARTBEAT_S = 1.0
DROP_SLACK_S = 3.0
"""A drop may come this long after the timeout (the server sweeps every second)."""
JOIN_CONCURRENCY = 50
FLEET_PROCESSES = 1
"""Processes the simulated clients are spread over (``--fleet-processes``; see :class:`Fleet`).

One on the 2-core development VM: there more processes cost more CPU than
the queue they share out (docs/benchmarks.md, "Where a fan-out's time
goes"); on a machine with cores to spare, one per free core."""
SETTLE_S = 5.0
"""--no-churn: seconds between the last join and the measured window."""
TARGET_CORES = 0.5
TARGET_P99_MS = 50.0
COMMAND_TARGETS_MS = {"check_status server": 5.0, "check_status client": 300.0}
"""--no-churn: the issue's targets for the median of each command, with every client connected."""


@dataclass
class Departure:
    """A simulated client that left: when it last sent a heartbeat, and when it came back."""

    name: str
    last_heartbeat: float
    back_at: float | None = None
    dropped_at: float | None = None


@dataclass
class Ledger:
    """What happened, as the simulated clients and the feed saw it (wall-clock times)."""

    online: dict[str, float] = field(default_factory=dict)
    """Clients online now, with the time they logged in."""
    departures: list[Departure] = field(default_factory=list)
    departures_of: dict[str, list[Departure]] = field(default_factory=dict)
    sent: dict[str, collections.deque[float]] = field(default_factory=dict)
    """Heartbeats not yet seen in the feed, per client."""
    last_contact: dict[str, float] = field(default_factory=dict)
    """When each client last said something to the server (login or heartbeat)."""
    to_server: list[float] = field(default_factory=list)
    """Seconds from writing a heartbeat to the server having handled it."""
    round_trips: list[float] = field(default_factory=list)
    """Seconds from writing a heartbeat to its event arriving through the feed."""
    to_feed: list[float] = field(default_factory=list)
    """Seconds from the server handling a heartbeat to its event arriving through the feed."""
    wrongly_dropped: list[tuple[str, str]] = field(default_factory=list)
    unmatched_drops: list[tuple[str, str]] = field(default_factory=list)
    fan_outs: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per command id: when each simulated client received it and when it had written its
    answer (wall clock, as the clients saw it: what the fan-out waited on here)."""
    heartbeats: int = 0
    feed_messages: int = 0
    feed_events: int = 0
    """Messages the feed brought and the events in them (a batch holds many)."""
    joins: int = 0
    resumed: int = 0
    failed_joins: int = 0
    recording: bool = True
    """Whether heartbeat latencies are kept (--no-churn: only those of the measured window)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def heard(self, name: str, server_time: float, received: float) -> None:
        """A Heartbeat event: match it with the heartbeat it answers (FIFO per client)."""
        with self.lock:
            queue = self.sent.get(name)
            matched = None
            while queue and queue[0] <= server_time:
                matched = queue.popleft()
            if matched is not None and self.recording:
                self.to_server.append(server_time - matched)
                self.round_trips.append(received - matched)
                self.to_feed.append(received - server_time)

    def feed_message(self, events: int) -> None:
        """The feed brought one message with this many events."""
        with self.lock:
            if self.recording:
                self.feed_messages += 1
                self.feed_events += events

    def joined(self, name: str, now: float, resumed: bool) -> None:
        """A simulated client logged in and opened its stream at ``now``."""
        with self.lock:
            self.joins += 1
            self.resumed += resumed
            self.online[name] = now
            self.last_contact[name] = now
            self.sent.setdefault(name, collections.deque())
            previous = self.departures_of.get(name)
            if previous:
                previous[-1].back_at = now

    def join_failed(self) -> None:
        """A simulated client's login was refused or failed."""
        with self.lock:
            self.failed_joins += 1

    def sending(self, name: str, sent: float) -> None:
        """A simulated client is about to write a heartbeat stamped ``sent``."""
        with self.lock:
            self.sent[name].append(sent)

    def beat(self, name: str, sent: float) -> None:
        """The heartbeat stamped ``sent`` is written."""
        with self.lock:
            self.last_contact[name] = sent
            self.heartbeats += 1

    def left(self, name: str, now: float) -> None:
        """A simulated client leaves (without logging out) at ``now``."""
        with self.lock:
            last = self.last_contact.get(name, now)
            self.online.pop(name, None)
            self.sent[name] = collections.deque()
            departure = Departure(name, last)
            self.departures.append(departure)
            self.departures_of.setdefault(name, []).append(departure)

    def answered(self, command_id: str, received: float, written: float) -> None:
        """A simulated client received a command at ``received`` and wrote its answer."""
        with self.lock:
            self.fan_outs.setdefault(command_id, []).append((received, written))

    def fan_out_rows(self, calls: list[list[float]]) -> list[list[str]]:
        """Where each timed fan-out's time went (medians over ``calls``: the probe's samples
        of ``check_status client``, admin ms, server's own ms and when each was sent).

        A fan-out is matched with the call during which its first command arrived. The
        server's own time starts when the admin's request is in (a millisecond or so after it
        was sent) and ends when its reply is built: what is after the last answer written is
        the server reading the last answers and building the reply; what the admin's time
        adds is the reply's way back and its decoding in the admin."""
        with self.lock:
            spans = [sorted(times) for times in self.fan_outs.values()]
        parts: dict[str, list[float]] = collections.defaultdict(list)
        for admin_ms, server_ms, sent in calls:
            ended = sent + admin_ms / 1000
            times = next((t for t in spans if sent <= t[0][0] <= ended), None)
            if times is None:
                continue
            first, last = times[0][0], max(r for r, _ in times)
            written = max(w for _, w in times)
            handling = sorted(w - r for r, w in times)
            parts["admin sent -> first command at a simulated client"].append(first - sent)
            parts["first -> last command received by a simulated client"].append(last - first)
            parts["received -> answer written, per client (median)"].append(
                percentile(handling, 50)
            )
            parts["received -> answer written, per client (max)"].append(handling[-1])
            parts["admin sent -> last answer written"].append(written - sent)
            parts["first command received -> last answer written (the span on the wire)"].append(
                written - first
            )
            parts["last answer written -> server's reply built (server's own end)"].append(
                server_ms / 1000 - (written - sent)
            )
            parts["server's reply built -> admin has it decoded"].append(
                (admin_ms - server_ms) / 1000
            )
        matched = len(parts["admin sent -> last answer written"])
        return [
            [f"fan-out, {name} ({matched} calls, median)", f"{1000 * median(values):.1f} ms"]
            for name, values in parts.items()
        ]

    def gone(self, name: str, reason: str, when: float) -> None:
        """A ClientGone event (``when``: the server's time) for the latest departure of that
        client before it; the feed may bring it after the client came back and left again."""
        if name in REAL:
            return
        with self.lock:
            candidates = [
                d
                for d in self.departures_of.get(name, [])
                if d.dropped_at is None and d.last_heartbeat <= when
            ]
            if not candidates:
                target = self.wrongly_dropped if name in self.online else self.unmatched_drops
                target.append((name, reason))
                return
            candidates[-1].dropped_at = when

    def restart_latencies(self) -> None:
        """Forget the heartbeat latencies so far (those of the joins' burst)."""
        with self.lock:
            self.to_server.clear()
            self.round_trips.clear()
            self.to_feed.clear()
            self.feed_messages = self.feed_events = 0
            self.recording = True

    def waiting(self) -> int:
        """Departures for good (not back) that the server has not dropped yet."""
        with self.lock:
            return sum(d.back_at is None and d.dropped_at is None for d in self.departures)


class Feed:
    """Follows the admin feed in a process of its own, reconnecting if it is cut off.

    The feed's reader must not share an interpreter with the 1,000 simulated
    clients: in one process it waits for the GIL they hold, and the round
    trip it measures is then mostly this script's, not the server's. The
    child stamps each event as it arrives and writes one line per
    ``Heartbeat`` and ``ClientGone``, and one per message with the number of
    events in it (the server sends what queued up as one batch), to its
    stdout, which a thread here hands to the ledger (the matching is by the
    server's times, so the hand-over's delay counts for nothing).
    """

    def __init__(self, startup: Path, ledger: Ledger) -> None:
        self.ledger = ledger
        self.reconnects = 0
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--feed", str(startup)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            kind, name, when, extra = line.rstrip("\n").split("\t", 3)
            if kind == "H":
                self.ledger.heard(name, float(when), float(extra))
            elif kind == "G":
                self.ledger.gone(name, extra, float(when))  # when the server dropped it
            elif kind == "M":
                self.ledger.feed_message(int(extra))
            elif kind == "R":
                self.reconnects += 1

    def stop(self) -> None:
        """End the child and take what it wrote before."""
        self.process.terminate()
        self.process.wait(10)
        self.reader.join(10)


async def follow_feed(startup: Path) -> None:
    """The feed child: one tab-separated line per event the ledger needs and per message."""
    out = sys.stdout
    while True:
        client = AdminClient(startup, load_kit(startup), ADMIN)
        try:
            await client.login()
            async for message in client.events():
                events = events_from_proto(message)
                for event in events:
                    body = event.body
                    if isinstance(body, Heartbeat):
                        out.write(f"H\t{body.instance}\t{body.time!r}\t{time.time()!r}\n")
                    elif isinstance(body, ClientGone):
                        out.write(f"G\t{body.instance}\t{event.time!r}\t{body.reason}\n")
                out.write(f"M\t\t\t{len(events)}\n")
                out.flush()
        except AdminError:
            out.write("R\t\t\t\n")
            out.flush()
        finally:
            await client.close()


@dataclass
class SimClient:
    """One simulated site: its certificate, its token, and its connection while online."""

    startup: ClientStartup
    files: TlsFiles
    token: str = ""
    conn: Connection | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def name(self) -> str:
        return self.startup.name

    async def join(self, ledger: Record) -> None:
        """Log in (resuming when the server still has the token), open the stream."""
        conn = Connection(self.startup, self.files)
        info = MachineInfo(
            device="cpu", gpu_count=0, hostname=self.name, version=flstack_version(), pid=0
        )
        try:
            login = await conn.login(self.token, info)
        except grpc.aio.AioRpcError:
            ledger.join_failed()
            await conn.close()
            return
        self.conn, self.token = conn, login.token
        status = st.ClientStatus(status=st.NOT_STARTED, round=-1)
        call = conn.open_control()
        await call.write(Hello(login.token, status))
        ledger.joined(self.name, time.time(), login.resumed)
        self.tasks = [
            asyncio.ensure_future(self._heartbeats(call, ledger)),
            asyncio.ensure_future(self._answer(call, ledger)),
        ]

    async def _heartbeats(self, call: ControlStream, ledger: Record) -> None:
        await asyncio.sleep(random.uniform(0, HEARTBEAT_S))
        status = st.ClientStatus(status=st.NOT_STARTED, round=-1)
        while True:
            sent = time.time()
            ledger.sending(self.name, sent)
            async with self.writing:  # one write at a time on a stream
                await call.write(ClientHeartbeat(status))
            ledger.beat(self.name, sent)  # written: one cut off by leave() never counts
            await asyncio.sleep(HEARTBEAT_S)

    async def _answer(self, call: ControlStream, ledger: Record) -> None:
        """Answer commands as a client daemon that trains no run does (``check_status``)."""
        async for message in call:
            if isinstance(message, Command):
                received = time.time()
                async with self.writing:
                    await call.write(idle_answer(message))
                ledger.answered(message.command_id, received, time.time())

    async def leave(self, ledger: Record) -> None:
        """Stop and close the connection without logging out, as a crashed site would."""
        ledger.left(self.name, time.time())
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            # InvalidStateError: a heartbeat written on a stream the server had already ended
            # (seen at load 30 and more); the departure is recorded all the same.
            with contextlib.suppress(
                asyncio.CancelledError, asyncio.InvalidStateError, grpc.aio.AioRpcError
            ):
                await task
        self.tasks = []
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def live(
        self, ledger: Record, until: float, joins: asyncio.Semaphore, args: argparse.Namespace
    ) -> None:
        """Alternate online and offline spells until ``until`` (monotonic), then leave."""
        await asyncio.sleep(random.uniform(0, args.mean_offline))
        while time.monotonic() < until:
            async with joins:
                await self.join(ledger)
            online = random.expovariate(1 / args.mean_online)
            await asyncio.sleep(max(0.0, min(online, until - time.monotonic())))
            if self.conn is not None:
                await self.leave(ledger)
            offline = random.expovariate(1 / args.mean_offline)
            await asyncio.sleep(max(0.0, min(offline, until - time.monotonic())))


def issue_certificates(c: Cluster, count: int, folder: Path) -> list[str]:
    """One client certificate per simulated site, from the project CA; returns their names."""
    ca = Workspace(c.root / "provision").require_ca()
    now = datetime.now(UTC)
    names = []
    for index in range(count):
        name = f"churn{index:04d}"
        issued = issue(ca, Subject(name, "org-churn", KIND_CLIENT), "ecdsa-p256", 30, now)
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        cert.write_bytes(cert_pem(issued.cert))
        key.write_bytes(key_pem(issued.key))
        key.chmod(0o600)
        names.append(name)
    return names


def sim_clients(root: Path, folder: Path, names: list[str]) -> list[SimClient]:
    """The simulated sites named ``names``, with the certificates in ``folder`` and the
    settings of the project's first real client kit under ``root``."""
    template = load_client(root / REAL[0])
    root_cert = root / REAL[0] / "startup" / template.ssl_root_cert
    return [
        SimClient(
            replace(template, name=name),
            TlsFiles(root_cert, folder / f"{name}.crt", folder / f"{name}.key"),
        )
        for name in names
    ]


class Record(Protocol):
    """What a simulated client tells the ledger: the ledger itself when the fleet lives in
    this process, a line to it on stdout when the fleet is spread over processes."""

    def joined(self, name: str, now: float, resumed: bool) -> None: ...
    def join_failed(self) -> None: ...
    def sending(self, name: str, sent: float) -> None: ...
    def beat(self, name: str, sent: float) -> None: ...
    def answered(self, command_id: str, received: float, written: float) -> None: ...
    def left(self, name: str, now: float) -> None: ...


class LineRecord:
    """A fleet process's :class:`Record`: one JSON line per call on stdout, which the
    parent's :class:`Fleet` replays on its ledger in the order written."""

    def say(self, *call: object) -> None:
        sys.stdout.write(json.dumps(call) + "\n")
        sys.stdout.flush()

    def joined(self, name: str, now: float, resumed: bool) -> None:
        self.say("joined", name, now, resumed)

    def join_failed(self) -> None:
        self.say("join_failed")

    def sending(self, name: str, sent: float) -> None:
        self.say("sending", name, sent)

    def beat(self, name: str, sent: float) -> None:
        self.say("beat", name, sent)

    def answered(self, command_id: str, received: float, written: float) -> None:
        self.say("answered", command_id, received, written)

    def left(self, name: str, now: float) -> None:
        self.say("left", name, now)


LEDGER_CALLS = frozenset({"joined", "join_failed", "sending", "beat", "answered", "left"})
READY, LEAVE, CPU = "ready", "leave", "cpu"
"""--no-churn: a fleet process says READY once its clients joined, and is told LEAVE; every
fleet process says CPU with its CPU seconds as it ends."""


class Fleet:
    """The simulated clients spread over ``--fleet-processes`` processes of their own.

    With all 1,000 in one interpreter, a fan-out's commands queue there: each
    client reads and answers only when the one loop gets to it, behind the
    other clients' answers and their 1,000 heartbeats a second, where 1,000
    sites would each answer at once on their own machine. Several processes
    share that queue out (on this machine's cores, beside the server). Each
    runs :func:`fleet_main` on its share of the names and reports what its
    clients do as :class:`LineRecord` lines, replayed here on the ledger.
    """

    def __init__(
        self, ledger: Ledger, spec: dict[str, Any], names: list[str], processes: int
    ) -> None:
        self.ledger = ledger
        self.ready = threading.Semaphore(0)
        self.children = []
        self.readers = []
        self.final_cpu: dict[int, float] = {}
        for index in range(processes):
            share = {**spec, "names": names[index::processes]}
            child = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--fleet", json.dumps(share)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            reader = threading.Thread(target=self._read, args=(child,), daemon=True)
            reader.start()
            self.children.append(child)
            self.readers.append(reader)

    @property
    def pids(self) -> list[int]:
        return [child.pid for child in self.children]

    def _read(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for line in child.stdout:
            name, *call = json.loads(line)
            if name == READY:
                self.ready.release()
            elif name == CPU:
                self.final_cpu[child.pid] = call[0]
            elif name in LEDGER_CALLS:
                getattr(self.ledger, name)(*call)

    def cpu_s(self) -> float:
        """CPU seconds the fleet processes used so far (an ended one's as it said at its end)."""
        total = 0.0
        for pid in self.pids:
            try:
                total += proc_stat(pid).cpu_s
            except FileNotFoundError:
                total += self.final_cpu.get(pid, 0.0)
        return total

    def joined(self) -> None:
        """Wait until every process's clients joined (--no-churn)."""
        for _ in self.children:
            self.ready.acquire()

    def leave(self) -> None:
        """Tell every process to let its clients leave (--no-churn)."""
        for child in self.children:
            assert child.stdin is not None
            child.stdin.write(LEAVE + "\n")
            child.stdin.flush()

    def wait(self, timeout: float) -> None:
        """Wait for every process to end (its clients left) and its last lines to be read."""
        for child, reader in zip(self.children, self.readers, strict=True):
            if child.wait(timeout) != 0:
                raise RuntimeError(f"fleet process {child.pid} failed ({child.returncode})")
            reader.join(timeout)


async def fleet_main(spec: dict[str, Any]) -> None:
    """A fleet process: its share of the simulated clients, as :func:`churn` or :func:`hold`
    runs them in one process, reporting to the parent through :class:`LineRecord`."""
    sims = sim_clients(Path(spec["root"]), Path(spec["certs"]), spec["names"])
    record = LineRecord()
    joins = asyncio.Semaphore(spec["join_concurrency"])
    args = argparse.Namespace(**spec["args"])
    if spec["churn"]:
        until = time.monotonic() + args.duration
        await asyncio.gather(*(sim.live(record, until, joins, args) for sim in sims))
    else:
        await join_all(sims, record, joins)
        record.say(READY)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(sim.leave(record) for sim in sims if sim.conn is not None))
    record.say(CPU, time.process_time())


async def join_all(sims: list[SimClient], record: Record, joins: asyncio.Semaphore) -> None:
    """Every client joins, at most ``joins`` logging in at once."""

    async def join(sim: SimClient) -> None:
        async with joins:
            await sim.join(record)

    await asyncio.gather(*(join(sim) for sim in sims))


@dataclass
class CpuWindow:
    """CPU of the server and of the simulated fleet (this process and its fleet processes)
    over a stretch of wall time (cores)."""

    server_pid: int
    fleet: Fleet | None = None
    seconds: float = 0.0
    server_cores: float = 0.0
    own_cores: float = 0.0

    def _fleet_cpu(self) -> float:
        return time.process_time() + (self.fleet.cpu_s() if self.fleet is not None else 0.0)

    @contextlib.contextmanager
    def measure(self) -> Iterator[CpuWindow]:
        server, own, started = (
            proc_stat(self.server_pid).cpu_s,
            self._fleet_cpu(),
            time.monotonic(),
        )
        yield self
        self.seconds = time.monotonic() - started
        self.server_cores = (proc_stat(self.server_pid).cpu_s - server) / self.seconds
        self.own_cores = (self._fleet_cpu() - own) / self.seconds


async def churn(
    sims: list[SimClient] | Fleet, ledger: Ledger, args: argparse.Namespace, window: CpuWindow
) -> list[list[str]]:
    """Every simulated client lives for the duration; then all leave."""
    with window.measure():
        if isinstance(sims, Fleet):
            await asyncio.to_thread(sims.wait, args.duration + 120)
        else:
            until = time.monotonic() + args.duration
            joins = asyncio.Semaphore(JOIN_CONCURRENCY)
            await asyncio.gather(*(sim.live(ledger, until, joins, args) for sim in sims))
    return []


async def hold(
    sims: list[SimClient] | Fleet,
    ledger: Ledger,
    args: argparse.Namespace,
    window: CpuWindow,
    admin_startup: Path,
) -> list[list[str]]:
    """--no-churn: every client joins and stays; measure the quiet fleet, time the commands
    with all of them connected, then all leave. Returns the commands' rows."""
    started = time.monotonic()
    if isinstance(sims, Fleet):
        await asyncio.to_thread(sims.joined)
    else:
        await join_all(sims, ledger, asyncio.Semaphore(JOIN_CONCURRENCY))
    print(f"{ledger.joins} joined in {time.monotonic() - started:.0f} s", flush=True)
    await asyncio.sleep(SETTLE_S)
    ledger.restart_latencies()
    print(f"measuring for {args.duration:g} s ...", flush=True)
    with window.measure():
        await asyncio.sleep(args.duration)
    ledger.recording = False
    print("timing admin commands ...", flush=True)
    samples = await probe(admin_startup, {"check_status server": args.calls})
    fanning = CpuWindow(window.server_pid, window.fleet)
    with fanning.measure():
        samples.update(await probe(admin_startup, {"check_status client": args.fanout_calls}))
    online = len(ledger.online)
    if isinstance(sims, Fleet):
        sims.leave()
        await asyncio.to_thread(sims.wait, 120)
    else:
        await asyncio.gather(*(sim.leave(ledger) for sim in sims if sim.conn is not None))
    rows = [["clients online while timing commands", str(online)]]
    fan_outs = int(args.fanout_calls) + 1  # and the probe's warm-up call

    def per_call(cores: float) -> float:
        """CPU milliseconds per fan-out at ``cores``."""
        return 1000 * cores * fanning.seconds / fan_outs

    return [
        *rows,
        *command_rows(samples, COMMAND_TARGETS_MS),
        *ledger.fan_out_rows(samples["check_status client"]),
        [
            "CPU per fan-out, server / simulated clients (at the measured window's rate)",
            f"{per_call(fanning.server_cores):.0f} ({per_call(window.server_cores):.0f}) / "
            f"{per_call(fanning.own_cores):.0f} ({per_call(window.own_cores):.0f}) ms",
        ],
    ]


def judge(ledger: Ledger, timeout: float) -> list[list[str]]:
    """Rows about departures: dropped in time, too early, not at all."""
    early, late, missing, spared, unjudged = 0, 0, 0, 0, 0
    delays = []
    for departure in ledger.departures:
        due = departure.last_heartbeat + timeout
        back = departure.back_at  # None: gone for good at the end
        if back is not None and abs(back - due) <= DROP_SLACK_S:
            unjudged += 1
            continue
        if back is not None and back < due:  # came back in time: must not have been dropped
            if departure.dropped_at is not None:
                early += 1
            else:
                spared += 1
            continue
        if departure.dropped_at is None:
            missing += 1
            continue
        delay = departure.dropped_at - departure.last_heartbeat
        delays.append(delay)
        if delay < timeout - 0.5:
            early += 1
        elif delay > timeout + DROP_SLACK_S:
            late += 1
    spread = (
        f" (after the last heartbeat: median {percentile(delays, 50):.1f} s, "
        f"p99 {percentile(delays, 99):.1f} s, max {max(delays):.1f} s)"
        if delays
        else ""
    )
    return [
        ["departures (no logout)", str(len(ledger.departures))],
        ["gone for good and dropped", f"{len(delays) - early}{spread}"],
        [
            f"dropped before the timeout / over {DROP_SLACK_S:g} s after it / never",
            f"{early} / {late} / {missing}",
        ],
        ["back before their timeout and kept", str(spared)],
        ["not judged (back within 3 s of the timeout)", str(unjudged)],
        ["online clients dropped (must be 0)", str(len(ledger.wrongly_dropped))],
        ["drops of clients not known to have left", str(len(ledger.unmatched_drops))],
    ]


def latency(samples: list[float], churning: bool = True) -> str:
    """p50 and p99 of heartbeat latencies, in milliseconds; without churn, judged against the
    scale check's p99 target."""
    if not samples:
        return "none matched"
    p50, p99 = (1000 * percentile(samples, q) for q in (50, 99))
    shown = f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(samples)} heartbeats)"
    return shown if churning else shown + verdict(p99 < TARGET_P99_MS, TARGET_P99_MS, " ms, p99")


def verdict(met: bool, target: float, unit: str) -> str:
    """``; meets < 0.5`` or ``; MISSES < 50 ms, p99``: a measure against its target."""
    return f"; {'meets' if met else 'MISSES'} < {target:g}{unit}"


def main(argv: list[str] | None = None) -> int:
    """Provision, train, churn, judge, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="simulated clients (1000)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of churn (600)")
    parser.add_argument("--mean-online", type=float, default=60, help="mean online spell (60)")
    parser.add_argument("--mean-offline", type=float, default=20, help="mean offline spell (20)")
    parser.add_argument("--heartbeat-timeout", type=float, default=10, help="seconds (10)")
    parser.add_argument(
        "--warmup", type=float, help="seconds left out of the RSS fit (a fifth, at least 60)"
    )
    parser.add_argument(
        "--no-churn",
        dest="churn",
        action="store_false",
        help="the scale check: no run, every client joins once and stays; times the commands",
    )
    parser.add_argument(
        "--calls", type=int, default=50, help="--no-churn: check_status server (50)"
    )
    parser.add_argument(
        "--fanout-calls", type=int, default=10, help="--no-churn: check_status client calls (10)"
    )
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    parser.add_argument(
        "--fleet-processes",
        type=int,
        default=FLEET_PROCESSES,
        help=f"processes the simulated clients are spread over ({FLEET_PROCESSES}; 1: this one)",
    )
    parser.add_argument("--feed", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fleet", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fleet:
        asyncio.run(fleet_main(json.loads(args.fleet)))
        return 0
    if args.feed:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(follow_feed(args.feed))
        return 0
    timeout = args.heartbeat_timeout
    settings = {"heart_beat_timeout": timeout, "heartbeat_interval": HEARTBEAT_S}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="flbench-churn-") as tmp:
        root = (args.workdir or Path(tmp)) / f"churn-{args.clients}"
        with cluster(root, clients=REAL, settings={**settings, "retry_window": 60}) as c:
            rows = run(c, root, args)
    print()
    print(table(["measure", "value"], rows))
    print(f"\nwall time {time.monotonic() - started:.0f} s")
    return 0


def run(c: Cluster, root: Path, args: argparse.Namespace) -> list[list[str]]:
    """Train with the real clients, churn the simulated ones, and measure."""
    timeout = args.heartbeat_timeout
    server = c.server()
    real = [c.client(name) for name in REAL]
    if args.churn:
        c.configure("config_fed_client.json", local_epochs=1)
        c.prepare_run(1, num_rounds=10**6, min_num_clients=2, wait_after_min_clients=5)
        c.ok("start server")
        c.ok("start client")
        wait_until(lambda: c.metrics(), 300, "round 0", interval=0.5)
    certificates = root / "churn-certs"
    certificates.mkdir()
    print(f"issuing {args.clients} client certificates ...", flush=True)
    names = issue_certificates(c, args.clients, certificates)
    ledger = Ledger()
    feed = Feed(c.kit(), ledger)
    rounds_before = len(c.metrics())
    warmup = args.warmup if args.warmup is not None else max(60.0, args.duration / 5)
    sims: list[SimClient] | Fleet
    if args.fleet_processes > 1:
        processes = min(args.fleet_processes, len(names))
        spec = {
            "root": str(c.root),
            "certs": str(certificates),
            "churn": args.churn,
            "join_concurrency": max(1, JOIN_CONCURRENCY // processes),
            "args": {k: vars(args)[k] for k in ("duration", "mean_online", "mean_offline")},
        }
        sims = Fleet(ledger, spec, names, processes)
        window = CpuWindow(server.pid, sims)
    else:
        sims = sim_clients(c.root, certificates, names)
        window = CpuWindow(server.pid)
    with UsageSampler({"flserverd": server.pid}, 2.0) as sampler:
        if args.churn:
            print(f"churning for {args.duration:g} s ...", flush=True)
            commands = asyncio.run(churn(sims, ledger, args, window))
        else:
            print(f"joining {args.clients} clients ...", flush=True)
            admin = root / ADMIN / "startup"
            commands = asyncio.run(hold(sims, ledger, args, window, admin))
    ended = time.time()
    wait_until(
        lambda: not ledger.waiting() or time.time() > ended + timeout + 2 * DROP_SLACK_S,
        timeout + 4 * DROP_SLACK_S,
        "the last departures to be dropped",
    )
    left = usage(server.pid)
    registered = sorted(client["instance"] for client in c.status()["clients"])
    alive = server.alive() and all(d.alive() for d in real)
    state = c.run_state()
    rounds = len(c.metrics()) - rounds_before
    if args.churn:
        c.ok("abort server")
    feed.stop()
    trips, one_way = ledger.round_trips, ledger.to_server
    rss, fds, threads = sampler.slopes(warmup)["flserverd"]
    kept = sampler.after("flserverd", warmup)
    rows = [
        [
            "simulated clients (own certificates), fleet processes",
            f"{len(names)}, {max(1, min(args.fleet_processes, len(names)))}",
        ],
        [
            "joins (resumed a registration) / failed",
            f"{ledger.joins} ({ledger.resumed}) / {ledger.failed_joins}",
        ],
        ["heartbeats sent", f"{ledger.heartbeats}"],
        ["heartbeat, client -> handled by the server", latency(one_way)],
        ["heartbeat, handled by the server -> feed", latency(ledger.to_feed)],
        [
            "feed messages in the window (events per message)",
            f"{ledger.feed_messages} ({ledger.feed_events / max(ledger.feed_messages, 1):.1f})",
        ],
        ["heartbeat round trip, client -> server -> feed", latency(trips, args.churn)],
        *commands,
        *judge(ledger, timeout),
        ["registered at the end (must be the 2 real clients)", ", ".join(registered)],
        [
            "all daemons alive, run trained throughout" if args.churn else "all daemons alive",
            f"{alive}, {state['server_status']}, {rounds} rounds in the window"
            if args.churn
            else str(alive),
        ],
        [
            f"server CPU / the simulated fleet's CPU over {window.seconds:.0f} s",
            f"{window.server_cores:.3f} / {window.own_cores:.2f} cores"
            + ("" if args.churn else verdict(window.server_cores < TARGET_CORES, TARGET_CORES, "")),
        ],
        ["feed reconnects (cut off as too slow)", str(feed.reconnects)],
    ]
    if len(kept) >= 2:
        start, end = kept[0], kept[-1]
        rows.append(
            [
                f"server during the churn, after {warmup:g} s warm-up",
                f"RSS {start.rss_mb:.0f} -> {end.rss_mb:.0f} MB ({rss:+.2f} MB/min), "
                f"fds {start.fds} -> {end.fds} ({fds:+.2f}/min), "
                f"threads {start.threads} -> {end.threads} ({threads:+.2f}/min)",
            ]
        )
    rows.append(
        [
            "server once every simulated client left",
            f"RSS {left.rss_mb:.0f} MB, fds {left.fds}, threads {left.threads}",
        ]
    )
    return rows


if __name__ == "__main__":
    sys.exit(main())
