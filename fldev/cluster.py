"""A real flstack deployment on 127.0.0.1, for integration tests and benchmarks.

Provisions a project with free ports, extracts the kits, prepares the digits
data per site, starts flserverd and flclientd as real processes (each in
its own process group, logs in files) and talks to the server through the
real admin client over mutual TLS. Teardown kills every process group, so a
hung daemon cannot hang the test run.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fladmin import AdminClient, CommandReply, load_kit
from flcore.appreview import review_app
from flcore.faultpoints import FAULT_ENV
from flcore.proctable import command_line, process_table
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from fldev.faultswitch import FAULT_DIR_ENV, hold_path, release
from fldev.poll import wait_until
from provision import Project, extract_kit, parse_project, provision_workspace

REPO = Path(__file__).resolve().parents[1]
APPS = REPO / "examples" / "apps"
DIGITS_APP = APPS / "digits_fedavg"
ADMIN = "admin@lead.org"
MEMBER = "viewer@lead.org"
DEPUTY = "deputy@lead.org"
"""A second super admin, for two admins at once."""
SERVER_READY = "flserverd .* ready"
PROXY_VARIABLES = ("grpc_proxy", "https_proxy", "http_proxy", "no_proxy", "no_grpc_proxy")
_PREPARED: dict[tuple[str, ...], Path] = {}


def prepared_data(data_kind: tuple[str, ...], sites: tuple[str, ...]) -> Path:
    """The sites' data as the example's prepare_data.py writes it, made once per process.

    The script is deterministic (seeded per site), and starting it costs about two
    seconds of CPU, which every cluster of a test session would pay again; each cluster
    copies the folder, so what one test does to its data stays its own.
    """
    key = (*data_kind, "--sites", ",".join(sites))
    if key not in _PREPARED:
        if not _PREPARED:
            atexit.register(_remove_prepared_data)
        kind, *data_args = data_kind
        out = Path(tempfile.mkdtemp(prefix="fldev-data-")) / "data"
        subprocess.run(
            [
                sys.executable,
                str(REPO / "examples" / kind / "prepare_data.py"),
                "--sites",
                ",".join(sites),
                "--out",
                str(out),
                *data_args,
            ],
            check=True,
            capture_output=True,
        )
        _PREPARED[key] = out
    return _PREPARED[key]


def _remove_prepared_data() -> None:
    for folder in _PREPARED.values():
        shutil.rmtree(folder.parent, ignore_errors=True)


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (held open together so they differ)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sockets.append(sock)
    ports = [s.getsockname()[1] for s in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Daemon:
    """A daemon process started by the harness."""

    name: str
    args: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        """Start (or restart) the process, appending to its log."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        """Process id of the daemon."""
        assert self.process is not None
        return self.process.pid

    def arm(self, fault: str) -> Daemon:
        """Start with this ``FLSTACK_FAULT`` from now on ('' for none; fldev.faultswitch)."""
        if fault:
            self.env[FAULT_ENV] = fault
        else:
            self.env.pop(FAULT_ENV, None)
        return self

    def restart(self, ready: str) -> int:
        """Start again and wait for ``ready`` in the new output; returns the log offset."""
        offset = len(self.log())
        self.start()
        self.wait_log(ready, after=offset)
        return offset

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything the daemon logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 30.0, after: int = 0) -> re.Match[str]:
        """Wait for a log line matching ``pattern`` (searched from offset ``after``)."""

        def found() -> re.Match[str] | None:
            if not self.alive() and not re.search(pattern, self.log()[after:]):
                raise AssertionError(
                    f"{self.name} exited before logging {pattern!r}:\n{self.log()[-3000:]}"
                )
            return re.search(pattern, self.log()[after:])

        return wait_until(found, timeout, f"{self.name} to log {pattern!r}")

    def signal(self, signum: int) -> None:
        """Send a signal to the daemon's whole process group."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and return its exit code."""
        assert self.process is not None
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon's process group and reap it."""
        if self.process is not None:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)


@dataclass
class Cluster:
    """A provisioned project and its running daemons."""

    root: Path
    clients: tuple[str, ...] = ("flclient1", "flclient2")
    settings: dict[str, Any] = field(
        default_factory=lambda: {
            "heart_beat_timeout": 30,
            "heartbeat_interval": 1,
            "retry_window": 30,
        }
    )
    fed_port: int = 0
    admin_port: int = 0
    server_local: dict[str, Any] = field(default_factory=dict)
    """Settings for the server's local/fed_server.json (e.g. max_instances_per_kit)."""
    data_kind: tuple[str, ...] = ("digits",)
    """The sites' data: the folder of examples/ whose prepare_data.py writes it, and its
    extra arguments (e.g. ``("seg3d", "--size", "24")``)."""
    client_local: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Settings for each named client's local/fed_client.json (e.g. metrics_port)."""
    daemons: list[Daemon] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)
    project: Project = field(init=False)
    """The project as lead IT wrote it (a test re-issues kits from it)."""

    def __post_init__(self) -> None:
        if not self.fed_port:
            self.fed_port, self.admin_port = free_ports(2)
        mapping = {
            "api_version": 1,
            "name": "itest",
            "server": {
                "name": "server",
                "host": "localhost",
                "fed_port": self.fed_port,
                "admin_port": self.admin_port,
                "org": "lead",
            },
            "clients": [{"name": c, "org": f"org-{c}"} for c in self.clients],
            "admins": [
                {"email": ADMIN, "org": "lead", "role": "super"},
                {"email": MEMBER, "org": "lead", "role": "member"},
                {"email": DEPUTY, "org": "lead", "role": "super"},
            ],
            "settings": self.settings,
        }
        self.project = parse_project(mapping)
        result = provision_workspace(self.project, self.root / "provision")
        for kit in result.written:
            assert kit.password is not None  # no participant here makes its own key
            self.passwords[kit.name] = kit.password
            extract_kit(kit.zip_path, kit.password, self.root / kit.name)
        for kit_name, settings, file_name in (
            ("server", self.server_local, "fed_server.json"),
            *((name, values, "fed_client.json") for name, values in self.client_local.items()),
        ):
            if settings:
                local = self.root / kit_name / "local"
                local.mkdir(exist_ok=True)
                (local / file_name).write_text(json.dumps(settings))
        self.data = self.root / "data"
        shutil.copytree(prepared_data(self.data_kind, self.clients), self.data)
        admin_transfer = self.root / ADMIN / "transfer"
        shutil.copytree(DIGITS_APP, admin_transfer / "digits_fedavg")
        self.faults.mkdir()

    def env(self) -> dict[str, str]:
        """Environment for daemons: unbuffered, no inherited DATA_ROOT, systemd sockets or
        fault points, nor proxies (gRPC would route 127.0.0.1 through a proxy the machine
        names); this checkout first on the path, so that fault points can be armed
        (:mod:`flcore.faultpoints`) whatever the working folder."""
        dropped = ("DATA_ROOT", "NOTIFY_SOCKET", FAULT_ENV)
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in dropped and k.lower() not in PROXY_VARIABLES
        }
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env[FAULT_DIR_ENV] = str(self.faults)
        env["PYTHONUNBUFFERED"] = "1"
        # Several sites share the test machine: one math thread each avoids oversubscription.
        env["OMP_NUM_THREADS"] = "1"
        return env

    @property
    def faults(self) -> Path:
        """Where daemons holding at a fault point put their FIFO."""
        return self.root / "faults"

    def held(self, point: str, timeout: float = 120.0) -> None:
        """Wait until a daemon holds at ``point`` (armed with ``hold:<point>``)."""
        wait_until(hold_path(self.faults, point).exists, timeout, f"a daemon to hold at {point}")

    def release(self, point: str) -> None:
        """Let the daemon holding at ``point`` go on."""
        release(self.faults, point)

    def server(self, fault: str = "") -> Daemon:
        """Start the server (with a fault point armed) and wait until it is ready."""
        daemon = Daemon(
            "server",
            [sys.executable, "-m", "flserverd", "--workspace", str(self.root / "server")],
            self.root / "server.log",
            self.env(),
        )
        self.daemons.append(daemon.arm(fault).start())
        daemon.wait_log(SERVER_READY)
        return daemon

    def client(
        self,
        name: str,
        *,
        wait: bool = True,
        extra: list[str] | None = None,
        data: bool = True,
        fault: str = "",
        proxy: str = "",
    ) -> Daemon:
        """Start a client of kit ``name`` with its site's data (none when ``data`` is False)
        and a fault point armed; with ``proxy`` (an HTTP CONNECT proxy's URL, e.g. a
        :class:`fldev.netproxy.FaultyLink`) it reaches the server through it."""
        data_root = ["--data-root", str(self.data / name)] if data else []
        env = self.env()
        if proxy:
            env["grpc_proxy"] = proxy
        daemon = Daemon(
            name,
            [
                sys.executable,
                "-m",
                "flclientd",
                "--workspace",
                str(self.root / name),
                *data_root,
                *(extra or []),
            ],
            self.root / f"{name}.log",
            env,
        )
        self.daemons.append(daemon.arm(fault).start())
        if wait:
            daemon.wait_log("Successfully registered client|Resumed registration")
        return daemon

    def kit(self, email: str = ADMIN) -> Path:
        """The startup folder of an admin kit."""
        return self.root / email / "startup"

    def admin(
        self, *lines: str, user: str = ADMIN, confirmed: bool = False, timeout: float = 10.0
    ) -> list[CommandReply]:
        """Run commands through the real admin client; one login for all of them."""

        async def go() -> list[CommandReply]:
            startup = self.kit(user)
            client = AdminClient(startup, load_kit(startup), user)
            client.timeout = timeout
            try:
                await client.login()
                return [await client.execute(line, confirmed=confirmed) for line in lines]
            finally:
                await client.close()

        return asyncio.run(go())

    def ok(self, line: str, **kwargs: Any) -> CommandReply:
        """Run one command and insist that it succeeded."""
        (outcome,) = self.admin(line, **kwargs)
        assert outcome.ok, f"{line!r} failed: {outcome.text}"
        return outcome

    def snapshot(self) -> admin_pb2.Snapshot:
        """The first event of the console's live feed: everything, as the server has it."""

        async def first() -> admin_pb2.Snapshot:
            startup = self.kit()
            client = AdminClient(startup, load_kit(startup), ADMIN)
            await client.login()
            try:
                async for event in client.events():
                    return event.snapshot
            finally:
                await client.close()
            raise AssertionError("the live feed ended before its snapshot")

        return asyncio.run(first())

    def status(self) -> dict[str, Any]:
        """check_status server as data, with every registered client's row."""
        return self.ok("check_status server clients").data

    def run_state(self) -> dict[str, Any]:
        """The run part of check_status server."""
        return self.status()["run"]  # type: ignore[no-any-return]

    def add_app(self, name: str, source: Path | None = None) -> Path:
        """Copy an app (an example by default) into the admin's transfer/ folder."""
        target = self.root / ADMIN / "transfer" / name
        shutil.copytree(source or APPS / name, target)
        return target

    def configure(self, file_name: str, app: str = "digits_fedavg", **changes: Any) -> None:
        """Change keys of a config file of the admin's copy of an app."""
        path = self.root / ADMIN / "transfer" / app / "config" / file_name
        values = json.loads(path.read_text())
        values.update(changes)
        path.write_text(json.dumps(values))

    def digest(self, app: str) -> str:
        """The SHA-256 a site approves the admin's copy of ``app`` by."""
        return review_app(self.root / ADMIN / "transfer" / app, app).digest

    def approve(self, app: str, *sites: str) -> None:
        """Site IT approves the admin's copy of ``app`` at each site (every client by
        default) with ``flclientd approve``, as after reading it with show-app."""
        digest = self.digest(app)
        for site in sites or self.clients:
            workspace = str(self.root / site)
            subprocess.run(
                [sys.executable, "-m", "flclientd", "approve", "--workspace", workspace, digest],
                check=True,
                capture_output=True,
            )

    def prepare_run(
        self, run_number: int = 1, *, deploy_clients: bool = True, **server_config: Any
    ) -> None:
        """set_run_number, upload and deploy the digits app (with config overrides) everywhere."""
        if server_config:
            self.configure("config_fed_server.json", **server_config)
        self.ok(f"set_run_number {run_number}")
        self.ok("upload_folder digits_fedavg")
        self.ok("deploy digits_fedavg server")
        if deploy_clients:
            self.ok("deploy digits_fedavg client")

    def worker_pids(self) -> list[int]:
        """Training processes (any rank or helper) started for this cluster's sites."""
        mine = ("flclientd.worker", str(self.root))
        return [p.pid for p in process_table() if all(word in command_line(p.pid) for word in mine)]

    def metrics(self, run_number: int = 1) -> list[dict[str, Any]]:
        """Rows of the server's metrics.jsonl of a run."""
        path = self.root / "server" / f"run_{run_number}" / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        """Kill every daemon's process group."""
        for daemon in self.daemons:
            daemon.kill()


@contextlib.contextmanager
def cluster(root: Path, **kwargs: Any) -> Iterator[Cluster]:
    """A Cluster whose daemons are all killed afterwards, whatever happens."""
    c = Cluster(root, **kwargs)
    try:
        yield c
    finally:
        c.stop()
