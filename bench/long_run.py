"""What a long run's records cost the server's event loop to read, without daemons.

The state database keeps one record per completed round, with every site's
update statistics in it; the server reads them on its loop (SQLite is used
from the loop's thread only). A run of thousands of rounds and dozens of
sites makes those reads long: this script fills a fresh database with
``--rounds`` records of ``--sites`` sites each and times, median over
``--repeats``, what each reader takes:

* every round (what ``show_run`` read before it read by page, and what the
  recovery of a round's output files still reads after a disk fault);
* the last ``HISTORY_SHOWN`` rounds (the feed's history, at start and at
  every run-state event);
* one page of ``show_run``: the count, then the page's records, first and last.

    .venv/bin/python bench/long_run.py                         # 10,000 rounds of 32 sites
    .venv/bin/python bench/long_run.py --rounds 2000 --sites 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flcore import status as st
from flserverd.aggregator import UpdateStats
from flserverd.listings import PAGE
from flserverd.statedb import RoundSummary, RunRecord, StateDB
from flserverd.training import HISTORY_SHOWN


def fill(db: StateDB, rounds: int, sites: int) -> None:
    """Complete ``rounds`` rounds of run 1, each with an update of every site."""
    names = [f"site-{i:03d}" for i in range(sites)]
    run = RunRecord(1, st.STARTED, "training", "app", 0, rounds, 0)
    db.save_run(run)
    for number in range(rounds):
        run.next_round = number + 1
        summary = RoundSummary(
            1,
            number,
            1.0e9 + number,
            names,
            {"val_accuracy": 0.5, "train_loss": 0.3},
            1.2,
            32 * sites,
            updates={name: UpdateStats(1.0, 0.5) for name in names},
        )
        db.complete_round(run, summary)


def median_ms(read: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``read``, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        read()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10_000, help="(10,000)")
    parser.add_argument("--sites", type=int, default=32, help="(32)")
    parser.add_argument("--repeats", type=int, default=5, help="(5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = StateDB(Path(folder) / "state.db")
        started = time.perf_counter()
        fill(db, args.rounds, args.sites)
        print(
            f"{args.rounds:,} rounds of {args.sites} sites written in "
            f"{time.perf_counter() - started:.1f} s"
        )
        last_page = max(args.rounds - PAGE, 0)
        readers: list[tuple[str, Callable[[], object]]] = [
            ("every round", lambda: db.round_records(1)),
            (f"the last {HISTORY_SHOWN} (the feed)", lambda: db.round_records(1, HISTORY_SHOWN)),
            (
                f"show_run, first page of {PAGE}",
                lambda: (db.round_count(1), db.round_records_from(1, 0, PAGE)),
            ),
            (
                f"show_run, last page of {PAGE}",
                lambda: (db.round_count(1), db.round_records_from(1, last_page, PAGE)),
            ),
        ]
        width = max(len(name) for name, _ in readers)
        print(f"{'read':<{width}}  ms (median of {args.repeats})")
        for name, read in readers:
            print(f"{name:<{width}}  {median_ms(read, args.repeats):.2f}")
        db.close()


if __name__ == "__main__":
    main()
