"""One sitting of the peer comparison: flstack, NVIDIA FLARE and Flower on one workload,
interleaved, then the table.

    bench/peers/setup.sh                                   # once: the peers' venvs
    .venv/bin/python bench/peers/sitting.py                # S/2 S/8 L/2 L/8, 3 repeats
    .venv/bin/python bench/peers/sitting.py --configs S/2 --systems ours,flower --repeats 1

Per repeat and config, the systems run back to back (the order rotates by one per
repeat), so machine noise hits them all alike; every run goes through ``harness.py``
(``<system>/run.py`` in that system's venv; flstack from this checkout's ``.venv``). First
the floor's inputs are measured (``limits.py``, ``step_cost.py``; ``--no-floor`` skips
them). The whole sitting holds an exclusive lock (``flock`` on ``--lock``): another
sitting, or any benchmark started as ``flock /tmp/flstack-bench.lock CMD``, waits for it.
Whatever else runs shows as "other load" in the table. Output: SITTING_DIR/ with one
folder per run (result.json, logs/), sitting.jsonl (one line per run: command, exit code,
wall seconds), table.md.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers.harness import machine_cpu  # noqa: E402
from bench.peers.table import render  # noqa: E402

VENVS = Path(os.environ.get("PEERS_VENVS", str(HERE / ".venvs")))
SCRIPTS = {
    "ours": HERE / "ours" / "run.py",
    "nvflare": HERE / "flare" / "run.py",
    "flower": HERE / "flower" / "run.py",
}
LOCK = Path("/tmp/flstack-bench.lock")  # noqa: S108 - one lock for all checkouts


def interpreters(ours: Path) -> dict[str, Path]:
    """The Python each system runs with."""
    return {
        "ours": ours,
        "nvflare": VENVS / "nvflare" / "bin" / "python",
        "flower": VENVS / "flwr" / "bin" / "python",
    }


def take_lock(path: Path) -> IO[str]:
    """Hold an exclusive lock for the whole sitting (waiting while another holds it)."""
    f = open(path, "a+")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        print(f"waiting for {path} (held by: {f.read().strip() or '?'}) ...", flush=True)
        fcntl.flock(f, fcntl.LOCK_EX)
    f.truncate(0)
    f.write(f"pid {os.getpid()}: bench/peers/sitting.py\n")
    f.flush()
    return f


def one_run(
    system: str, python: Path, size: str, n: int, sitting: Path, timeout: float, rep: int
) -> dict[str, Any]:
    """Run one measurement; its summary line for sitting.jsonl."""
    cmd = [str(python), str(SCRIPTS[system]), size, str(n), "--runs", str(sitting)]
    out = sitting / "logs" / f"{system}_{size}_{n}_r{rep}.out"
    t = time.monotonic()
    with open(out, "w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            rc = p.wait()
    wall = time.monotonic() - t
    text = out.read_text()
    found = re.findall(r'"run_dir": "([^"]*)"', text)
    line: dict[str, Any] = {
        "system": system,
        "config": f"{size}/{n}",
        "repeat": rep,
        "rc": rc,
        "wall_s": round(wall, 1),
        "cmd": " ".join(cmd),
        "log": str(out),
    }
    if found:
        result = json.loads((Path(found[-1]) / "result.json").read_text())
        line.update(
            {
                k: result.get(k)
                for k in (
                    "run_dir",
                    "median_round_s",
                    "total_s",
                    "server_peak_rss_mb",
                    "job_status",
                )
            }
        )
        line["cpu_s"] = result["resources"]["cpu_s_total"]
        line["other_load_cores"] = result["resources"]["other_load_cores"]
    return line


def measure_floor(python: Path, sitting: Path) -> None:
    """limits.json and step_cost.json of this sitting (the floor's inputs), and floor_load.json:
    the cores the rest of the machine used meanwhile, since a busy machine lowers the floor's
    TLS rate and slows its step as it slows the runs."""
    busy0, _ = machine_cpu()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    for script in ("limits.py", "step_cost.py"):
        name = script.replace(".py", ".json")
        print(f"=== {time.strftime('%H:%M:%S')} {script}", flush=True)
        with open(sitting / "logs" / f"{script}.out", "w") as f:
            subprocess.run(
                [str(python), str(HERE / script), "--json", str(sitting / name)],
                stdout=f,
                stderr=subprocess.STDOUT,
                check=True,
                timeout=900,
            )
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    wall = time.monotonic() - t0
    other = max(0.0, machine_cpu()[0] - busy0 - own) / wall
    load = {"wall_s": round(wall, 1), "other_load_cores": round(other, 3)}
    (sitting / "floor_load.json").write_text(json.dumps(load) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--configs", default="S/2,S/8,L/2,L/8", help="SIZE/N,... (default: %(default)s)"
    )
    ap.add_argument("--systems", default="ours,nvflare,flower", help="default: %(default)s")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, help="the sitting's folder (default bench/peers/runs/sitting_<time>)"
    )
    ap.add_argument("--no-floor", action="store_true", help="skip limits.py and step_cost.py")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run (killed after)")
    ap.add_argument("--lock", type=Path, default=LOCK, help="default: %(default)s")
    ap.add_argument(
        "--ours-python",
        type=Path,
        default=REPO / ".venv" / "bin" / "python",
        help="flstack's interpreter (default: this checkout's .venv)",
    )
    a = ap.parse_args()
    systems = a.systems.split(",")
    unknown = [s for s in systems if s not in SCRIPTS]
    if unknown:
        ap.error(f"unknown system(s) {', '.join(unknown)}: choose from {', '.join(SCRIPTS)}")
    configs = []
    for c in a.configs.split(","):
        size, _, n = c.partition("/")
        if not n.isdigit():
            ap.error(f"config {c!r}: write SIZE/N, e.g. S/2")
        configs.append((size, int(n)))
    pythons = interpreters(a.ours_python)
    missing = [str(pythons[s]) for s in systems if not pythons[s].exists()]
    if missing:
        sys.exit(
            f"missing interpreter(s) {', '.join(missing)}: run bench/peers/setup.sh "
            "(peers) or make install (ours)"
        )
    sitting = (a.out or HERE / "runs" / f"sitting_{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    (sitting / "logs").mkdir(parents=True, exist_ok=True)
    lock = take_lock(a.lock)
    print(f"sitting in {sitting}", flush=True)
    t_sitting = time.monotonic()
    if not a.no_floor:
        measure_floor(a.ours_python, sitting)
    with open(sitting / "sitting.jsonl", "a") as log:
        for rep in range(1, a.repeats + 1):
            shift = (rep - 1) % len(systems)
            order = systems[shift:] + systems[:shift]
            for size, n in configs:
                for system in order:
                    print(
                        f"=== {time.strftime('%H:%M:%S')} repeat {rep} {size}/{n} {system}",
                        flush=True,
                    )
                    line = one_run(system, pythons[system], size, n, sitting, a.timeout, rep)
                    log.write(json.dumps(line) + "\n")
                    log.flush()
                    print(
                        "    "
                        + ", ".join(
                            f"{k} {line.get(k)}"
                            for k in (
                                "rc",
                                "wall_s",
                                "median_round_s",
                                "total_s",
                                "server_peak_rss_mb",
                                "cpu_s",
                                "other_load_cores",
                                "job_status",
                            )
                        ),
                        flush=True,
                    )
    lock.close()
    table = render(sitting)
    (sitting / "table.md").write_text(table)
    print(f"\nsitting took {time.monotonic() - t_sitting:.0f} s; {sitting / 'table.md'}:\n")
    print(table, end="")


if __name__ == "__main__":
    main()
