"""What a client may download (models, apps), and what becomes of what it uploads: verdicts,
without gRPC.

The federation servicer converts and calls; every decision about a model or
a metrics report is made here, from the server's state. An upload is judged
twice: before its bytes arrive (wrong run, late, duplicate, a manifest that
does not match the global model), and once it is complete and every chunk
was checked (then it is folded into its round, or kept for cross-site
validation). Uploads stream into a spool file chunk by chunk, so a model of
any size costs one chunk of memory; and only a few transfers move at once
in each direction (:mod:`flserverd.transferslots`), so the number of clients
does not multiply that either. An upload that passed the first judgement
waits for its turn before its client sends a chunk, and is judged again
when the turn comes (its round may have closed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from flcore import faultpoints
from flcore.atomic import fsync_file
from flcore.compression import WireChunk, WireCompression
from flcore.compression import receive as receive_chunk
from flcore.diskfault import disk_fault
from flcore.federation import (
    MetricsKind,
    MetricsReport,
    ModelKind,
    ModelRequest,
    SubmitHeader,
    SubmitOutcome,
    UploadKind,
    Verdict,
)
from flcore.logs import one_line
from flcore.metrics import metric_name_problem
from flcore.progress import ProgressWatch, TransferStalled
from flcore.schema import shown
from flcore.tensorfile import Manifest, SpoolWriter, TensorFile, TensorFileError
from flserverd.server import FLServer
from flserverd.statedb import WireTally
from flserverd.throttle import (
    REPORT_BURST,
    REPORTS_PER_SECOND,
    UPLOAD_BURST,
    UPLOADS_PER_SECOND,
    Rarely,
    Throttle,
)
from flserverd.training import Refusal, Training, largest_value, refused_weight
from flserverd.transfer import check_app_name, client_app_dir
from flserverd.transferslots import (
    DOWNLOADS_SENDING,
    TRANSFERS_MOVING,
    UPLOADS_RECEIVING,
    TransferSlots,
)

log = logging.getLogger(__name__)

MAX_METRICS = 64

Call = Literal["upload", "report"]
"""A kind of call a client instance makes a bounded number of (flserverd.throttle)."""

REFUSED_REST_S = 120.0
"""How long the server reads and drops the rest of an upload refused mid-way, at most: a
sender on a 50 Mbit/s link sends some 700 MB meanwhile; one with more to send is cut off and
sees a transport error instead of the reason (which the server's log has)."""


@dataclass(frozen=True)
class Download:
    """A model a client may download now: its file, how its chunks travel, and the tally of
    the training round its bytes count in (None: not a round's model)."""

    path: Path
    compression: WireCompression = WireCompression.NONE
    tally: WireTally | None = None


def check_metrics(metrics: dict[str, float]) -> str | None:
    """Metrics become JSON and charts: bounded in number, named, and finite."""
    if len(metrics) > MAX_METRICS:
        return f"too many metrics ({len(metrics)} > {MAX_METRICS})"
    for key, value in metrics.items():
        problem = metric_name_problem(key)
        if problem:
            return f"metric name {shown(key)} {problem}"
        if not math.isfinite(value):
            return f"metric {key!r} is not a finite number"
    return None


def _what(kind: UploadKind) -> str:
    return "local model" if kind is UploadKind.BEST_LOCAL else "update"


class ExchangeWatcher(Protocol):
    """Who learns what became of each upload and report, and how many bytes moved: the
    metrics endpoint and experiment tracking. Called on the event loop; must not block."""

    def upload_judged(self, instance: str, header: SubmitHeader | None, verdict: Verdict) -> None:
        """The verdict on an upload (``header`` None: it could not be read)."""

    def report_judged(self, instance: str, report: MetricsReport, verdict: Verdict) -> None:
        """The verdict on a metrics report."""

    def moved(self, outward: bool, what: str, size: int) -> None:
        """``size`` bytes of a model (``what``: an upload kind, ``model`` or ``app``) moved."""

    def stalled(self, kind: UploadKind) -> None:
        """An upload was given up because nothing moved for a while (the client sends it
        again)."""


class ModelExchange:
    """The server's side of models and metrics moving between it and its clients."""

    def __init__(self, server: FLServer) -> None:
        self.server = server
        self.watchers: list[ExchangeWatcher] = []
        self.downloads = TransferSlots(DOWNLOADS_SENDING, TRANSFERS_MOVING)
        self.uploads = TransferSlots(UPLOADS_RECEIVING, TRANSFERS_MOVING)
        self._calls: dict[Call, Throttle] = {
            "upload": Throttle(UPLOAD_BURST, UPLOADS_PER_SECOND),
            "report": Throttle(REPORT_BURST, REPORTS_PER_SECOND),
        }
        self._said = Rarely()

    def sent(self, what: str, size: int) -> None:
        """``size`` bytes of a model or an app went to a client."""
        for watcher in self.watchers:
            watcher.moved(True, what, size)

    def sent_chunk(self, download: Download, chunk: WireChunk, raw: int) -> None:
        """A chunk of a model went to a client; it stood for ``raw`` bytes of the model."""
        self.sent("model", len(chunk.data))
        if download.tally is not None:
            download.tally.add(True, len(chunk.data), raw)

    def model_for(self, instance: str, request: ModelRequest, kit: str = "") -> Download:
        """The model a client may download now; Refusal says why it may not. A round's model
        travels as the app's ``wire_compression`` says; cross-site models as stored, so that
        sites validate the very models the matrix names."""
        if request.kind is ModelKind.GLOBAL:
            training = self.server.training_for(request.run_number)
            if training is None:
                raise Refusal(f"run {request.run_number} is not training")
            path = training.admit(instance, request.round, kit)
            return Download(path, training.compression, training.tally)
        if not self.server.known_run(request.run_number):
            raise Refusal(f"run {request.run_number} does not exist on this server")
        crossval = self.server.crossval_for(request.run_number)
        if request.kind is ModelKind.BEST_GLOBAL:
            return Download(crossval.global_model_for(instance))
        return Download(crossval.site_model_for(instance, request.owner))

    def app_folder(self, run_number: int, app: str) -> Path:
        """The copy of an app deployed to clients of a run; TransferError for a name that
        cannot be an app's, Refusal when it was not deployed."""
        folder = client_app_dir(self.server.store, run_number, check_app_name(app))
        if not folder.is_dir():
            raise Refusal(f"app {app!r} is not deployed to clients of run {run_number}")
        return folder

    def refuse(self, instance: str, reason: str, what: Call = "upload") -> Verdict:
        """The verdict on an upload whose header (or a metrics report, ``what``) could not
        be read."""
        verdict = self._flooding(instance, what)
        if verdict is None:
            verdict = Verdict(SubmitOutcome.REJECTED, reason)
            self._rarely(
                instance,
                f"{what} unreadable",
                f"{what} from {instance} rejected: {one_line(reason)}",
            )
        for watcher in self.watchers:
            watcher.upload_judged(instance, None, verdict)
        return verdict

    def _settled(self, instance: str, what: Call, verdict: Verdict) -> None:
        """Only refusals count towards the bound on a site's calls: accepted and postponed
        ones come as fast as rounds go, which is many a second for a small model."""
        if verdict.outcome in (SubmitOutcome.ACCEPTED, SubmitOutcome.POSTPONED):
            self._calls[what].give_back(instance)

    def _flooding(self, instance: str, what: Call) -> Verdict | None:
        """Count one call of ``what`` (an upload or a report) of ``instance``: the verdict
        on it when the instance makes more than an honest site ever does (None: go on)."""
        calls = self._calls[what]
        if not calls.take(instance):
            return None
        self._rarely(
            instance,
            f"{what} flood",
            f"{instance} has more {what}s refused than the server takes: the rest are refused "
            "unread",
            logging.WARNING,
        )
        return Verdict(
            SubmitOutcome.REJECTED,
            f"{instance} had more {what}s refused than the server takes ({calls.burst:g} at once, "
            f"then {calls.per_second:g} a second); this one is refused",
        )

    def _rarely(self, instance: str, kind: str, text: str, level: int = logging.INFO) -> None:
        """Log what became of an upload or a report, once a minute at most for each kind
        and site: one sending the same wrong call in a loop had written a line for each."""
        said = self._said.due(instance, kind)
        if said is not None:
            log.log(level, "%s%s", text, said)

    async def receive(
        self,
        instance: str,
        header: SubmitHeader,
        chunks: AsyncIterator[WireChunk],
        go: Callable[[], Awaitable[None]],
        *,
        site: str,
    ) -> Verdict:
        """Judge an upload, receive it when it may be used, and hand it over once.

        An upload that may be used waits for one of the upload slots (and for the
        earlier uploads of its ``site``, the certificate's name); ``go`` then tells its
        sender to send the chunks. A verdict given before that (a refusal,
        or a round that closed while the upload waited) is the sender's answer
        without a chunk sent. An update goes to the round controller that judged its
        header, even if the run was restarted meanwhile: that one then finds it late.
        Raises TransferStalled when the sender stopped sending mid-upload.
        """
        training = self.server.training
        verdict = self._flooding(instance, "upload") or self.check_upload(
            instance, header, training, site
        )
        if verdict is None:
            async with self.uploads.slot(site) as slot:
                verdict = self.check_upload(instance, header, training, site)
                if verdict is None:
                    await go()
                    paced = slot.paced_items(chunks)
                    try:
                        verdict = await self._spool_and_accept(
                            instance, header, training, paced, site
                        )
                        await self._rest_dropped(instance, header, paced)
                    except TransferStalled as exc:
                        log.warning("%s", exc)
                        for watcher in self.watchers:
                            watcher.stalled(header.kind)
                        raise
        self._settled(instance, "upload", verdict)
        if verdict.outcome is not SubmitOutcome.ACCEPTED:
            self._rarely(
                instance,
                f"upload {verdict.outcome.value}",
                f"{_what(header.kind)} from {instance} for round {header.round} "
                f"{verdict.outcome.value}: {one_line(verdict.message)}",
            )
        for watcher in self.watchers:
            watcher.upload_judged(instance, header, verdict)
        return verdict

    async def _rest_dropped(
        self, instance: str, header: SubmitHeader, chunks: AsyncIterator[WireChunk]
    ) -> None:
        """Read and drop what the sender still sends after a verdict given mid-upload (a
        chunk refused), up to the size its header declared.

        gRPC's asyncio client loses the server's answer when one of its writes
        fails because the server had already ended the call (grpc/grpc#36066):
        the sender then sees "Internal error from Core" instead of the reason its
        update was refused. So the call ends once the sender is done; one that
        sends more than it declared, or more chunks than the model can come in, is
        cut off there, one that sends a chunk that cannot even be read (an encoding
        no sender uses) there, one still sending after :data:`REFUSED_REST_S` there,
        and one that stops sending is given up after the stall limit (TransferStalled,
        as for any upload).
        """
        limit = header.manifest.total_bytes
        most = header.manifest.most_chunks
        watch = ProgressWatch(f"the rest of a refused {_what(header.kind)} from {instance}")

        async def drop() -> None:
            dropped = count = 0
            try:
                async for chunk in chunks:
                    watch.moved()
                    dropped += len(chunk.data)
                    count += 1
                    if dropped > limit or count > most:
                        return
            except TensorFileError:
                return  # the verdict stands; nothing after such a chunk is read

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REFUSED_REST_S):
                await watch.run(drop())

    def check_upload(
        self, instance: str, header: SubmitHeader, training: Training | None, site: str = ""
    ) -> Verdict | None:
        """The verdict on an upload when it is known before its bytes arrive (None: receive it);
        ``training`` is the run the server holds, ``site`` the sender's kit."""
        problem = check_metrics(header.metrics)
        if problem:
            return Verdict(SubmitOutcome.REJECTED, problem)
        if header.kind is UploadKind.BEST_LOCAL:
            if not self.server.known_run(header.run_number):
                return Verdict(
                    SubmitOutcome.REJECTED,
                    f"run {header.run_number} does not exist on this server",
                )
            verdict = self.server.crossval_for(header.run_number).check_model(instance)
        else:
            if training is None:
                return Verdict(SubmitOutcome.LATE, "the server is not training; update discarded")
            verdict = training.check_submission(
                instance, header.run_number, header.round, site
            ) or refused_weight(header.num_samples)
        if verdict is not None:
            return verdict
        try:
            expected = self.expected_manifest(header.run_number)
        except TensorFileError as exc:
            return Verdict(SubmitOutcome.REJECTED, str(exc))
        differences = expected.differences(header.manifest)
        if differences:
            return Verdict(
                SubmitOutcome.REJECTED,
                f"{_what(header.kind)} does not match the global model: " + "; ".join(differences),
            )
        return None

    def expected_manifest(self, run_number: int) -> Manifest:
        """Names, dtypes and shapes an upload must have: those of the run's global model."""
        training = self.server.training_for(run_number)
        if training is not None:
            return training.manifest
        model = self.server.store.global_model(run_number)
        if not model.exists():
            raise TensorFileError(f"run {run_number} has no global model to compare with")
        return TensorFile(model).manifest

    @staticmethod
    def _spool_writer(path: Path, header: SubmitHeader) -> SpoolWriter:
        """Where an upload's chunks go, checked as they come: an update's values within what
        its weight allows (:data:`flserverd.training.MAX_WEIGHTED`)."""
        if header.kind is not UploadKind.UPDATE:
            return SpoolWriter(path, header.manifest)
        return SpoolWriter(
            path,
            header.manifest,
            largest=largest_value(header.num_samples),
            largest_why=(
                f" ({header.num_samples:,} samples times a value must stay below 1e30, or the "
                "round's sum could overflow)"
            ),
        )

    async def _spool_and_accept(
        self,
        instance: str,
        header: SubmitHeader,
        training: Training | None,
        chunks: AsyncIterator[WireChunk],
        site: str,
    ) -> Verdict:
        spool_path = (
            self.server.store.spool_dir(header.run_number)
            / f"{instance}-{uuid.uuid4().hex}.safetensors"
        )
        spool: SpoolWriter | None = None
        watch = ProgressWatch(f"{_what(header.kind)} from {instance}")
        tally = None
        if training is not None and header.kind is UploadKind.UPDATE:
            tally = training.tally

        async def receive(spool: SpoolWriter) -> TensorFile:
            # Decoding, disk writes and the NaN checks run in a thread: the loop keeps
            # serving commands and heartbeats while large models stream in. The spool holds
            # the decoded tensors, so everything after it sees an ordinary model.
            received = 0
            async for chunk in chunks:
                watch.moved()
                raw = await asyncio.to_thread(receive_chunk, spool, chunk)
                for watcher in self.watchers:
                    watcher.moved(False, header.kind.value, len(chunk.data))
                if tally is not None:
                    tally.add(False, len(chunk.data), raw)
                received += 1
                if received == 1:
                    faultpoints.reached(faultpoints.SERVER_UPLOAD)
            return await asyncio.to_thread(spool.finish)

        try:
            spool = self._spool_writer(spool_path, header)
            model = await watch.run(receive(spool))
            revoked = self.server.revoked_sender(instance)
            if revoked is not None:
                return Verdict(SubmitOutcome.REJECTED, f"{_what(header.kind)} discarded: {revoked}")
            if header.kind is UploadKind.BEST_LOCAL:
                await asyncio.to_thread(fsync_file, model.path)
                deleted = self._deleted_meanwhile(header)
                if deleted is not None:
                    return deleted
                self.server.crossval_for(header.run_number).accept_model(instance, model)
                return Verdict(
                    SubmitOutcome.ACCEPTED, "local model accepted for cross-site validation"
                )
            assert training is not None  # check_upload refuses updates when nothing trains
            return await training.accept_update(
                instance, header.round, model, header.num_samples, header.metrics, site
            )
        except TensorFileError as exc:
            return Verdict(SubmitOutcome.REJECTED, str(exc))
        except OSError as exc:
            deleted = self._deleted_meanwhile(header)
            if deleted is not None:
                return deleted  # its spool went with the run's folder
            fault = disk_fault(exc)
            if fault is None:
                raise
            if header.kind is UploadKind.UPDATE and training is not None:
                training.storage_failed(exc)
                return training.postponed()
            return Verdict(SubmitOutcome.POSTPONED, f"server {fault}; send it again later")
        finally:
            # An accepted update's file was moved into its round (RunStore.keep_update).
            if spool is not None:
                await asyncio.to_thread(spool.discard)

    def _deleted_meanwhile(self, header: SubmitHeader) -> Verdict | None:
        """The verdict on a local model whose run was deleted (``delete_run``) while it was
        received: it is not kept, and the run's folder is not made again for it."""
        if header.kind is not UploadKind.BEST_LOCAL or self.server.known_run(header.run_number):
            return None
        return Verdict(
            SubmitOutcome.REJECTED,
            f"run {header.run_number} was deleted from this server while the local model was "
            "received; the model is not kept",
        )

    def accept_metrics(self, instance: str, report: MetricsReport) -> Verdict:
        """A validation report: of the final global model, or one cross-site cell."""
        verdict = self._flooding(instance, "report") or self._judge_report(instance, report)
        self._settled(instance, "report", verdict)
        for watcher in self.watchers:
            watcher.report_judged(instance, report, verdict)
        return verdict

    def _judge_report(self, instance: str, report: MetricsReport) -> Verdict:
        problem = check_metrics(report.metrics)
        if problem:
            return Verdict(SubmitOutcome.REJECTED, problem)
        if report.kind is MetricsKind.CROSS_VALIDATION:
            if not self.server.known_run(report.run_number):
                return Verdict(
                    SubmitOutcome.REJECTED,
                    f"run {report.run_number} does not exist on this server",
                )
            crossval = self.server.crossval_for(report.run_number)
            return crossval.record_report(instance, report.owner, report.metrics, report.error)
        training = self.server.training_for(report.run_number)
        if training is None:
            return Verdict(SubmitOutcome.LATE, "run is not training")
        return training.accept_final_metrics(
            instance, report.round, report.metrics, report.num_samples
        )
