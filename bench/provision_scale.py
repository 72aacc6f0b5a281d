"""Provisioning a large project: ``flprovision`` for 1,000 clients, a server and an admin.

Each repeat writes a fresh project.yml and runs the real command line
(``flprovision -p project.yml -w WORKSPACE --passwords-file FILE``, the
installed entry point in a child process, interpreter start included): a new
CA, a key and a certificate per participant, an AES-256 encrypted zip with
its own password per kit, the issued record and the audit log. Reported: the
wall time of each repeat (median, min, max; target under 20 s for 1,000
clients), the CPU time of the command and its worker processes (on a busy
machine this tells the work apart from the wait) and the size of what it wrote.

With ``--split`` one more run provisions the same project in this process
under cProfile and reports where the time went: keys and certificates
(``generate_key``, ``certify``, the CA), the kit files (``kit_files``:
configs, launchers, signature) and the encrypted zips (``write_kit_zip``).
The profiler slows Python code down, so the split is shares of that run,
not seconds of the timed ones.

    .venv/bin/python bench/provision_scale.py                     # 1,000 clients, 3 repeats
    .venv/bin/python bench/provision_scale.py --clients 50 --repeats 2 --split
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from bench.common import median, table  # noqa: E402

TARGET_S = 20.0
TARGET_CLIENTS = 1000
PARTS = {
    "keys and certificates": ("generate_key", "certify", "create_ca"),
    "kit files (configs, signature)": ("kit_files",),
    "encrypted zips (waiting for the worker processes)": ("write_kit_zips",),
}
"""Functions of ``provision`` whose cumulative time makes each part of the split."""


def project_mapping(clients: int) -> dict[str, Any]:
    """A project.yml with ``clients`` clients in 10 organisations, a server and one admin."""
    return {
        "api_version": 1,
        "name": "scale",
        "server": {
            "name": "server",
            "host": "fl.example.org",
            "fed_port": 8002,
            "admin_port": 8003,
            "org": "lead",
        },
        "clients": [{"name": f"site{i:04d}", "org": f"org{i % 10}"} for i in range(clients)],
        "admins": [{"email": "admin@lead.org", "org": "lead", "role": "super"}],
    }


def flprovision() -> list[str]:
    """The installed ``flprovision`` beside this interpreter, or the module if there is none."""
    script = Path(sys.executable).with_name("flprovision")
    return [str(script)] if script.exists() else [sys.executable, "-m", "provision"]


def children_cpu_s() -> float:
    """CPU seconds (user + system) of every child process waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(folder: Path, clients: int) -> tuple[float, float, int, int]:
    """Provision into ``folder`` with the command line; (seconds, CPU seconds, kits, kB of
    zips). The CPU time includes the command's own children (its worker processes)."""
    folder.mkdir(parents=True)
    project = folder / "project.yml"
    project.write_text(yaml.safe_dump(project_mapping(clients), sort_keys=False))
    command = [
        *flprovision(),
        "-p",
        str(project),
        "-w",
        str(folder / "workspace"),
        "--passwords-file",
        str(folder / "passwords.txt"),
    ]
    started, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds, cpu = time.perf_counter() - started, children_cpu_s() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"flprovision failed ({done.returncode}):\n{done.stderr[-2000:]}")
    zips = list((folder / "workspace").rglob("*.zip"))
    passwords = done.stdout.count("===> password:")
    if passwords != len(zips):
        raise RuntimeError(f"{len(zips)} kits but {passwords} passwords printed")
    return seconds, cpu, len(zips), sum(z.stat().st_size for z in zips) // 1000


def profiled_split(folder: Path, clients: int) -> list[list[str]]:
    """Provision once in this process under cProfile; rows with each part's share."""
    from provision import parse_project, provision_workspace

    project = parse_project(project_mapping(clients))
    profile = cProfile.Profile()
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        profile.runcall(provision_workspace, project, folder / "workspace")
    total = time.perf_counter() - started
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    cumulative: dict[str, float] = {}
    for (filename, _, function), (_, _, _, cum, _) in stats.items():
        if f"{Path('provision')}/" in filename:
            cumulative[function] = max(cumulative.get(function, 0.0), cum)
    rows = []
    for part, functions in PARTS.items():
        seconds = sum(cumulative.get(f, 0.0) for f in functions)
        rows.append([f"  {part}", f"{100 * seconds / total:.0f} % ({seconds:.2f} s profiled)"])
    rows.insert(0, ["profiled run (in process, slowed by cProfile)", f"{total:.2f} s"])
    return rows


def main(argv: list[str] | None = None) -> int:
    """Provision ``--repeats`` fresh projects, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=TARGET_CLIENTS, help="clients (1000)")
    parser.add_argument("--repeats", type=int, default=3, help="fresh projects (3)")
    parser.add_argument(
        "--split", action="store_true", help="one more run under cProfile: where the time goes"
    )
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.repeats < 1:
        parser.error("--clients and --repeats must be at least 1")
    times: list[float] = []
    cpus: list[float] = []
    kits = kilobytes = 0
    with tempfile.TemporaryDirectory(prefix="flbench-provision-") as tmp:
        root = args.workdir or Path(tmp)
        for repeat in range(args.repeats):
            seconds, cpu, kits, kilobytes = timed_run(root / f"run-{repeat}", args.clients)
            times.append(seconds)
            cpus.append(cpu)
            print(f"repeat {repeat + 1}: {seconds:.2f} s, {cpu:.2f} CPU s", flush=True)
        split = profiled_split(root / "profiled", args.clients) if args.split else []
    rows = [
        ["participants (clients + server + admin)", f"{args.clients} + 1 + 1 = {kits} kits"],
        ["encrypted zips written", f"{kilobytes:,} kB"],
        ["wall time median", f"{median(times):.2f} s over {len(times)} repeats"],
        ["wall time min / max", f"{min(times):.2f} / {max(times):.2f} s"],
        ["CPU time median (all its processes)", f"{median(cpus):.2f} s"],
        [
            "per kit (median): wall / CPU",
            f"{1000 * median(times) / kits:.1f} / {1000 * median(cpus) / kits:.1f} ms",
        ],
    ]
    if args.clients == TARGET_CLIENTS:
        verdict = "meets" if median(times) < TARGET_S else "MISSES"
        rows.append(["target", f"{verdict} (< {TARGET_S:g} s for {TARGET_CLIENTS:,} clients)"])
    rows.extend(split)
    print()
    print(table(["measure", "value"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
