"""Provisioning a workspace: the engine behind ``flprovision`` and the console's wizard.

Runs are incremental. The first run makes the project CA; later runs reuse it
and issue kits only to participants that have none, so kits already handed
out keep working. What a certificate or every kit embeds (the project name,
the server's address and ports, a participant's org or role) cannot change
quietly: the run refuses unless ``force`` re-issues every kit under the same CA.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from flcore.identity import KIND_CLIENT, KIND_SERVER
from provision.errors import ProvisionError
from provision.kits import Participant, kit_files, new_password, participants, write_kit_zip
from provision.pki import CertifiedKey, create_ca, fingerprint, issue, serial_hex
from provision.project import Project
from provision.workspace import Workspace

logger = logging.getLogger(__name__)

_EMBEDDED = ("org", "common_name", "role")
"""Participant details a certificate carries: changing one needs a new kit."""
SERVER_SETTINGS = "server_settings"
"""Record key: the settings the server kit out there was issued with (None before it is)."""


@dataclass(frozen=True)
class WrittenKit:
    """A kit this run wrote; the password exists nowhere else, so show it once."""

    name: str
    kind: str
    zip_path: Path
    password: str
    email: str | None = None

    def password_line(self) -> str:
        """The line to hand to the lead: ``===> password: … for <kit>.zip [to <email>]``."""
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
    warnings: tuple[str, ...] = ()
    """What the lead should know about the run (removed participants, changed settings)."""


def _key(who: Participant) -> str:
    return f"{who.kind}:{who.name}"


def _cert_facts(cert: x509.Certificate) -> dict[str, str]:
    return {
        "serial": serial_hex(cert),
        "sha256": fingerprint(cert),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _check_unchanged(project: Project, record: dict[str, Any], workspace: Path) -> None:
    if not record["participants"]:
        return  # a first run stopped before any kit was issued: nothing embeds anything yet
    changes = []
    if record.get("project") != project.name:
        changes.append(f"name {record.get('project')!r} -> {project.name!r}")
    old_server: dict[str, Any] = record.get("server") or {}
    for key, new in asdict(project.server).items():
        if old_server.get(key) != new:
            changes.append(f"server.{key} {old_server.get(key)!r} -> {new!r}")
    for who in participants(project):
        old = record["participants"].get(_key(who))
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


def _check_server_timing(project: Project, record: dict[str, Any], workspace: Path) -> None:
    """New client kits must beat more often than the server kit already out there times out.

    parse_settings checks the settings against themselves only; when the
    server keeps its kit, what counts is the timeout that kit was issued with.
    """
    holders = record["participants"]
    server, *others = participants(project)
    new_clients = any(w.kind == KIND_CLIENT and _key(w) not in holders for w in others)
    timeout = (record.get(SERVER_SETTINGS) or {}).get("heart_beat_timeout")
    interval = project.settings.heartbeat_interval
    if _key(server) in holders and new_clients and timeout is not None and interval >= timeout:
        raise ProvisionError(
            f"{workspace}: new client kits would send a heartbeat every {interval:g}s, but the "
            f"server kit already issued drops a client after {timeout:g}s without one; lower "
            "settings.heartbeat_interval, or re-issue every kit with --force"
        )


def provision_workspace(
    project: Project, workspace: Path, force: bool = False, now: datetime | None = None
) -> ProvisionResult:
    """Issue kits for ``project`` into ``workspace`` (see :mod:`provision.workspace`).

    Args:
        project: a checked project (see :func:`provision.projectfile.load_project`).
        workspace: the provisioning workspace; created on the first run.
        force: re-issue every kit, even to participants that have one.
        now: the run time (tests pass a fixed one).

    Raises:
        ProvisionError: the workspace's CA or records are unusable, or (unless
            ``force``) project.yml changed something issued kits embed, or new
            client kits would beat too rarely for the server kit already issued.
    """
    now = now or datetime.now(UTC)
    ws = Workspace(workspace)
    ws.prepare()
    with ws.lock():
        record = ws.load_issued()
        ca = ws.load_ca()
        if (record is None) != (ca is None):
            raise ProvisionError(
                f"{ws.state_dir}: holds only part of the project's state (CA and issued.json "
                "go together); restore it from a backup or provision into a new workspace"
            )
        if record is not None and not force:
            _check_unchanged(project, record, workspace)
            _check_server_timing(project, record, workspace)
        if ca is None or record is None:
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
        return _issue_kits(project, ws, ca, record, force, now)


def _record(
    project: Project, holders: dict[str, Any], server_settings: dict[str, Any] | None
) -> dict[str, Any]:
    """What issued.json holds: the project as issued, and who holds a kit."""
    return {
        "project": project.name,
        "server": asdict(project.server),
        "settings": asdict(project.settings),
        SERVER_SETTINGS: server_settings,
        "participants": holders,
    }


def _issue_kits(
    project: Project,
    ws: Workspace,
    ca: CertifiedKey,
    record: dict[str, Any],
    force: bool,
    now: datetime,
) -> ProvisionResult:
    issued: dict[str, Any] = dict(record["participants"])
    everyone = participants(project)
    current = {_key(who) for who in everyone}
    removed = tuple(entry["name"] for key, entry in issued.items() if key not in current)
    warnings = [
        f"{name} left project.yml; its kit stays valid until it expires" for name in removed
    ]
    settings = project.settings
    if issued and not force and record.get("settings") != asdict(settings):
        warnings.append(
            "settings changed since earlier kits were issued; those kits keep the old values "
            "(sites may override some in local/, or --force re-issues every kit)"
        )
    server_settings = record.get(SERVER_SETTINGS)
    written: list[WrittenKit] = []
    skipped: list[str] = []
    entries: list[dict[str, Any]] = []
    run_time = now.isoformat()
    for who in everyone:
        if _key(who) in issued and not force:
            issued[_key(who)]["email"] = who.email
            skipped.append(who.name)
            continue
        cert = issue(ca, who.subject, settings.key_type, settings.cert_validity_days, now)
        zip_path = ws.packages_dir / f"{who.name}.zip"
        password = new_password()
        write_kit_zip(zip_path, kit_files(project, who, ca, cert), password, now)
        logger.info("wrote %s (certificate serial %s)", zip_path, serial_hex(cert.cert))
        entry = {
            **asdict(who),
            **_cert_facts(cert.cert),
            "kit": str(zip_path.relative_to(ws.root)),
            "run_time": run_time,
        }
        issued[_key(who)] = entry
        entries.append(entry)
        written.append(WrittenKit(who.name, who.kind, zip_path, password, who.email))
        if who.kind == KIND_SERVER:
            server_settings = asdict(settings)
    holders = {key: issued[key] for key in issued if key in current}
    ws.save_issued(_record(project, holders, server_settings))
    ca_summary = {"subject": ca.cert.subject.rfc4514_string(), **_cert_facts(ca.cert)}
    ws.append_audit(project.name, ca_summary, entries)
    return ProvisionResult(tuple(written), tuple(skipped), removed, tuple(warnings))
