"""Provisioning a workspace: the engine behind ``flprovision`` and the console's wizard.

Runs are incremental. The first run makes the project CA; later runs reuse it
and issue kits only to participants that have none, so kits already handed
out keep working. What a certificate or every kit embeds (the project name,
the server's address and ports, a participant's org or role) cannot change
quietly: the run refuses unless ``force`` re-issues every kit under the same CA.

A re-issue (``reissue``) gives one participant a new kit (new key, serial
and password) and revokes its old certificates in the same locked step.
Participants marked ``csr: true`` make their own key: a run never writes a
kit for them; :mod:`provision.csr` signs their request, and ``force`` then
certifies the public key they sent again, unless its certificate was revoked
(the key may be what was stolen) or the records say ``sign`` would refuse it
now (:mod:`provision.keyrecords`): such a site sends a new request, as does
one that had a zip kit before it made its own key (that kit is revoked).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flcore.identity import KIND_CLIENT, KIND_SERVER
from flcore.kitsig import PublicKey
from provision.errors import ProvisionError
from provision.keyrecords import KeyRecords, held_public_key
from provision.kits import (
    KitZip,
    Participant,
    kit_files,
    new_password,
    participants,
    write_kit_zips,
)
from provision.pki import (
    CertifiedKey,
    ca_summary,
    cert_facts,
    certify,
    create_ca,
    fingerprint,
    generate_key,
    public_pem,
)
from provision.project import Project
from provision.revocation import (
    CRL_DAYS,
    REISSUE_REASON,
    CrlWritten,
    revoke_certificates,
    revoke_issued,
)
from provision.workspace import Entry, IssuedRecord, Workspace

logger = logging.getLogger(__name__)

_EMBEDDED = ("org", "common_name", "role")
"""Participant details a certificate carries: changing one needs a new kit."""


@dataclass(frozen=True)
class WrittenKit:
    """A kit this run wrote; the password exists nowhere else, so show it once."""

    name: str
    kind: str
    zip_path: Path
    password: str | None = field(repr=False)  # a crash report prints reprs
    """None for a kit without a key (its owner made its own): nothing to protect."""
    email: str | None = None

    def password_line(self) -> str:
        """The line to hand to the lead: ``===> password: … for <kit>.zip [to <email>]``.

        A kit without a key has no password; its line says so.
        """
        if self.password is None:
            line = f"===> no password: {self.zip_path.name} holds no key; send it as it is"
        else:
            line = f"===> password: {self.password} for {self.zip_path.name}"
        return f"{line} to {self.email}" if self.email else line


@dataclass(frozen=True)
class ProvisionResult:
    """What one run did."""

    written: tuple[WrittenKit, ...]
    skipped: tuple[str, ...]
    """Kit names left alone because an earlier run issued them."""
    removed: tuple[str, ...]
    """Kits issued earlier to participants no longer in project.yml; they stay valid."""
    ca_fingerprint: str
    """The project CA's SHA-256 (hex): lead IT tells the sites, who compare it with their kit's."""
    warnings: tuple[str, ...] = ()
    """What the lead should know about the run (removed participants, changed settings)."""
    awaiting: tuple[str, ...] = ()
    """Participants with ``csr: true`` whose certificate request has not been signed yet."""
    crl: CrlWritten | None = None
    """The revocation a re-issue or --force did, and the CRL it wrote."""


def holder_key(who: Participant) -> str:
    """How issued.json keys a participant: ``<kind>:<name>``."""
    return f"{who.kind}:{who.name}"


def _check_unchanged(project: Project, record: IssuedRecord, workspace: Path) -> None:
    if not record.participants:
        return  # a first run stopped before any kit was issued: nothing embeds anything yet
    changes = []
    if record.project != project.name:
        changes.append(f"name {record.project!r} -> {project.name!r}")
    old_server = record.server
    for key, new in asdict(project.server).items():
        if old_server.get(key) != new:
            changes.append(f"server.{key} {old_server.get(key)!r} -> {new!r}")
    for who in participants(project):
        old = record.participants.get(holder_key(who))
        if old is None or who.kind == KIND_SERVER:  # the server section was compared above
            continue
        changes.extend(
            f"{who.kind} {who.name!r} {key} {old.get(key)!r} -> {getattr(who, key)!r}"
            for key in _EMBEDDED
            if old.get(key) != getattr(who, key)
        )
    if changes:
        raise ProvisionError(
            f"{workspace}: project.yml changed what issued kits embed ({'; '.join(changes)}); "
            "re-issue every kit under the same CA with --force, or undo the change"
        )


def _check_server_timing(
    project: Project, record: IssuedRecord, workspace: Path, issuing: list[Participant]
) -> None:
    """New client kits must beat more often than the server kit already out there times out.

    parse_settings checks the settings against themselves only; when the
    server keeps its kit, what counts is the timeout that kit was issued with.
    """
    holders = record.participants
    server = participants(project)[0]
    new_clients = any(who.kind == KIND_CLIENT for who in issuing)
    timeout = (record.server_settings or {}).get("heart_beat_timeout")
    interval = project.settings.heartbeat_interval
    if (
        holder_key(server) in holders
        and new_clients
        and timeout is not None
        and interval >= timeout
    ):
        raise ProvisionError(
            f"{workspace}: new client kits would send a heartbeat every {interval:g}s, but the "
            f"server kit already issued drops a client after {timeout:g}s without one; lower "
            "settings.heartbeat_interval, or re-issue every kit with --force"
        )


def provision_workspace(
    project: Project,
    workspace: Path,
    force: bool = False,
    now: datetime | None = None,
    reissue: str | None = None,
    crl_days: int = CRL_DAYS,
) -> ProvisionResult:
    """Issue kits for ``project`` into ``workspace`` (see :mod:`provision.workspace`).

    Args:
        project: a checked project (see :func:`provision.projectfile.load_project`).
        workspace: the provisioning workspace; created on the first run.
        force: re-issue every kit, even to participants that have one, and revoke the
            certificates they held (all but the server's); crl.pem is written with
            ``crl_days`` until its next update.
        now: the run time (tests pass a fixed one).
        reissue: give only this participant (kit name) a new kit and revoke its old
            certificates; crl.pem is written with ``crl_days`` until its next update.
        crl_days: days until the next update of the CRL a re-issue or --force writes.

    Raises:
        ProvisionError: the workspace's CA or records are unusable, or (unless
            ``force``) project.yml changed something issued kits embed, or new
            client kits would beat too rarely for the server kit already issued,
            or ``reissue`` names someone who cannot be re-issued a kit.
    """
    now = now or datetime.now(UTC)
    if force and reissue is not None:
        raise ProvisionError("--force re-issues every kit and --reissue one: choose one of them")
    ws = Workspace(workspace)
    ws.prepare()
    with ws.lock():
        record, ca = ws.open_state()
        if reissue is not None:
            if record is None or ca is None:
                raise ProvisionError(
                    f"{workspace}: nothing was issued here yet, so there is nothing to re-issue"
                )
            return _reissue(project, ws, ca, record, reissue, now, crl_days)
        if record is not None and not force:
            newcomers = [
                w for w in participants(project) if holder_key(w) not in record.participants
            ]
            check_run(project, record, ws.root, newcomers)
        record, ca = start(project, ws, record, ca, now)
        return _issue_kits(project, ws, ca, record, force, now, crl_days)


def check_run(
    project: Project, record: IssuedRecord, workspace: Path, issuing: list[Participant]
) -> None:
    """Refuse a run that would change what issued kits embed, or issue kits that beat too rarely."""
    _check_unchanged(project, record, workspace)
    _check_server_timing(project, record, workspace, issuing)


def start(
    project: Project,
    ws: Workspace,
    record: IssuedRecord | None,
    ca: CertifiedKey | None,
    now: datetime,
) -> tuple[IssuedRecord, CertifiedKey]:
    """The workspace's record and CA, making the CA on a project's first run (lock held)."""
    if ca is not None and record is not None:
        return record, ca
    ca = create_ca(
        project.name,
        project.server.org,
        project.settings.key_type,
        project.settings.cert_validity_days,
        now,
    )
    ws.save_ca(ca)
    # Recorded with the CA, before any kit: a first run cut short (Ctrl-C, a full
    # disk) then leaves a workspace the next run continues, issuing every kit.
    record = _record(project, {}, None)
    ws.save_issued(record)
    logger.info("created the project CA in %s", ws.state_dir)
    return record, ca


def _record(
    project: Project, holders: dict[str, Entry], server_settings: dict[str, Any] | None
) -> IssuedRecord:
    """What issued.json holds: the project as issued, and who holds a kit."""
    return IssuedRecord(
        project.name, asdict(project.server), asdict(project.settings), server_settings, holders
    )


def write_kit(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    who: Participant,
    now: datetime,
    public_key: PublicKey | None = None,
) -> tuple[Entry, WrittenKit]:
    """Certify ``who`` and write its kit into packages/; return its record entry and the kit."""
    entry, kit, zip_ = certify_kit(project, ws, ca, who, now, public_key)
    write_kit_zips([zip_])
    _log_written(kit, entry)
    return entry, kit


def certify_kit(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    who: Participant,
    now: datetime,
    public_key: PublicKey | None = None,
) -> tuple[Entry, WrittenKit, KitZip]:
    """Certify ``who`` and build its kit; its record entry, the kit, and the zip to write.

    Without ``public_key`` a new key goes into an encrypted zip with a new
    password; with one (the key its owner made) the kit is a plain zip
    without a key, and the entry keeps the public key so ``--force`` can
    certify it again. The zip is written by the caller (many at once, see
    :func:`provision.kits.write_kit_zips`), before the entry is recorded.
    """
    settings = project.settings
    key = generate_key(settings.key_type) if public_key is None else None
    certified = key.public_key() if key is not None else public_key
    assert certified is not None
    cert = certify(ca, who.subject, certified, settings.cert_validity_days, now)
    zip_path = ws.packages_dir / f"{who.name}.zip"
    password = new_password() if key is not None else None
    zip_ = KitZip(zip_path, kit_files(project, who, ca, cert, key), password, now)
    entry = {
        **asdict(who),
        **cert_facts(cert),
        "kit": str(zip_path.relative_to(ws.root)),
        "run_time": now.isoformat(),
    }
    if key is None:
        entry["public_key"] = public_pem(certified)
    return entry, WrittenKit(who.name, who.kind, zip_path, password, who.email), zip_


def _log_written(kit: WrittenKit, entry: Entry) -> None:
    logger.info("wrote %s (certificate serial %s)", kit.zip_path, entry["serial"])


def finish_run(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    holders: dict[str, Entry],
    server_settings: dict[str, Any] | None,
    entries: list[Entry],
) -> None:
    """Record who holds a kit now (participants still in project.yml) and audit the new ones."""
    current = {holder_key(who) for who in participants(project)}
    kept = {key: holders[key] for key in holders if key in current}
    ws.save_issued(_record(project, kept, server_settings))
    ws.append_audit(project.name, ca_summary(ca), entries)


def _issue_kits(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    record: IssuedRecord,
    force: bool,
    now: datetime,
    crl_days: int,
) -> ProvisionResult:
    issued = dict(record.participants)
    everyone = participants(project)
    current = {holder_key(who) for who in everyone}
    removed = tuple(entry["name"] for key, entry in issued.items() if key not in current)
    warnings = [
        f"{name} left project.yml; its kit stays valid until it expires "
        f"(flprovision revoke {name} -w {ws.root} ends it now)"
        for name in removed
    ]
    settings = project.settings
    if issued and not force and record.settings != asdict(settings):
        warnings.append(
            "settings changed since earlier kits were issued; those kits keep the old values "
            "(sites may override some in local/, or --force re-issues every kit)"
        )
    server_settings = record.server_settings
    written: list[WrittenKit] = []
    skipped: list[str] = []
    awaiting: list[str] = []
    entries: list[Entry] = []
    zips: list[KitZip] = []
    crl = None
    records = None
    renewed: list[str] = []
    if force:
        # A new certificate for someone who held one supersedes the old: left valid, an old
        # kit would keep what the new one changed (a super admin made a member stayed super).
        # So for a participant that had a zip kit and now makes its own key, whose
        # request is still to come.
        superseded = [
            who.name for who in everyone if who.kind != KIND_SERVER and holder_key(who) in issued
        ]
        if superseded:
            crl = revoke_issued(ws, ca, superseded, REISSUE_REASON, now, crl_days)
        records = KeyRecords(ws)
    for who in everyone:
        held = issued.get(holder_key(who))
        if held is not None and not force:
            held["email"] = who.email
            skipped.append(who.name)
            if held.get("revoked"):
                warnings.append(
                    f"{who.name}'s kit is revoked; flprovision --reissue {who.name} gives it a new "
                    "one, or remove it from project.yml"
                )
            continue
        revoked = held is not None and bool(held.get("revoked"))
        public_key = None if held is None else held_public_key(held)
        refusal = None
        if who.csr and records is not None and public_key is not None and not revoked:
            refusal = records.refusal(who, public_key, again=True)
        if who.csr and (revoked or public_key is None or refusal is not None):
            # Whatever it held is revoked by now. Kept, its entry would tie the site's next
            # request to what project.yml said before (an old role), which sign refuses.
            issued.pop(holder_key(who), None)
            if revoked:
                warnings.append(
                    f"{who.name}'s certificate is revoked, so the key it holds is not certified "
                    f"again: it sends a new request (flprovision sign REQUEST.csr --reissue)"
                )
            elif refusal is not None:
                warnings.append(
                    f"{who.name}'s certificate is not renewed: {refusal}. Its site makes a new "
                    "key and request (flprovision request), which you sign (flprovision sign "
                    "REQUEST.csr)"
                )
            else:
                awaiting.append(who.name)
            continue
        if public_key is not None:
            renewed.append(who.name)
        entry, kit, zip_ = certify_kit(project, ws, ca, who, now, public_key)
        issued[holder_key(who)] = entry
        entries.append(entry)
        written.append(kit)
        zips.append(zip_)
        if who.kind == KIND_SERVER:
            server_settings = asdict(settings)
    if records is not None and renewed:
        plural = "s" if len(renewed) > 1 else ""
        uncompared = records.uncompared(
            f"the key{plural} that {', '.join(renewed)} made, certified again,"
        )
        if uncompared is not None:
            warnings.append(uncompared)
    write_kit_zips(zips)
    for kit, entry in zip(written, entries, strict=True):
        _log_written(kit, entry)
    finish_run(project, ws, ca, issued, server_settings, entries)
    return ProvisionResult(
        tuple(written),
        tuple(skipped),
        removed,
        fingerprint(ca.cert),
        tuple(warnings),
        tuple(awaiting),
        crl,
    )


def _reissue(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    record: IssuedRecord,
    name: str,
    now: datetime,
    crl_days: int,
) -> ProvisionResult:
    """A new kit for ``name`` and its old certificates revoked, in one locked step."""
    who = next((each for each in participants(project) if each.name == name), None)
    if who is None:
        raise ProvisionError(
            f"{name!r} is not in project.yml; only a participant of the project can be given a "
            f"new kit (to end a kit of someone who left: flprovision revoke {name} -w {ws.root})"
        )
    if who.kind == KIND_SERVER:
        raise ProvisionError(
            f"{name!r} is the server: its certificate cannot be revoked, since clients and admins "
            "check the server by the project CA and its host name, not by a CRL. If its key "
            "leaked, provision the project into a new workspace (a new CA) and replace every "
            "kit; if only its kit was lost, re-issue every kit with --force"
        )
    if who.csr:
        raise ProvisionError(
            f"{name!r} makes its own key (csr: true), so there is no kit to re-issue here: "
            f"its IT runs 'flprovision request {name} ...' again and you sign the new request "
            "with 'flprovision sign REQUEST.csr --reissue'"
        )
    if holder_key(who) not in record.participants:
        raise ProvisionError(f"{name!r} has no kit yet: a plain run (without --reissue) issues it")
    check_run(project, record, ws.root, [who])
    crl = revoke_certificates(ws, ca, name, REISSUE_REASON, now, crl_days)
    record = ws.load_issued() or record  # the revocation marked the old entry
    entry, kit = write_kit(project, ws, ca, who, now)
    holders = {**record.participants, holder_key(who): entry}
    finish_run(project, ws, ca, holders, record.server_settings, [entry])
    return ProvisionResult((kit,), (), (), fingerprint(ca.cert), crl=crl)
