"""The process harness every system's run goes through, so all are measured alike.

It starts every process of one run as a descendant of this process and measures:

* peak RSS per *role* (server / client / admin): every ``SAMPLE_S`` seconds the RSS
  of all live processes of a role is summed; the role's peak is the largest sum. Each
  process's kernel high-water mark (VmHWM) is kept too;
* total CPU seconds (user + system) of *all* processes of the run, exactly: this
  process becomes a child sub-reaper (``PR_SET_CHILD_SUBREAPER``), so daemonised
  grandchildren are re-parented to it and reaped by it, and
  ``getrusage(RUSAGE_CHILDREN)`` afterwards includes every one of them;
* the CPU the rest of the machine used meanwhile (``other_load_cores``, from
  /proc/stat) and the hypervisor's steal: a sitting disturbed by other work shows in
  its table instead of passing for a slow system.

A process's role is the role of the process the harness started it under. Standard
library only (Linux /proc), because it runs in every system's own virtual environment.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import resource
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

PR_SET_CHILD_SUBREAPER = 36
SAMPLE_S = float(os.environ.get("BENCH_SAMPLE_S", "0.2"))
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _set_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:
        return False


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of all cores since boot; busy leaves out idle, iowait and
    steal."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / CLK_TCK, (f[7] if len(f) > 7 else 0) / CLK_TCK


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (which may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process on the machine."""
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                out[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
    return out


def descendants(root: int) -> list[int]:
    """Every live process below ``root``."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _sample(pid: int) -> tuple[int, float, int, int, str]:
    """(parent, CPU seconds, RSS bytes, VmHWM kB, command line) of a live process."""
    fields = _stat_fields(pid)
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = int(fields[21]) * PAGE
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
            break
    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return int(fields[1]), cpu, rss, hwm, cmd.strip()[:200]


class Harness:
    """Starts one run's processes and measures them (see the module's docstring)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.subreaper = _set_subreaper()
        self.me = os.getpid()
        self.role_of: dict[int, str] = {}
        self.name_of: dict[int, str] = {}
        self.hwm_kb: dict[int, int] = {}
        self.cpu_last: dict[int, float] = {}
        self.peak_role_rss: dict[str, int] = {}
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.marks: dict[str, float] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()  # starting + registering a process vs. the sampler
        self._ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._self0 = resource.getrusage(resource.RUSAGE_SELF)
        self._machine0 = machine_cpu()
        self._wall0 = time.time()
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def mark(self, name: str, t: float | None = None) -> float:
        """Record a named wall-clock time (result.json's ``marks``)."""
        self.marks[name] = time.time() if t is None else t
        return self.marks[name]

    def start(
        self,
        name: str,
        cmd: Sequence[str],
        role: str,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process of ``role``, its output in logs/NAME.log."""
        full_env = {**os.environ, **(env or {})}
        with open(self.run_dir / "logs" / f"{name}.log", "ab", buffering=0) as log, self._lock:
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
            self.role_of[p.pid] = role
            self.name_of[p.pid] = name
            self.procs.append((name, p))
        return p

    def run(
        self,
        name: str,
        cmd: Sequence[str],
        role: str,
        cwd: str | Path | None = None,
        timeout: float | None = None,
    ) -> int:
        """Start a process and wait for it."""
        return self.start(name, cmd, role, cwd=cwd).wait(timeout=timeout)

    def _sample_once(self) -> None:
        with self._lock:
            sums: dict[str, int] = {}
            for pid in descendants(self.me):
                try:
                    ppid, cpu, rss, hwm, cmd = _sample(pid)
                except (OSError, ValueError, IndexError):
                    continue
                role = self.role_of.get(pid)
                if role is None:
                    role = self.role_of[pid] = self.role_of.get(ppid, "other")
                    self.name_of[pid] = cmd
                sums[role] = sums.get(role, 0) + rss
                self.cpu_last[pid] = cpu
                self.hwm_kb[pid] = max(hwm, self.hwm_kb.get(pid, 0))
            for role, total in sums.items():
                self.peak_role_rss[role] = max(total, self.peak_role_rss.get(role, 0))

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self._sample_once()
            self._stop.wait(SAMPLE_S)

    def end(self, admin: subprocess.Popen[bytes], timeout: float = 3600) -> float:
        """Wait for the admin script to finish the job, then stop every process; the time
        the job ended (teardown is timed from it)."""
        try:
            admin.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print("admin timed out")
        ended = time.time()
        self.stop_all(grace=20)
        return ended

    def result(
        self,
        args: argparse.Namespace,
        system: tuple[str, str],
        how: tuple[str, str],
        model: tuple[int, int],
        provision_s: float,
        ended: float,
    ) -> dict[str, Any]:
        """The fields every system's result.json has: ``system`` is (peer, its package),
        ``how`` (mode, variant), ``model`` (width, parameters); the caller adds what is its
        own (totals, status, checks)."""
        rounds = read_round_log(self.run_dir / "rounds.jsonl")
        return {
            "peer": system[0],
            "version": version(system[1]),
            "torch": version("torch"),
            "mode": how[0],
            "variant": how[1],
            "size": args.size,
            "width": model[0],
            "n_params": model[1],
            "clients": args.clients,
            "rounds_cfg": args.rounds,
            "provision_s": round(provision_s, 2),
            "teardown_s": round(time.time() - ended, 2),
            "rounds": rounds,
            **round_stats(rounds),
            "resources": self.resources(),
            "run_dir": str(self.run_dir),
            "marks": self.marks,
        }

    def stop_all(self, grace: float = 15.0) -> None:
        """SIGTERM every remaining descendant, SIGKILL after ``grace``, reap everything."""
        self._sample_once()
        for pid in descendants(self.me):
            with contextlib.suppress(OSError):
                os.kill(pid, 15)
        deadline = time.monotonic() + grace
        while descendants(self.me) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        for pid in descendants(self.me):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        self._stop.set()
        self._sampler.join(timeout=5)
        for _, p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        deadline = time.monotonic() + 10
        while descendants(self.me) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.1)
        self._reap()

    @staticmethod
    def _reap() -> None:
        """Reap re-parented orphans, so that RUSAGE_CHILDREN counts them."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def resources(self) -> dict[str, Any]:
        """CPU, memory per role and per process, and the machine's other load, of the run."""
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_total = (ru.ru_utime - self._ru0.ru_utime) + (ru.ru_stime - self._ru0.ru_stime)
        ru_self = resource.getrusage(resource.RUSAGE_SELF)
        self_cpu = (ru_self.ru_utime - self._self0.ru_utime) + (
            ru_self.ru_stime - self._self0.ru_stime
        )
        now = machine_cpu()
        busy, steal = now[0] - self._machine0[0], now[1] - self._machine0[1]
        wall = max(time.time() - self._wall0, 1e-9)
        roles: dict[str, Any] = {}
        for role in sorted(set(self.role_of.values())):
            pids = [p for p, r in self.role_of.items() if r == role]
            roles[role] = {
                "peak_rss_sum_mb": round(self.peak_role_rss.get(role, 0) / 2**20, 1),
                "max_proc_hwm_mb": round(max(self.hwm_kb.get(p, 0) for p in pids) / 1024, 1),
                "sum_proc_hwm_mb": round(sum(self.hwm_kb.get(p, 0) for p in pids) / 1024, 1),
                "cpu_s_sampled": round(sum(self.cpu_last.get(p, 0.0) for p in pids), 2),
                "n_procs": len(pids),
            }
        return {
            # CPU the machine spent outside this run's processes and this harness, per second
            # of the run: other load, plus kernel work charged to no process.
            "other_load_cores": round(max(0.0, busy - cpu_total - self_cpu) / wall, 3),
            "steal_cores": round(steal / wall, 3),
            "harness_cpu_s": round(self_cpu, 2),
            "cpu_s_total": round(cpu_total, 2),
            "cpu_s_user": round(ru.ru_utime - self._ru0.ru_utime, 2),
            "cpu_s_sys": round(ru.ru_stime - self._ru0.ru_stime, 2),
            "subreaper": self.subreaper,
            "sample_interval_s": SAMPLE_S,
            "roles": roles,
            "procs": {
                str(p): {
                    "role": self.role_of[p],
                    "name": self.name_of.get(p, ""),
                    "hwm_mb": round(self.hwm_kb.get(p, 0) / 1024, 1),
                    "cpu_s": round(self.cpu_last.get(p, 0.0), 2),
                }
                for p in self.role_of
            },
        }


def read_round_log(path: str | Path) -> list[dict[str, float]]:
    """Round events a server-side hook wrote: JSON lines ``{"ev": "start"|"end",
    "round": r, "t": unix_time}`` (other events are ignored)."""
    rounds: dict[int, dict[str, float]] = {}
    p = Path(path)
    if not p.exists():
        return []
    for line in p.read_text().splitlines():
        if line.strip():
            e = json.loads(line)
            if e["ev"] in ("start", "end"):
                rounds.setdefault(int(e["round"]), {"round": int(e["round"])})[e["ev"]] = e["t"]
    return [rounds[k] for k in sorted(rounds)]


def round_stats(rounds: list[dict[str, float]], first_round: int = 1) -> dict[str, Any]:
    """period(r) = end(r) - end(r-1): everything between two consecutive global models
    (broadcast, local step, upload, aggregation, persistence, framework overhead);
    span(r) = end(r) - start(r). Medians over rounds 2..R (round 1 includes start-up)."""
    ends = {int(r["round"]): r.get("end") for r in rounds}
    periods: dict[int, float] = {}
    spans: dict[int, float] = {}
    for r in rounds:
        k = int(r["round"])
        end, start, before = r.get("end"), r.get("start"), ends.get(k - 1)
        if end is not None and start is not None:
            spans[k] = end - start
        if end is not None and before is not None:
            periods[k] = end - before
    steady = [periods[k] for k in sorted(periods) if k >= first_round + 1]
    steady_span = [spans[k] for k in sorted(spans) if k >= first_round + 1]
    return {
        "period_s": {str(k): round(v, 3) for k, v in sorted(periods.items())},
        "span_s": {str(k): round(v, 3) for k, v in sorted(spans.items())},
        "median_round_s": round(statistics.median(steady), 3) if steady else None,
        "median_span_s": round(statistics.median(steady_span), 3) if steady_span else None,
        "round1_span_s": round(spans[first_round], 3) if first_round in spans else None,
    }


def write_result(run_dir: Path, result: dict[str, Any]) -> Path:
    """result.json of a run: every number, per-round timings, per-process memory and CPU."""
    out = run_dir / "result.json"
    out.write_text(json.dumps(result, indent=2))
    return out


def wait_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``port`` within ``timeout``."""
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def run_dir(root: Path, system: str, size: str, clients: int, tag: str = "") -> Path:
    """A new folder for one run: ROOT/SYSTEM_SIZE_N[TAG]_STAMP."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{system}_{size}_{clients}{tag}_{stamp}"
    path.mkdir(parents=True)
    return path


def bench_env() -> dict[str, str]:
    """What every process of every system gets: one math thread each, unbuffered output."""
    return {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "BENCH_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def absolute(text: str) -> Path:
    """A path made absolute: the systems' tools resolve paths from other working folders."""
    return Path(text).resolve()


def arguments(system: str, default_port: int) -> argparse.ArgumentParser:
    """The options every system's run.py takes (and the sitting passes on)."""
    p = argparse.ArgumentParser(description=f"One measurement of {system} (bench/README.md).")
    p.add_argument("size", help="S, L, or a parameter count such as 5e6")
    p.add_argument("clients", type=int)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--port", type=int, default=default_port)
    p.add_argument("--runs", type=absolute, default=RUNS, help=f"where runs go (default {RUNS})")
    p.add_argument("--tag", default="", help="appended to the run's folder name")
    return p


RUNS = Path(os.environ.get("PEERS_RUNS", str(Path(__file__).resolve().parent / "runs")))
"""Where runs, kits and certificates go (git-ignored; PEERS_RUNS moves them)."""


def finish(run_dir: Path, result: dict[str, Any]) -> None:
    """Add the server's peak, write result.json and print the run's summary."""
    result["server_peak_rss_mb"] = (
        result["resources"]["roles"].get("server", {}).get("peak_rss_sum_mb")
    )
    write_result(run_dir, result)
    shown = {k: v for k, v in result.items() if k not in ("rounds", "resources", "admin")}
    print(json.dumps(shown, indent=1))
    print(
        "cpu_s_total",
        result["resources"]["cpu_s_total"],
        "server_peak_rss_mb",
        result["server_peak_rss_mb"],
    )
