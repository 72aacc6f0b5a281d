"""The local demo behind `make demo`: a whole federated project on this machine.

It does what the three kinds of users do, with the real tools: provisions a
project (one server, two hospitals, one admin) on free localhost ports,
extracts the kits, writes each site's data, starts the daemons with their
kits' start.sh, then drives training with fltui --cmd (set_run_number,
upload_folder, deploy, start), has each site's IT approve an app with custom
code (flclientd show-app and approve), shows the progress, prints the final
global metric and shuts everything down. Everything lands in
./demo-workspace (recreated on each run).

``--app`` picks the example: ``digits_fedavg`` (8x8 digits, the default),
``seg3d_monai`` (a MONAI UNet on 3D volumes) or ``seg3d_bundle`` (the same
as a MONAI bundle); the two MONAI apps need ``pip install 'flstack[monai]'``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from fladmin import AdminClient, load_kit
from flcore.feed import RunInfo, Snapshot
from flcore.feedwire import events_from_proto

ROOT = Path(__file__).resolve().parent.parent
SITES = ("flclient1", "flclient2")
ADMIN = "admin@example.org"


@dataclass(frozen=True)
class DemoApp:
    """An example app the demo trains, and what its run must reach."""

    data: str
    """The folder of examples/ whose prepare_data.py writes the sites' data."""
    metric: str
    """The global metric shown round by round (the app's validation_metric)."""
    target: float
    """The final value below which the demo exits with 1."""
    custom_code: bool
    """Whether the sites' IT must approve the app before it runs."""


APPS = {
    "digits_fedavg": DemoApp("digits", "val_accuracy", 0.90, custom_code=False),
    "seg3d_monai": DemoApp("seg3d", "val_dice", 0.80, custom_code=True),
    "seg3d_bundle": DemoApp("seg3d", "val_dice", 0.80, custom_code=True),
}


def free_ports(count: int) -> list[int]:
    """Ports that are free on localhost now."""
    socks = [socket.socket() for _ in range(count)]
    for sock in socks:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in socks]
    for sock in socks:
        sock.close()
    return ports


def say(text: str) -> None:
    """A step of the demo."""
    print(f"\n=== {text}", flush=True)


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it, and stop the demo if it fails."""
    print("$ " + " ".join(str(a) for a in args), flush=True)
    return subprocess.run(args, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


class Demo:
    """The demo's workspace and processes."""

    def __init__(self, workspace: Path, app: str, rounds: int | None) -> None:
        self.ws = workspace
        self.app = app
        self.kind = APPS[app]
        self.rounds = rounds
        self.cross_validate = False
        self.bin = Path(sys.executable).parent
        self.daemons: list[subprocess.Popen[bytes]] = []

    def admin(self, *commands: str, as_json: bool = False) -> subprocess.CompletedProcess[str]:
        """Run admin commands through the admin kit's fl_admin.sh."""
        args = [str(self.ws / ADMIN / "startup" / "fl_admin.sh"), "--yes"]
        if as_json:
            args.append("--json")
        for command in commands:
            args += ["--cmd", command]
        return subprocess.run(args, text=True, capture_output=as_json, env=self.env(), check=False)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for the kits' scripts: use this install's daemons."""
        # Two sites share this machine's cores: one math thread each avoids oversubscription.
        return {
            **os.environ,
            "FLSTACK_BIN": str(self.bin),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            **extra,
        }

    def provision(self) -> None:
        """Write project.yml, provision kits, extract them."""
        fed_port, admin_port = free_ports(2)
        say(f"Provisioning a project: server on localhost:{fed_port} (admin port {admin_port})")
        project = self.ws / "project.yml"
        run([str(self.bin / "flprovision"), "init", str(project)], stdout=subprocess.DEVNULL)
        clients = "\n".join(f"  - {{name: {s}, org: hospital-{s[-1]}}}" for s in SITES)
        project.write_text(
            "api_version: 1\n"
            "name: digits_demo\n"
            f"server: {{name: server, host: localhost, fed_port: {fed_port}, "
            f"admin_port: {admin_port}, org: lead}}\n"
            f"clients:\n{clients}\n"
            f"admins:\n  - {{email: {ADMIN}, org: lead, role: super}}\n"
            "settings: {heart_beat_timeout: 60, heartbeat_interval: 5}\n"
        )
        out = run(
            [
                str(self.bin / "flprovision"),
                "-p",
                str(project),
                "-w",
                str(self.ws / "provisioning"),
            ],
            capture_output=True,
        ).stdout
        print(out, end="")
        passwords = {}
        for line in out.splitlines():
            if line.startswith("===> password: "):
                words = line.split()
                passwords[words[4].removesuffix(".zip")] = words[2]
        say("Extracting each kit with its password")
        for name, password in passwords.items():
            kit = self.ws / "provisioning" / "packages" / f"{name}.zip"
            run(
                [
                    str(self.bin / "flprovision"),
                    "extract",
                    str(kit),
                    "-p",
                    password,
                    "-d",
                    str(self.ws / name),
                ],
                stdout=subprocess.DEVNULL,
            )
        print("kits extracted into " + ", ".join(str(self.ws / n) for n in passwords))

    def prepare(self) -> None:
        """Write the sites' data and put the app in the admin's transfer/."""
        say(f"Writing each hospital's data (examples/{self.kind.data}/prepare_data.py)")
        run(
            [
                sys.executable,
                str(ROOT / "examples" / self.kind.data / "prepare_data.py"),
                "--sites",
                ",".join(SITES),
                "--out",
                str(self.ws / "data"),
            ]
        )
        transfer = self.ws / ADMIN / "transfer" / self.app
        shutil.copytree(ROOT / "examples" / "apps" / self.app, transfer)
        config = transfer / "config" / "config_fed_server.json"
        values = json.loads(config.read_text())
        if self.rounds is not None:
            values["num_rounds"] = self.rounds
        self.rounds = values["num_rounds"]
        config.write_text(json.dumps(values, indent=2))
        client = json.loads((transfer / "config" / "config_fed_client.json").read_text())
        self.cross_validate = bool(client.get("cross_validate", False))

    def approve(self) -> None:
        """Each site's IT reads the deployed app and approves its digest."""
        say("Each hospital's IT reviews the app's code and approves it")
        flclientd = str(self.bin / "flclientd")
        for site in SITES:
            workspace = str(self.ws / site)
            shown = run(
                [flclientd, "show-app", "--workspace", workspace, self.app, "--list"],
                capture_output=True,
            ).stdout
            print(shown, end="")
            digest = next(line for line in shown.splitlines() if line.startswith("sha256:"))
            run([flclientd, "approve", "--workspace", workspace, digest.removeprefix("sha256:")])

    def start(self, name: str, **extra: str) -> None:
        """Start a daemon with its kit's start.sh; its log goes to <name>.log."""
        log = (self.ws / f"{name}.log").open("wb")
        script = self.ws / name / "startup" / "start.sh"
        process = subprocess.Popen(
            [str(script)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(**extra),
            start_new_session=True,
        )
        self.daemons.append(process)
        print(f"started {name} (pid {process.pid}), log in {self.ws / f'{name}.log'}")

    def wait_for_clients(self) -> None:
        """Wait until both sites are registered."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = self.admin("check_status server", as_json=True)
            if result.returncode == 0:
                registered = json.loads(result.stdout.splitlines()[0])["data"]["registered"]
                if registered == len(SITES):
                    return
            time.sleep(1)
        raise SystemExit("the clients did not register within 120 s: see demo-workspace/*.log")

    async def follow(self) -> float:
        """Print each round's global metric from the server's live event feed.

        Returns the metric of the final global model once the run stops.
        """
        startup = self.ws / ADMIN / "startup"
        client = AdminClient(startup, load_kit(startup), ADMIN)
        await client.login()
        metric = self.kind.metric
        shown = 0
        try:
            async for message in client.events():
                for event in events_from_proto(message):
                    run = event.body.run if isinstance(event.body, Snapshot) else event.body
                    if not isinstance(run, RunInfo):
                        continue
                    for record in run.history[shown:]:
                        plural = "s" if record.round > 1 else ""
                        rounds = (
                            f"after {record.round} round{plural}"
                            if record.round
                            else "initial model"
                        )
                        value = record.metrics.get(metric, float("nan"))
                        print(f"  {rounds:>16}: global model {metric} {value:.3f}", flush=True)
                    shown = max(shown, len(run.history))
                    if run.server_status == "training stopped" and run.history:
                        return run.history[-1].metrics.get(metric, 0.0)
        finally:
            await client.close()
        raise SystemExit("the server ended the event feed before training finished")

    def cross_site_validation(self) -> None:
        """Wait until every site validated the others' models and the global one, then
        print the matrix."""
        owners = ("global", *SITES)
        expected = [(row, column) for row in owners for column in SITES if row != column]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            result = self.admin("validate all", as_json=True)
            if result.returncode == 0:
                cells = json.loads(result.stdout.splitlines()[0])["data"]["cells"]
                if all(cells.get(row, {}).get(column) for row, column in expected):
                    self.admin("validate all")
                    return
            time.sleep(1)
        raise SystemExit("cross-site validation did not finish within 300 s: see the logs")

    def stop(self) -> None:
        """Stop every daemon that is still running."""
        for process in self.daemons:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.daemons:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def main() -> int:
    """Run the demo end to end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=ROOT / "demo-workspace")
    parser.add_argument("--app", choices=sorted(APPS), default="digits_fedavg")
    parser.add_argument("--rounds", type=int, help="rounds to train (default: the app's)")
    args = parser.parse_args()
    shutil.rmtree(args.workspace, ignore_errors=True)
    args.workspace.mkdir(parents=True)
    demo = Demo(args.workspace.resolve(), args.app, args.rounds)
    app, kind = demo.app, demo.kind
    try:
        demo.provision()
        demo.prepare()
        say("Starting the server and the two clients (their kits' start.sh)")
        demo.start("server")
        for site in SITES:
            demo.start(site, DATA_ROOT=str(demo.ws / "data" / site))
        demo.wait_for_clients()
        say("Operating the run with fltui --cmd")
        deploy = (
            "check_status server",
            "set_run_number 1",
            f"upload_folder {app}",
            f"deploy {app} server",
            f"deploy {app} client",
        )
        if demo.admin(*deploy).returncode != 0:
            raise SystemExit("an admin command failed: see above")
        if kind.custom_code:
            demo.approve()
        if demo.admin("start server", "start client").returncode != 0:
            raise SystemExit("an admin command failed: see above")
        say(f"Training {demo.rounds} rounds (live from the server's event feed)")
        value = asyncio.run(asyncio.wait_for(demo.follow(), 900))
        if demo.cross_validate:
            say("Cross-site validation: each hospital validates the other's best model")
            demo.cross_site_validation()
        say("Shutting down: clients first, then the server")
        demo.admin("shutdown client", "shutdown server")
        for process in demo.daemons:
            process.wait(30)
        print(f"\nFinal global model {kind.metric} on the sites' validation data: {value:.3f}")
        print(f"Models, metrics.jsonl and TensorBoard logs: {demo.ws / 'server' / 'run_1'}")
        return 0 if value >= kind.target else 1
    finally:
        demo.stop()


if __name__ == "__main__":
    raise SystemExit(main())
