"""Wire compression: round time on a slow link, and what it costs the digits example's accuracy.

Two parts, each with real ``flserverd`` / ``flclientd`` processes started by
the cluster harness of the integration tests (:mod:`fldev.cluster`):

* **link**: the benchmarks' large MLP (25 M parameters, 100 MB in float32,
  one SGD step per round: :mod:`fldev.mlpapp`) trained by ``--clients`` sites,
  each behind its own link of ``--mbit`` Mbit/s each way (a
  :class:`fldev.netproxy.FaultyLink`, the rate-limited HTTP CONNECT proxy the
  network tests use; the sites reach the server through it with
  ``grpc_proxy``, as behind a hospital's proxy). One run per compression,
  ``--rounds`` rounds each, in one cluster; with ``--repeats`` the sequence of
  runs is repeated. Reported per compression: the median, min and max of the
  rounds' ``duration_s`` in the server's ``metrics.jsonl`` (round 0, which
  starts the training children, is not measured), the model bytes per round
  on the wire and raw (``wire`` in ``metrics.jsonl``), what the links
  carried per round (TLS, HTTP/2 and gRPC framing included; read when the
  last round's line appears, so a few chunks of the final model's download
  may count), and the CPU seconds per round of the server, the client
  daemons and the training children.
* **accuracy**: the digits example (``examples/apps/digits_fedavg``, 2 sites,
  the DigitsCNN with Adam) for ``--digits-rounds`` rounds per compression and
  seed (``seed`` in config_train.json), without a slow link. Reported per
  compression: the final model's ``val_accuracy`` (median over seeds, min and
  max) and its difference to ``none`` with the same seed (median, and the
  largest difference in any round).

The machine's load average at the start and end of each part is printed with
the CPU the rest of the machine used meanwhile ("other load", cores).

    .venv/bin/python bench/compression.py                          # both parts, defaults
    .venv/bin/python bench/compression.py --part link --mbit 50 --rounds 4 --repeats 2
    .venv/bin/python bench/compression.py --part accuracy --seeds 0,1,2 --digits-rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import CLK_TCK, CpuTally, machine_busy_seconds, median, table  # noqa: E402
from flcore.compression import WireCompression  # noqa: E402
from flcore.proctable import descendants  # noqa: E402
from fldev.cluster import ADMIN, Cluster, cluster  # noqa: E402
from fldev.mlpapp import APP_NAME, MODELS, write_app  # noqa: E402
from fldev.netproxy import FaultyLink  # noqa: E402
from fldev.poll import wait_until  # noqa: E402

DIGITS_APP = "digits_fedavg"
SETTINGS = {"heart_beat_timeout": 60, "heartbeat_interval": 5, "retry_window": 120}


@dataclass
class Load:
    """What else the machine did while a part ran."""

    start_loadavg: str
    end_loadavg: str = ""
    other_cores: float = 0.0


@contextlib.contextmanager
def measured_load(daemons: list[int]) -> Iterator[Load]:
    """The load average before and after, and the CPU the machine spent beyond this process,
    the ``daemons`` (filled in as they start) and their children (training children that
    ended count in their daemon's reaped-children time)."""
    load = Load(_loadavg())
    started = (time.monotonic(), machine_busy_seconds(), time.process_time())
    try:
        yield load
    finally:
        window = time.monotonic() - started[0]
        busy = machine_busy_seconds() - started[1]
        ours = sum(_family_cpu(pid) for pid in daemons) + time.process_time() - started[2]
        load.end_loadavg = _loadavg()
        load.other_cores = max(0.0, busy - ours) / window


def _family_cpu(pid: int) -> float:
    """CPU seconds of a live process, its reaped children and its live descendants."""
    total = 0.0
    for index, member in enumerate([pid, *descendants(pid)]):
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{member}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # utime, stime; the first process also cutime, cstime (children it reaped).
            total += sum(int(f) for f in fields[11 : 15 if index == 0 else 13]) / CLK_TCK
    return total


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _training_rows(c: Cluster, run_number: int) -> list[dict[str, Any]]:
    return [r for r in c.metrics(run_number) if not r.get("final")]


def _start_run(c: Cluster, run_number: int, app: str) -> None:
    c.admin(
        f"set_run_number {run_number}",
        f"upload_folder {app}",
        f"deploy {app} server",
        f"deploy {app} client",
        "start server",
        "start client",
        timeout=60,
    )


def _wait_finished(c: Cluster, run_number: int, timeout: float) -> None:
    def stopped() -> bool:
        state = c.run_state()
        return bool(
            state["run_number"] == run_number and state["server_status"] == "training stopped"
        )

    wait_until(stopped, timeout, f"run {run_number} to finish", interval=0.5)


# ---------------------------------------------------------------------------------- link


@dataclass
class LinkRun:
    """What one run over the slow links measured (rounds 1..N-1)."""

    compression: str
    durations: list[float]
    wire_mb: float
    raw_mb: float
    link_mb: float
    server_cpu: float
    daemons_cpu: float
    workers_cpu: float


def link_part(
    root: Path,
    compressions: Sequence[str],
    clients: int,
    rounds: int,
    repeats: int,
    mbit: float,
    model_name: str,
) -> tuple[list[LinkRun], Load]:
    """Train the large model over rate-limited links once per compression (and repeat)."""
    names = tuple(f"flclient{i}" for i in range(1, clients + 1))
    model = MODELS[model_name]
    results: list[LinkRun] = []
    pids: list[int] = []
    with (
        contextlib.ExitStack() as links,  # closed last: after the daemons are gone
        cluster(root, clients=names, settings=SETTINGS) as c,
        measured_load(pids) as load,
    ):
        write_app(c.root / ADMIN / "transfer", model, clients=clients, num_rounds=rounds)
        pids.append(c.server().pid)
        faulty = [links.enter_context(FaultyLink()) for _ in names]
        for link in faulty:
            link.limit(mbit * 1e6 / 8)
        pids += [c.client(n, proxy=link.url).pid for n, link in zip(names, faulty, strict=True)]
        run_number = 0
        limit = 120 + rounds * 8 * model.megabytes / (mbit / 8)
        for repeat in range(repeats):
            for compression in compressions:
                run_number += 1
                print(f"[link] run {run_number}: {compression}, repeat {repeat + 1}", flush=True)
                c.configure("config_fed_server.json", app=APP_NAME, wire_compression=compression)
                _start_run(c, run_number, APP_NAME)
                results.append(_link_run(c, run_number, compression, rounds, limit, faulty))
    return results, load


def _link_run(
    c: Cluster,
    run_number: int,
    compression: str,
    rounds: int,
    limit: float,
    links: Sequence[FaultyLink],
) -> LinkRun:
    """Measure a started run's rounds 1..N-1 and wait until it ended."""

    def rows() -> list[dict[str, Any]]:
        return _training_rows(c, run_number)

    wait_until(rows, limit, "round 0", interval=0.05)
    tallies = _tallies(c)
    before = _counters(links, tallies)

    def measured_all() -> bool:
        _counters(links, tallies)
        return len(rows()) >= rounds

    wait_until(measured_all, limit, f"{rounds} rounds", interval=0.05)
    after = _counters(links, tallies)
    _wait_finished(c, run_number, limit)
    measured = [r for r in rows() if r["round"] >= 1]
    assert all(r["clients"] == list(c.clients) for r in measured), "a site missed a round"
    n = len(measured)
    delta = [(a - b) / n for a, b in zip(after, before, strict=True)]

    def mb(*keys: str) -> float:
        return sum(int(r["wire"][key]) for r in measured for key in keys) / n / 1e6

    return LinkRun(
        compression=compression,
        durations=[float(r["duration_s"]) for r in measured],
        wire_mb=mb("down_bytes", "up_bytes"),
        raw_mb=mb("down_raw_bytes", "up_raw_bytes"),
        link_mb=delta[0] / 1e6,
        server_cpu=delta[1],
        daemons_cpu=delta[2],
        workers_cpu=delta[3],
    )


def _tallies(c: Cluster) -> tuple[CpuTally, CpuTally, CpuTally]:
    """The server, the client daemons, the training children."""
    return (
        CpuTally([d.pid for d in c.daemons if d.name == "server"]),
        CpuTally([d.pid for d in c.daemons if d.name != "server"]),
        CpuTally(c.worker_pids()),
    )


def _counters(
    links: Sequence[FaultyLink], tallies: tuple[CpuTally, CpuTally, CpuTally]
) -> tuple[float, float, float, float]:
    """Bytes the links carried, CPU seconds of the server, the client daemons, the children."""
    server, sites, workers = (tally.sample() for tally in tallies)
    return (
        float(sum(link.upstream_bytes + link.downstream_bytes for link in links)),
        server,
        sites,
        workers,
    )


def link_table(results: list[LinkRun], compressions: Sequence[str]) -> str:
    """One column per compression; the rounds of all repeats pooled."""
    columns: list[list[str]] = []
    medians: list[float] = []
    for compression in compressions:
        runs = [r for r in results if r.compression == compression]
        durations = [d for r in runs for d in r.durations]
        medians.append(median(durations))

        def typical(field: str, runs: list[LinkRun] = runs) -> float:
            return median([float(getattr(r, field)) for r in runs])

        columns.append(
            [
                str(len(durations)),
                f"{medians[-1]:.2f}",
                f"{min(durations):.2f} / {max(durations):.2f}",
                f"{typical('wire_mb'):.1f} / {typical('raw_mb'):.1f}",
                f"{typical('link_mb'):.1f}",
                f"{typical('server_cpu'):.2f}",
                f"{typical('daemons_cpu'):.2f}",
                f"{typical('workers_cpu'):.2f}",
                f"{medians[-1] / medians[0]:.2f}x",
            ]
        )
    labels = [
        "rounds measured",
        "s/round median",
        "s/round min / max",
        "model MB/round on the wire / raw",
        "MB/round the links carried",
        "CPU s/round: server",
        "CPU s/round: client daemons",
        "CPU s/round: training children",
        f"round time vs {compressions[0]}",
    ]
    rows = [[label, *(column[i] for column in columns)] for i, label in enumerate(labels)]
    return table(["", *compressions], rows)


# ------------------------------------------------------------------------------ accuracy


@dataclass
class DigitsRun:
    """The validation accuracy of one digits run: per round and of the final model."""

    compression: str
    seed: int
    rounds: list[float]
    final: float


def accuracy_part(
    root: Path, compressions: Sequence[str], seeds: Sequence[int], rounds: int
) -> tuple[list[DigitsRun], Load]:
    """Train digits once per seed and compression in one cluster."""
    results: list[DigitsRun] = []
    pids: list[int] = []
    with cluster(root, settings=SETTINGS) as c, measured_load(pids) as load:
        pids.append(c.server().pid)
        pids += [c.client(name).pid for name in c.clients]
        run_number = 0
        for seed in seeds:
            for compression in compressions:
                run_number += 1
                print(f"[accuracy] run {run_number}: {compression}, seed {seed}", flush=True)
                c.configure("config_train.json", seed=seed)
                c.configure(
                    "config_fed_server.json",
                    num_rounds=rounds,
                    min_num_clients=len(c.clients),
                    max_num_clients=len(c.clients),
                    wait_after_min_clients=60,
                    wire_compression=compression,
                )
                _start_run(c, run_number, DIGITS_APP)
                _wait_finished(c, run_number, 120 + 60 * rounds)
                rows = c.metrics(run_number)
                assert rows and rows[-1].get("final"), f"run {run_number} has no final validation"
                results.append(
                    DigitsRun(
                        compression,
                        seed,
                        [float(r["metrics"]["val_accuracy"]) for r in rows[:-1]],
                        float(rows[-1]["metrics"]["val_accuracy"]),
                    )
                )
    return results, load


def accuracy_table(results: list[DigitsRun], compressions: Sequence[str]) -> str:
    """Final accuracy per compression and its paired difference to the first compression."""
    base = {r.seed: r for r in results if r.compression == compressions[0]}
    rows: list[list[object]] = [["runs (seeds)"], ["final val_accuracy median"], ["min / max"]]
    rows += [[f"final vs {compressions[0]}, median"], [f"largest |diff| to {compressions[0]}"]]
    for compression in compressions:
        runs = [r for r in results if r.compression == compression]
        finals = [r.final for r in runs]
        diffs = [r.final - base[r.seed].final for r in runs]
        worst = max(
            abs(a - b)
            for r in runs
            for a, b in zip(
                [*r.rounds, r.final], [*base[r.seed].rounds, base[r.seed].final], strict=True
            )
        )
        rows[0].append(len(runs))
        rows[1].append(f"{median(finals):.4f}")
        rows[2].append(f"{min(finals):.4f} / {max(finals):.4f}")
        rows[3].append(f"{median(diffs):+.4f}")
        rows[4].append(f"{worst:.4f}")
    return table(["", *compressions], rows)


# ---------------------------------------------------------------------------------- main


def _compressions(text: str) -> list[str]:
    words = [w.strip() for w in text.split(",") if w.strip()]
    for word in words:
        WireCompression(word)  # ValueError names a compression that does not exist
    return words


def main(argv: list[str] | None = None) -> int:
    """Run the parts and print their tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("link", "accuracy", "both"), default="both")
    parser.add_argument(
        "--compressions",
        type=_compressions,
        default=[c.value for c in WireCompression],
        help="comma-separated, the first is the baseline (default: none,bf16,fp16,int8)",
    )
    parser.add_argument("--mbit", type=float, default=50.0, help="link rate each way (50)")
    parser.add_argument("--model", choices=sorted(MODELS), default="large")
    parser.add_argument("--clients", type=int, default=2, help="sites on the slow links (2)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per link run (4)")
    parser.add_argument("--repeats", type=int, default=1, help="link runs per compression (1)")
    parser.add_argument("--seeds", default="0,1,2", help="digits seeds (0,1,2)")
    parser.add_argument("--digits-rounds", type=int, default=5, help="digits rounds (5)")
    parser.add_argument("--workdir", type=Path, help="keep the workspaces here (default: temp)")
    args = parser.parse_args(argv)
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (round 0 is not measured)")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"machine: {os.cpu_count()} cores, load average {_loadavg()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="flbench-compression-") as tmp:
        work = args.workdir or Path(tmp)
        if args.part in ("link", "both"):
            model = MODELS[args.model]
            print(
                f"[link] {args.model} model ({model.megabytes:.0f} MB), {args.clients} sites, "
                f"{args.mbit:g} Mbit/s each way per site, {args.rounds} rounds",
                flush=True,
            )
            runs, load = link_part(
                work / "link",
                args.compressions,
                args.clients,
                args.rounds,
                args.repeats,
                args.mbit,
                args.model,
            )
            print()
            print(link_table(runs, args.compressions))
            _print_load(load)
        if args.part in ("accuracy", "both"):
            digits, load = accuracy_part(
                work / "accuracy", args.compressions, seeds, args.digits_rounds
            )
            print()
            print(f"digits, 2 sites, {args.digits_rounds} rounds, seeds {args.seeds}")
            print(accuracy_table(digits, args.compressions))
            _print_load(load)
    return 0


def _print_load(load: Load) -> None:
    print(
        f"load average {load.start_loadavg} at the start, {load.end_loadavg} at the end; "
        f"other load on the machine {load.other_cores:.2f} cores"
    )


if __name__ == "__main__":
    sys.exit(main())
