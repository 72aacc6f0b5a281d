"""What months of operation leave in the server's state database, table by table, without daemons.

The server writes its state database through ``StateDB`` as this script does:
each round folds every site's update (a fold record) and commits the round's
record; each run ends with the sites' reports on the final model, its
result and the run's end (``end_run``), or, every ``--abort-every``-th run,
with an abort in the middle of a round; each run's sites validate each
other's models (cross-site cells); sites log in and are removed once per
run (registrations and their states come and go); an admin runs
``--commands`` commands per round (the audit). Runs are kept, and the last
one is started over at the end (``start server fresh``). The script prints
each table's rows and bytes (SQLite's ``dbstat``), the file and its WAL,
and what one round, site and command cost. A round's cost is a fixed part (its
record) plus a part per site (its fold record and its update's line in the
record): two runs of the script with different ``--sites`` give both.

    .venv/bin/python bench/state_growth.py                      # 20 runs of 500 rounds, 16 sites
    .venv/bin/python bench/state_growth.py --runs 4 --rounds 2000 --sites 32
    .venv/bin/python bench/state_growth.py --runs 2 --rounds 500 --sites 2   # the fixed part shows
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
from pathlib import Path

from flcore import status as st
from flcore.federation import GLOBAL_OWNER
from flserverd.aggregator import UpdateStats
from flserverd.statedb import ClientRecord, RoundSummary, RunRecord, StateDB, WireTally

METRICS = {
    "val_accuracy": 0.9916608675481327,
    "train_accuracy": 1.0,
    "train_loss": 1.2609471106170164e-08,
    "val_loss": 0.0253205406927367,
}
"""What a site of the examples reports with each update, as real training gives it: most
values need all 17 digits of a float in JSON (values such as 0.8125 would need 6, and
understate every record that holds metrics)."""
STARTED = 1796693174.528953
"""A round's timestamp, with the microseconds the server's clock gives."""


def one_run(db: StateDB, number: int, rounds: int, sites: list[str], aborted: bool) -> None:
    """A run of ``rounds`` rounds (an abort halfway through the last one when ``aborted``)."""
    run = RunRecord(number, st.STARTED, "training", "app", 0, rounds, 0, metric="val_accuracy")
    db.start_over(run)
    keys = [f"{number}-{site}".encode().ljust(32, b".") for site in sites]
    for key, site in zip(keys, sites, strict=True):
        db.save_client(ClientRecord(key, site, site, "org", 1.0e9))
        db.save_client_state(key, {"status": st.STARTED, "run_number": number}, {"host": site})
    last = rounds // 2 if aborted else rounds
    for round_number in range(last):
        for site in sites:
            db.record_folded(number, round_number, site, 1000, METRICS)
        run.next_round = round_number + 1
        summary = RoundSummary(
            number,
            round_number,
            STARTED + round_number,
            sites,
            METRICS,
            1.6305,
            1000 * len(sites),
            updates={site: UpdateStats(1.5, 0.75) for site in sites},
            wire=WireTally("none", 1 << 20, 1 << 20, 1 << 20, 1 << 20),
        )
        db.complete_round(run, summary)
    if aborted:
        for site in sites[: len(sites) // 2]:  # the open round's updates so far
            db.record_folded(number, last, site, 1000, METRICS)
        run.status, run.reason = st.STOPPED, "aborted by admin@lead.org"
    else:
        run.phase = "final validation"
        for site in sites:
            db.record_folded(number, rounds, site, 1000, METRICS)
        final = RoundSummary(number, rounds, 2.0e9, sites, METRICS, final=True)
        db.complete_round(run, final)
        run.status, run.reason = st.STOPPED, st.FINISHED
    db.end_run(run)
    for owner in [GLOBAL_OWNER, *sites]:
        for validator in sites:
            db.save_validation(number, owner, validator, METRICS, "")
    for key in keys:
        db.delete_client(key)


def table_bytes(path: Path) -> dict[str, tuple[int, int]]:
    """(rows, bytes with their indexes) of each table, read as an operator may while the server
    runs: read-only."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sizes: dict[str, int] = {}
        for table, size in connection.execute(
            "SELECT COALESCE(m.tbl_name, d.name), d.pgsize"
            " FROM dbstat d LEFT JOIN sqlite_master m ON m.name = d.name"
        ):
            sizes[str(table)] = sizes.get(str(table), 0) + int(size)
        tables = connection.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        counted = {}
        for (table,) in tables:
            query = f"SELECT COUNT(*) FROM {table}"  # noqa: S608 (a name sqlite_master gave)
            counted[str(table)] = (int(connection.execute(query).fetchone()[0]), sizes[table])
        return counted
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="(20)")
    parser.add_argument("--rounds", type=int, default=500, help="rounds per run (500)")
    parser.add_argument("--sites", type=int, default=16, help="(16)")
    parser.add_argument("--commands", type=int, default=1, help="admin commands per round (1)")
    parser.add_argument("--abort-every", type=int, default=4, help="every Nth run is aborted (4)")
    args = parser.parse_args()
    sites = [f"hospital-{i:03d}" for i in range(args.sites)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "flserverd.sqlite3"
        db = StateDB(path)
        for number in range(1, args.runs + 1):
            aborted = args.abort_every > 0 and number % args.abort_every == 0
            one_run(db, number, args.rounds, sites, aborted)
            line = "check_status client"
            db.audit_entries([(1.0e9, "admin@lead.org", line, True)] * args.commands * args.rounds)
        wal = Path(f"{path}-wal")
        print(
            f"{args.runs} runs of {args.rounds} rounds, {args.sites} sites,"
            f" {args.commands} command(s) a round"
        )
        print(f"file {path.stat().st_size / 1e6:.1f} MB, WAL {wal.stat().st_size / 1e6:.1f} MB")
        db.start_over(RunRecord(args.runs, st.STARTED, "training", "app", 0, args.rounds, 0))
        db.set_meta("run_number", str(args.runs))  # a write after it: the WAL is reset
        print(
            f"after start server fresh of run {args.runs}: file {path.stat().st_size / 1e6:.1f} MB,"
            f" WAL {wal.stat().st_size / 1e6:.1f} MB"
        )
        db.close()
        sizes = table_bytes(path)
        print(f"{'table':<15} {'rows':>10} {'MB':>8}")
        for table, (rows, size) in sorted(sizes.items(), key=lambda item: -item[1][1]):
            print(f"{table:<15} {rows:>10,} {size / 1e6:>8.2f}")
        per_row = {table: size / max(rows, 1) for table, (rows, size) in sizes.items()}
        print(
            f"per round and site: folded {per_row['folded']:.0f} B,"
            f" round_metrics {per_row['round_metrics'] / args.sites:.0f} B;"
            f" per command: audit {per_row['audit']:.0f} B"
        )
        rounds = sizes["round_metrics"][0]
        history = sizes["folded"][1] + sizes["round_metrics"][1]
        print(
            f"per round with {args.sites} sites (folded and round_metrics):"
            f" {history / max(rounds, 1):.0f} B"
        )


if __name__ == "__main__":
    main()
