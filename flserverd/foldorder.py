"""A round's accepted updates, folded in one canonical order so that the average does not
depend on the order in which they arrived.

Floating-point addition is not associative: with three or more updates,
folding them in arrival order (which differs from run to run) changes the
last bits of the average, and a seeded run could never be repeated bit for
bit, nor a run resumed after a crash end where the same run left alone
would. So updates are folded in the order of their senders' instance
names. An update whose turn has not come yet waits in its file (the spool
file it was received into, kept in the round's folder); it is folded as
soon as no client that may still send sorts before it, and at the latest
when the round closes. Folding stays incremental in the common case, and
the memory is still one accumulator plus one slab.

An update that arrives after one sorting after it was folded (a client that
joined the round late, or resent after a server restart) breaks the order;
the sum is then rebuilt from the kept files when the round closes. Every
accepted update's file is therefore kept until the round is aggregated
(:meth:`flserverd.runstore.RunStore.keep_update`): up to ``max_num_clients``
models on disk, as during concurrent uploads.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from flcore.tensorfile import Manifest, TensorFile
from flserverd.aggregator import FedAvg


class CanonicalFold:
    """The updates of one round and their FedAvg, folded in instance-name order."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self._kept: dict[str, tuple[Path, float]] = {}
        self._folded: list[str] = []
        self._fedavg = FedAvg(manifest)

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, instance: str, update: Path, weight: float) -> None:
        """Keep an accepted update (the file now belongs to this round) until its turn."""
        if weight <= 0:
            raise ValueError("an update's weight (sample count) must be positive")
        self._kept[instance] = (update, weight)

    def fold_due(self, awaited: Collection[str]) -> int:
        """Fold the kept updates whose turn has come: no awaited client sorts before them.

        Blocking (reads the files), so callers run it in a worker thread;
        returns how many were folded.
        """
        first_awaited = min(awaited, default=None)
        done = 0
        for instance in sorted(self._kept.keys() - set(self._folded)):
            if self._folded and instance < self._folded[-1]:
                break  # out of order: finish() rebuilds the sum
            if first_awaited is not None and first_awaited < instance:
                break
            self._fold(instance)
            done += 1
        return done

    def finish(self) -> FedAvg:
        """Fold what is left in order (rebuilding the sum when the order was broken) and
        return the round's FedAvg; blocking."""
        order = sorted(self._kept)
        if self._folded != order[: len(self._folded)]:
            self._fedavg = FedAvg(self.manifest)
            self._folded = []
        for instance in order[len(self._folded) :]:
            self._fold(instance)
        return self._fedavg

    def _fold(self, instance: str) -> None:
        path, weight = self._kept[instance]
        self._fedavg.fold(TensorFile(path), weight)
        self._folded.append(instance)
