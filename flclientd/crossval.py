"""A site's part in cross-site validation.

After training (or a first abort) a participating site shares its best
local model, then validates what the server offers: the other participants'
models and the best global model. Offers also say which models are still
expected; when none are, the site is done. A model that is expected but
does not come within ``cross_validation_timeout`` is given up, and the site
tells the server why its cell stays empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from flclientd.connection import Connection
from flclientd.runcontext import RunContext
from flclientd.runner import TrainingProcess, WorkerFailed
from flclientd.uplink import Uplink
from flcore.diskfault import disk_fault
from flcore.federation import GLOBAL_OWNER, SubmitOutcome, TaskOffer, UploadKind, Verdict
from flcore.feed import MAX_TEXT, clip
from flcore.logs import one_line
from flcore.metrics import format_metrics

log = logging.getLogger(__name__)

CROSSVAL_MODEL = "crossval_model.safetensors"
"""Where the model being cross-validated is downloaded, in the run's work folder."""

POSTPONED_RETRY_S = 5.0
"""How long a report or model the server postponed waits before it is sent again."""


class CrossSiteValidation:
    """Follows the server's cross-validation offers for one run."""

    def __init__(self, uplink: Uplink, conn: Connection) -> None:
        self.uplink = uplink
        self.conn = conn
        self.offer: TaskOffer | None = None
        self._changed = asyncio.Event()

    def offered(self, task: TaskOffer) -> None:
        """The server's latest offer (it lists everything still to do)."""
        self.offer = task
        self._changed.set()

    async def run(self, run: RunContext, worker: TrainingProcess) -> None:
        """Share the best local model, then validate the others' as they come."""
        await self._share(run, worker)
        done: set[str] = set()
        timeout = run.config.cross_validation_timeout
        while True:
            offer = self.offer
            todo = [o for o in offer.owners if o not in done] if offer else []
            if offer is not None and not todo and not offer.pending:
                return
            if not todo:
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout)
                except TimeoutError:
                    await self._give_up(run, offer.pending if offer else (GLOBAL_OWNER,), timeout)
                    return
                continue
            for owner in todo:
                await self._validate(run, worker, owner)
                done.add(owner)

    async def _share(self, run: RunContext, worker: TrainingProcess) -> None:
        best = worker.best_local_model
        if best is None:
            await self._nothing_to_share(run, "this site never finished a round")
            return
        try:
            verdict = await self._until_kept(
                "upload of the local model",
                lambda: self.conn.submit_model(
                    run.run_number, -1, best, worker.info.train_samples, {}, UploadKind.BEST_LOCAL
                ),
            )
        except (OSError, ValueError) as exc:  # TensorFileError too: the file is damaged
            what = disk_fault(exc) or getattr(exc, "strerror", None) or str(exc)
            await self._nothing_to_share(run, f"{best.name} cannot be read: {what}")
            return
        if verdict.outcome is SubmitOutcome.REJECTED:
            log.warning(
                "best local model not shared: the server rejected it: %s",
                one_line(verdict.message),
            )
            return
        log.info("best local model shared for cross-site validation: %s", one_line(verdict.message))

    async def _nothing_to_share(self, run: RunContext, why: str) -> None:
        """Tell the others' matrix why this site's column stays empty, instead of failing
        the site: it still validates the others' models."""
        reason = f"no local model to share: {why}"
        log.warning("%s", one_line(reason))
        await self._report(run, self.uplink.instance, {}, 0, reason)

    async def _validate(self, run: RunContext, worker: TrainingProcess, owner: str) -> None:
        # One model at a time, under a name of ours: the owner's name comes from the server.
        model = run.work_dir / CROSSVAL_MODEL
        error, metrics, samples = "", {}, 0
        try:
            await self.uplink.retrying(
                f"download of {owner}'s model",
                lambda: self.conn.get_model(run.run_number, -1, model, owner=owner),
            )
            result = await worker.validate(model=model)
            metrics, samples = result.metrics, result.num_samples
        except grpc.aio.AioRpcError as exc:
            error = f"cannot fetch the model: {exc.details()}"
        except WorkerFailed as exc:
            error = f"validation failed: {exc}"
        except ValueError as exc:  # TensorFileError too: what came is not a usable model
            error = f"the model the server sent is unusable: {exc}"
        except OSError as exc:  # a full disk: this cell fails, the others may still fit
            error = f"cannot store the model: {disk_fault(exc, model) or exc.strerror or exc}"
        finally:
            model.unlink(missing_ok=True)
        said = error or format_metrics(metrics)
        log.info("cross-site validation of %s's model: %s", one_line(owner), one_line(said))
        await self._report(run, owner, metrics, samples, error)

    async def _give_up(self, run: RunContext, pending: tuple[str, ...], timeout: float) -> None:
        reason = f"gave up after waiting {timeout:g}s for this model"
        log.warning(
            "cross-site validation: gave up waiting for the models of %s after %gs",
            one_line(", ".join(pending)),
            timeout,
        )
        for owner in pending:
            await self._report(run, owner, {}, 0, reason)

    async def _report(
        self, run: RunContext, owner: str, metrics: dict[str, float], samples: int, error: str
    ) -> None:
        """Send one cell of the matrix (metrics, or why there are none); again while the
        server postpones it (its disk is full: it kept nothing). The reason is cut to what
        the server keeps of an error: it may quote the server (a model's tensor name, a
        call's details), and a report past the message limit failed the whole phase."""
        error = clip(error, MAX_TEXT)
        await self._until_kept(
            f"cross-site report on {one_line(owner)}'s model",
            lambda: self.conn.submit_metrics(
                run.run_number, -1, metrics, samples, error=error, owner=owner
            ),
        )

    async def _until_kept(self, what: str, send: Callable[[], Awaitable[Verdict]]) -> Verdict:
        """Send until the server gives a verdict other than POSTPONED: a server whose disk
        is full kept nothing and asks for it again; taking that for "sent" left a cell of
        the matrix empty for good."""
        while True:
            verdict = await self.uplink.retrying(what, send)
            if verdict.outcome is not SubmitOutcome.POSTPONED:
                return verdict
            log.warning(
                "%s postponed by the server (%s); sending it again in %gs",
                what,
                one_line(verdict.message),
                POSTPONED_RETRY_S,
            )
            await asyncio.sleep(POSTPONED_RETRY_S)
