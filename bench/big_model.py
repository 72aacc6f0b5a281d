"""Peak memory of every process while training a model of any size (2.1 GB by default).

One round with 2 clients of an MLP of ``--gb`` gigabytes (float32; built-in
``flapp.models.MLP`` on synthetic data, one SGD step), with real daemons on
127.0.0.1 (the cluster harness, :mod:`fldev.cluster`). A thread reads
``/proc`` every ``--interval`` seconds and keeps, per process of the
project, the peak resident memory (VmHWM: exact once read, so only a
process that peaks in the last interval before it exits is missed by that
much) and, for the server, the largest anonymous and file-backed resident
memory seen (RssAnon / RssFile), to tell heap from mapped files. Processes:
the server, each client daemon, each training child and the server's
model-init child. Also the model files each side keeps once the run is
finished.

The run is stopped (and the script fails) when the machine's available
memory falls below ``--min-available-gb``: other work shares the machine.

    .venv/bin/python bench/big_model.py                 # 2.1 GB model, 2 clients, 1 round
    .venv/bin/python bench/big_model.py --gb 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import table  # noqa: E402
from flcore.proctable import command_line, process_table  # noqa: E402
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.mlpapp import APP_NAME, ModelSize, write_app  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

ROLES = (
    ("flapp.runtime.modelinit", "model-init child"),
    ("flclientd.worker", "training child"),
    ("flserverd", "server"),
    ("flclientd", "client daemon"),
)
"""What a process of the project is, by the first word of its command line that matches."""


def model_of(gigabytes: float) -> ModelSize:
    """An MLP(1000, h, 10, layers=3) of about ``gigabytes`` GB of float32: h*h + 1012*h + 10
    parameters."""
    parameters = gigabytes * 1e9 / 4
    hidden = int((-1012 + (1012**2 + 4 * parameters) ** 0.5) / 2)
    return ModelSize(
        f"{gigabytes:g} GB", in_features=1000, hidden=hidden, out_features=10, layers=3
    )


@dataclass
class Peak:
    """The largest memory one process was seen with (MB)."""

    role: str
    name: str
    hwm_mb: float = 0.0
    anon_mb: float = 0.0
    file_mb: float = 0.0


@dataclass
class Watch:
    """Every process of the project, read from /proc in a thread."""

    root: Path
    interval: float
    min_available_mb: float
    peaks: dict[int, Peak] = field(default_factory=dict)
    low_memory: str = ""
    lowest_available_mb: float = float("inf")
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        root = str(self.root)
        for proc in process_table():
            line = command_line(proc.pid)
            if root not in line:
                continue
            role = next((name for word, name in ROLES if word in line), "")
            if not role:
                continue
            status = _status(proc.pid)
            if not status:
                continue
            name = _name(line, role)
            peak = self.peaks.setdefault(proc.pid, Peak(role, name))
            peak.hwm_mb = max(peak.hwm_mb, status.get("VmHWM", 0.0))
            peak.anon_mb = max(peak.anon_mb, status.get("RssAnon", 0.0))
            peak.file_mb = max(peak.file_mb, status.get("RssFile", 0.0))
        available = _available_mb()
        self.lowest_available_mb = min(self.lowest_available_mb, available)
        if available < self.min_available_mb and not self.low_memory:
            self.low_memory = f"the machine had only {available:.0f} MB available"

    @contextlib.contextmanager
    def running(self) -> Iterator[Watch]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join()


def _status(pid: int) -> dict[str, float]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            values[key] = int(value.split()[0]) / 1024
    return values


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _name(line: str, role: str) -> str:
    """Which site a client-side process belongs to (from its folders)."""
    for word in line.split():
        for part in Path(word).parts:
            if part.startswith("flclient") and part[len("flclient") :].isdigit():
                return f"{role} ({part})"
    return role


def kept_files(c: Cluster, names: tuple[str, ...]) -> dict[str, tuple[int, float]]:
    """Model files each side keeps after the run: count and GB."""
    kept = {}
    for side in ("server", *names):
        files = [p for p in (c.root / side).rglob("*.safetensors") if p.is_file()]
        inodes = {p.stat().st_ino: p.stat().st_size for p in files}  # hard links count once
        kept[side] = (len(inodes), sum(inodes.values()) / 1e9)
    return kept


def run(root: Path, model: ModelSize, args: argparse.Namespace) -> tuple[Watch, dict[str, float]]:
    names = ("flclient1", "flclient2")
    settings = {"heart_beat_timeout": 600, "heartbeat_interval": 5, "retry_window": 600}
    watch = Watch(root, args.interval, args.min_available_gb * 1024)
    facts: dict[str, float] = {}
    with cluster(root, clients=names, settings=settings) as c, watch.running():
        write_app(c.root / ADMIN / "transfer", model, clients=2, num_rounds=1)
        c.server()
        for name in names:
            c.client(name)
        c.admin(
            "set_run_number 1",
            f"upload_folder {APP_NAME}",
            f"deploy {APP_NAME} server",
            f"deploy {APP_NAME} client",
            timeout=60,
        )
        started = time.monotonic()
        c.admin("start server", "start client", timeout=60)

        def finished() -> bool:
            if watch.low_memory:
                raise RuntimeError(f"stopped: {watch.low_memory}")
            state = c.run_state()
            return bool(state["server_status"] == "training stopped" and state["reason"])

        wait_until(finished, args.timeout, "the run to finish", interval=1.0)
        facts["wall_s"] = time.monotonic() - started
        state = c.run_state()
        if state["reason"] != "finished":
            raise RuntimeError(f"the run stopped: {state['reason']}")
        rows = [r for r in c.metrics() if not r.get("final")]
        facts["round_s"] = float(rows[0]["duration_s"]) if rows else float("nan")
        for side, (count, gigabytes) in kept_files(c, names).items():
            facts[f"files {side}"] = count
            facts[f"GB {side}"] = gigabytes
        watch.sample()
    return watch, facts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gb", type=float, default=2.1, help="model size in GB (float32)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--min-available-gb", type=float, default=1.5)
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    model = model_of(args.gb)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    print(
        f"MLP(1000, {model.hidden}, 10, layers=3): {model.parameters:,} parameters "
        f"({model.megabytes / 1000:.2f} GB), 2 clients, 1 round; load average {load}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="flbench-big-") as tmp:
        watch, facts = run((args.workdir or Path(tmp)) / "big", model, args)
    rows = [
        [
            peak.name,
            f"{peak.hwm_mb:,.0f}",
            f"{peak.anon_mb:,.0f} / {peak.file_mb:,.0f}",
        ]
        for peak in sorted(watch.peaks.values(), key=lambda p: (ROLE_ORDER[p.role], p.name))
    ]
    print()
    print(table(["process", "peak RSS MB (VmHWM)", "largest RssAnon / RssFile MB"], rows))
    print()
    print(f"round 0: {facts['round_s']:.1f} s; start server -> finished {facts['wall_s']:.1f} s")
    for side in ("server", "flclient1", "flclient2"):
        print(
            f"model files kept by {side}: {facts[f'files {side}']:.0f} "
            f"({facts[f'GB {side}']:.2f} GB)"
        )
    print(f"lowest MemAvailable of the machine: {watch.lowest_available_mb:,.0f} MB")
    return 0


ROLE_ORDER = {"server": 0, "model-init child": 1, "client daemon": 2, "training child": 3}

if __name__ == "__main__":
    sys.exit(main())
