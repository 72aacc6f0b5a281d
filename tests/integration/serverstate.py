"""What a test cluster's server recorded in its state database, read beside the running
server (SQLite in WAL mode lets a reader in while the server writes)."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from fldev.cluster import Cluster


@contextlib.contextmanager
def state_db(cluster: Cluster) -> Iterator[sqlite3.Connection]:
    """The server's state database, closed again when the block ends."""
    db = sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3")
    try:
        with db:
            yield db
    finally:
        db.close()


def counted(cluster: Cluster, run_number: int = 1, final: bool = False) -> list[tuple[int, str]]:
    """(round, instance) of every update the server counted, in order; with ``final``, of
    every report on the final model (recorded as round num_rounds) instead."""
    with state_db(cluster) as db:
        rows = db.execute(
            "SELECT round, instance FROM folded JOIN runs USING (run_number)"
            " WHERE run_number=? AND (round >= num_rounds) = ? ORDER BY round, instance",
            (run_number, final),
        ).fetchall()
    return [(int(r), str(i)) for r, i in rows]
