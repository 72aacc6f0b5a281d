"""The local demo behind `make demo`: a whole federated project on this machine.

It does what the three kinds of users do, with the real tools: provisions a
project (one server, two hospitals, one admin) on free localhost ports,
extracts the kits, splits the 8x8 digits data set between the two sites,
starts the daemons with their kits' start.sh, then drives training with
fltui --cmd (set_run_number, upload_folder, deploy, start), shows the
progress, prints the final global accuracy and shuts everything down.
Everything lands in ./demo-workspace (recreated on each run).
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
from pathlib import Path

from fladmin import AdminClient, load_kit

ROOT = Path(__file__).resolve().parent.parent
APP = "digits_fedavg"
SITES = ("flclient1", "flclient2")
ADMIN = "admin@example.org"
TARGET_ACCURACY = 0.90


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

    def __init__(self, workspace: Path, rounds: int) -> None:
        self.ws = workspace
        self.rounds = rounds
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
            "settings: {heart_beat_timeout: 60, heartbeat_interval: 5, cert_validity_days: 30}\n"
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
        """Split the data between the sites and put the app in the admin's transfer/."""
        say("Splitting the 8x8 digits data set between the two hospitals")
        run(
            [
                sys.executable,
                str(ROOT / "examples" / "digits" / "prepare_data.py"),
                "--sites",
                ",".join(SITES),
                "--out",
                str(self.ws / "data"),
            ]
        )
        transfer = self.ws / ADMIN / "transfer" / APP
        shutil.copytree(ROOT / "examples" / "apps" / APP, transfer)
        config = transfer / "config" / "config_fed_server.json"
        values = json.loads(config.read_text())
        values["num_rounds"] = self.rounds
        config.write_text(json.dumps(values, indent=2))

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
                clients = json.loads(result.stdout.splitlines()[0])["data"]["clients"]
                if len(clients) == len(SITES):
                    return
            time.sleep(1)
        raise SystemExit("the clients did not register within 120 s: see demo-workspace/*.log")

    async def follow(self) -> float:
        """Print each round's global accuracy from the server's live event feed.

        Returns the accuracy of the final global model once the run stops.
        """
        startup = self.ws / ADMIN / "startup"
        client = AdminClient(startup, load_kit(startup), ADMIN)
        await client.login()
        shown = 0
        try:
            async for event in client.events():
                run = event.snapshot.run if event.HasField("snapshot") else event.run
                if not (event.HasField("snapshot") or event.HasField("run")):
                    continue
                for record in run.history[shown:]:
                    plural = "s" if record.round > 1 else ""
                    rounds = (
                        f"after {record.round} round{plural}" if record.round else "initial model"
                    )
                    accuracy = record.metrics.get("val_accuracy", float("nan"))
                    print(f"  {rounds:>16}: global model accuracy {accuracy:.3f}", flush=True)
                shown = max(shown, len(run.history))
                if run.server_status == "training stopped" and run.history:
                    return run.history[-1].metrics.get("val_accuracy", 0.0)
        finally:
            await client.close()
        raise SystemExit("the server ended the event feed before training finished")

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
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    shutil.rmtree(args.workspace, ignore_errors=True)
    args.workspace.mkdir(parents=True)
    demo = Demo(args.workspace.resolve(), args.rounds)
    try:
        demo.provision()
        demo.prepare()
        say("Starting the server and the two clients (their kits' start.sh)")
        demo.start("server")
        for site in SITES:
            demo.start(site, DATA_ROOT=str(demo.ws / "data" / site))
        demo.wait_for_clients()
        say("Operating the run with fltui --cmd")
        commands = (
            "check_status server",
            "set_run_number 1",
            f"upload_folder {APP}",
            f"deploy {APP} server",
            f"deploy {APP} client",
            "start server",
            "start client",
        )
        if demo.admin(*commands).returncode != 0:
            raise SystemExit("an admin command failed: see above")
        say(f"Training {args.rounds} rounds (live from the server's event feed)")
        accuracy = asyncio.run(asyncio.wait_for(demo.follow(), 600))
        say("Shutting down: clients first, then the server")
        demo.admin("shutdown client", "shutdown server")
        for process in demo.daemons:
            process.wait(30)
        print(f"\nFinal global model accuracy on the sites' validation data: {accuracy:.3f}")
        print(f"Models, metrics.jsonl and TensorBoard logs: {demo.ws / 'server' / 'run_1'}")
        return 0 if accuracy >= TARGET_ACCURACY else 1
    finally:
        demo.stop()


if __name__ == "__main__":
    raise SystemExit(main())
