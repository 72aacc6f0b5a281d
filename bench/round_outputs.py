"""What completing a round costs the server's disk: the commit on the loop, the files off it.

When a round is aggregated, one SQLite transaction moves the round pointer
(on the event loop: the connection belongs to the loop's thread), then the
files that follow from it are written in one worker-thread step: the
``global_model`` and ``best_global_model`` hard links with their folder
fsyncs, the line of ``metrics.jsonl`` (fsynced) and the TensorBoard event.
This script runs those two steps with flstack's own code, ``--rounds``
times on a tiny model in a temporary folder (``--dir`` chooses the disk),
and prints the median, p90 and maximum of each. No daemon is started.

    .venv/bin/python bench/round_outputs.py
    .venv/bin/python bench/round_outputs.py --rounds 500 --dir /var/lib/flstack
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import safetensors.numpy  # noqa: E402

from bench.common import median, percentile, table  # noqa: E402
from flcore import status as st  # noqa: E402
from flcore.appconfig import ServerAppConfig  # noqa: E402
from flcore.federation import TaskOffer  # noqa: E402
from flcore.tensorfile import TensorFile  # noqa: E402
from flserverd.runstore import RunStore  # noqa: E402
from flserverd.statedb import RoundSummary, RunRecord, StateDB  # noqa: E402
from flserverd.tensorboard import ScalarWriter  # noqa: E402
from flserverd.training import PHASE_TRAINING, Training  # noqa: E402

RUN = 1


class Quiet:
    """A TrainingListener that listens to nothing."""

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        """Nobody to offer to."""

    def run_changed(self) -> None:
        """Nobody watches."""

    def run_ended(self, run: RunRecord) -> None:
        """Nobody to tell."""


def write_model(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file({"w": np.zeros(1000, dtype=np.float32)}, path)


def measure(root: Path, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of each commit and of each file step."""
    store = RunStore(root)
    store.create_run(RUN)
    db = StateDB(root / "state.sqlite3")
    config = ServerAppConfig(num_rounds=rounds + 1)
    record = RunRecord(RUN, st.STARTED, PHASE_TRAINING, "bench", 0, config.num_rounds, 0)
    write_model(store.round_model(RUN, 0))
    manifest = TensorFile(store.round_model(RUN, 0)).manifest
    training = Training(record, config, manifest, store, db, Quiet())
    tensorboard = ScalarWriter(store.tensorboard_dir(RUN) / "bench")
    commits, files = [], []
    try:
        for number in range(rounds):
            write_model(store.round_model(RUN, number + 1))
            record.next_round = record.best_round = number + 1
            record.best_value = 0.5
            metrics = {"val_accuracy": 0.5, "val_loss": 1.0}
            summary = RoundSummary(RUN, number, time.time(), ["a", "b"], metrics, 1.0, 20)
            started = time.perf_counter()
            db.complete_round(record, summary)
            commits.append(time.perf_counter() - started)
            started = time.perf_counter()
            training.publish_models()
            store.append_metrics(summary)
            tensorboard.add(number, metrics)
            files.append(time.perf_counter() - started)
    finally:
        tensorboard.close()
        db.close()
    return commits, files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100, help="rounds to complete")
    parser.add_argument("--dir", type=Path, default=None, help="where the run folder goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        commits, files = measure(Path(folder), args.rounds)
    rows = [
        [name, f"{median(xs) * 1e3:.2f}", f"{percentile(xs, 90) * 1e3:.2f}", f"{max(xs) * 1e3:.2f}"]
        for name, xs in (("SQLite commit (loop)", commits), ("file step (thread)", files))
    ]
    print(f"{args.rounds} rounds")
    print(table(["step", "median ms", "p90 ms", "max ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
