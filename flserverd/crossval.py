"""Cross-site validation: every participating site validates every other one's model.

Sites opt in with ``"cross_validate": true`` in their client config; a site
that does not never shares its local model and is never sent anyone's.
When a participant stops training (the run finished, or an admin aborted
it) it submits its best local model; the server keeps it in
``run_N/cross_site/sites/<instance>.safetensors`` and offers each participant
the models it has not validated yet: the other participants' and, once
training is over, the best global model (owner ``global``, the run's
``best_global_model.safetensors``). Site models and the server's live in
separate folders and are asked for by separate kinds on the wire, so no site
name, ``global`` included, can ever stand for the global model's file. Offers also list
the models still expected, so a site knows whether to keep waiting; a model
that will never come (its owner failed, was dropped or gave up) is taken
off that list with the reason. Results are stored in the state database and
in ``run_N/cross_site_validation.json``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from flcore.atomic import atomic_write_bytes, fsync_dir
from flcore.crossvalmatrix import MatrixCell, ValidationMatrix
from flcore.diskfault import disk_fault
from flcore.federation import GLOBAL_OWNER, SubmitOutcome, TaskKind, TaskOffer, Verdict
from flcore.logs import one_line
from flcore.metrics import format_metrics
from flcore.tensorfile import TensorFile, TensorFileError
from flserverd.runstore import RunStore
from flserverd.statedb import StateDB
from flserverd.training import Refusal

log = logging.getLogger(__name__)


SITES_DIR = "sites"
"""Subfolder of ``run_N/cross_site/`` that holds the sites' models, and nothing else."""


def _move_flat_layout(sites: Path) -> None:
    """Move site models that an older server kept in ``cross_site/`` itself into ``sites/``.

    Run folders written before the two namespaces existed hold
    ``cross_site/<instance>.safetensors``; only sites' models were ever
    written there (the global model was always the run's own file), so each
    one is moved as it is, and a resumed or inspected run finds it.
    """
    flat = sites.parent
    for model in sorted(flat.glob("*.safetensors")):
        sites.mkdir(parents=True, exist_ok=True)
        os.replace(model, sites / model.name)
        log.info("moved %s into %s (the sites' models have their own folder now)", model, sites)


class CrossValidationListener(Protocol):
    """Where offers go (the server's client links)."""

    def offer(self, instances: Iterable[str], offer: TaskOffer) -> None:
        """Send an offer to these client instances."""


class CrossValidation:
    """The cross-site validation of one run."""

    def __init__(
        self, run_number: int, store: RunStore, db: StateDB, listener: CrossValidationListener
    ) -> None:
        self.run_number = run_number
        self._store = store
        self._db = db
        self._listener = listener
        self.folder = store.run_dir(run_number) / "cross_site" / SITES_DIR
        _move_flat_layout(self.folder)
        self.declared: set[str] = set()
        self.validating: set[str] = set()
        self.withdrawn: dict[str, str] = {}
        self.training_over = False
        self.submitted: set[str] = {p.stem for p in self.folder.glob("*.safetensors") if _whole(p)}
        self.declared |= self.submitted
        self.results: dict[tuple[str, str], tuple[dict[str, float], str]] = {
            (owner, validator): (metrics, error)
            for owner, validator, metrics, error in db.validation_results(run_number)
        }
        if self.results and store.run_dir(run_number).is_dir():
            self._write_matrix()  # a disk fault may have left it behind the database

    def site_model_for(self, instance: str, owner: str) -> Path:
        """The site ``owner``'s model for ``instance`` to validate; Refusal when it may not
        have it."""
        if not self.may_fetch(instance, owner):
            raise Refusal(
                f"the model of {owner!r} is not available to {instance} for cross-site validation"
            )
        return self.site_model(owner)

    def global_model_for(self, instance: str) -> Path:
        """The best global model for ``instance`` to validate; Refusal before training is over
        or for a site that does not take part."""
        if instance not in self.declared or not self.training_over:
            raise Refusal(
                f"the global model is not available to {instance} for cross-site validation yet"
            )
        best = self._store.best_model(self.run_number)
        return best if best.exists() else self._store.global_model(self.run_number)

    def check_model(self, instance: str) -> Verdict | None:
        """The verdict on a participant's best local model before its bytes arrive."""
        if instance not in self.declared:
            return Verdict(
                SubmitOutcome.REJECTED, f"{instance} does not take part in cross-site validation"
            )
        if instance in self.submitted:
            return Verdict(SubmitOutcome.DUPLICATE, "the local model was already received")
        return None

    def record_report(
        self, validator: str, owner: str, metrics: dict[str, float], error: str
    ) -> Verdict:
        """A participant's validation of ``owner``'s model (or why there is none)."""
        if validator not in self.declared:
            return Verdict(
                SubmitOutcome.REJECTED, f"{validator} does not take part in cross-site validation"
            )
        if (owner, validator) in self.results:
            # A site reports a cell once (the offers leave out what it reported); one sent
            # again, or changed, is neither written nor logged again.
            return Verdict(
                SubmitOutcome.DUPLICATE, f"{validator}'s validation of this model was recorded"
            )
        try:
            self.record(owner, validator, metrics, error)
        except ValueError as exc:
            return Verdict(SubmitOutcome.REJECTED, str(exc))
        except (OSError, sqlite3.Error) as exc:
            fault = disk_fault(exc, self._store.workspace)
            if fault is None:
                raise
            # Nothing was kept: the site sends the cell again, as it does an update.
            return Verdict(SubmitOutcome.POSTPONED, f"server {fault}; send it again later")
        return Verdict(SubmitOutcome.ACCEPTED, "recorded")

    def site_model(self, owner: str) -> Path:
        """Where a site's best local model is kept: in the sites' folder, whatever its name."""
        return self.folder / f"{owner}.safetensors"

    def declare(self, instance: str) -> None:
        """A site says it takes part (its client config opts in)."""
        if instance not in self.declared and instance not in self.withdrawn:
            self.declared.add(instance)
            log.info("run %d: %s takes part in cross-site validation", self.run_number, instance)

    def start_validating(self, instance: str) -> None:
        """A participant finished training and is ready to validate others' models (or came
        back on a new control stream, and is told again what it may validate)."""
        self.declare(instance)
        self.validating.add(instance)
        self._offer([instance])

    def end_training(self) -> None:
        """The run's training is over: the best global model may now be validated."""
        if not self.training_over:
            self.training_over = True
            self._offer(self.validating)

    def accept_model(self, instance: str, spool: TensorFile) -> None:
        """Keep a participant's best local model (its content made durable by the caller) and
        offer it to the others. It is accepted once: after a power loss it must still be
        there, whole, or the owner's resend would be a duplicate of a file that is not. The
        run's folder must be there: one deleted meanwhile is not made again (the caller
        refuses the model; this raises FileNotFoundError)."""
        self.folder.parent.mkdir(exist_ok=True)
        self.folder.mkdir(exist_ok=True)
        os.replace(spool.path, self.site_model(instance))
        fsync_dir(self.folder)
        self.declare(instance)
        self.submitted.add(instance)
        log.info(
            "run %d: local model of %s received for cross-site validation",
            self.run_number,
            instance,
        )
        self._offer(self.validating)

    def withdraw(self, instance: str, reason: str) -> None:
        """A participant's model will never come (failed, dropped, stopped)."""
        if instance in self.declared and instance not in self.submitted:
            self.withdrawn.setdefault(instance, reason)
            self.declared.discard(instance)
            self._offer(self.validating - {instance})
        self.validating.discard(instance)

    def record(self, owner: str, validator: str, metrics: dict[str, float], error: str) -> None:
        """Store one cell of the matrix (an error when validation failed or was given up).

        Raises ValueError for an owner that is not a participant.
        """
        participants = self.declared | self.submitted | set(self.withdrawn)
        if owner != GLOBAL_OWNER and owner not in participants:
            raise ValueError(f"{owner!r} has no model in the cross-site validation of this run")
        if owner == validator and error:
            self.withdraw(owner, error)
            return
        self._db.save_validation(self.run_number, owner, validator, metrics, error)
        self.results[(owner, validator)] = (metrics, error)
        self._write_matrix()
        log.log(
            logging.WARNING if error else logging.INFO,
            "run %d: %s validated the model of %s: %s",
            self.run_number,
            validator,
            owner,
            one_line(error) if error else format_metrics(metrics),
        )

    def _write_matrix(self) -> None:
        """Write ``cross_site_validation.json`` from the results held. The database has the
        cells: a disk fault here loses none, and the file is whole again with the next
        cell or the next start of the server."""
        try:
            atomic_write_bytes(
                self._store.run_dir(self.run_number) / "cross_site_validation.json",
                json.dumps(self.matrix().as_json(), indent=2, sort_keys=True).encode(),
            )
        except OSError as exc:
            fault = disk_fault(exc, self._store.workspace)
            if fault is None:
                raise
            log.warning(
                "run %d: cross_site_validation.json not updated (server %s); the results are "
                "in the state database and the file is written again with the next one",
                self.run_number,
                fault,
            )

    def may_fetch(self, instance: str, owner: str) -> bool:
        """Sites' models for validation go to the other participating sites only, once
        they exist."""
        return instance in self.declared and owner in self.submitted and owner != instance

    def offer_for(self, instance: str) -> TaskOffer:
        """What ``instance`` may validate now and what it should still wait for."""
        done = {owner for owner, validator in self.results if validator == instance}
        ready = [o for o in sorted(self.submitted) if o != instance and o not in done]
        pending = sorted(self.declared - self.submitted - {instance})
        if self.training_over:
            if GLOBAL_OWNER not in done:
                ready.insert(0, GLOBAL_OWNER)
        else:
            pending.insert(0, GLOBAL_OWNER)
        return TaskOffer(self.run_number, -1, TaskKind.CROSS_VALIDATE, tuple(ready), tuple(pending))

    def _offer(self, instances: Iterable[str]) -> None:
        for instance in sorted(instances):
            self._listener.offer([instance], self.offer_for(instance))

    def matrix(
        self, names: Iterable[str] = (), bystanders: dict[str, str] | None = None
    ) -> ValidationMatrix:
        """The results: rows are model owners, columns validating sites.

        ``names`` restricts rows and columns to those instances (the global
        model's row is always shown); ``bystanders`` are sites of the run that
        do not take part, shown with empty cells and the reason.
        """
        wanted = set(names)
        notes = {**(bystanders or {}), **self.withdrawn}
        sites = sorted(
            self.declared
            | set(notes)
            | {v for _, v in self.results}
            | {o for o, _ in self.results} - {GLOBAL_OWNER}
        )
        rows = [GLOBAL_OWNER, *sites]
        columns = list(sites)
        if wanted:
            rows = [r for r in rows if r == GLOBAL_OWNER or r in wanted]
            columns = [c for c in columns if c in wanted]
        cells: dict[str, dict[str, MatrixCell]] = {}
        for row in rows:
            for column in columns:
                found = self.results.get((row, column))
                if found is not None:
                    metrics, error = found
                    cells.setdefault(row, {})[column] = MatrixCell(metrics, error)
        notes = {site: reason for site, reason in notes.items() if site in rows}
        return ValidationMatrix(self.run_number, rows, columns, cells, notes)


def _whole(model: Path) -> bool:
    """Whether a site's model kept from before a restart can be offered; one a power loss
    left cut short is deleted, so that its owner is asked for it again."""
    try:
        TensorFile(model)  # reads the header, and checks the size against it
    except (TensorFileError, OSError) as exc:
        log.warning("dropping %s, kept before the restart: %s", model, exc)
        model.unlink(missing_ok=True)
        return False
    return True
