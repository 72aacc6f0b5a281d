"""Which project a server's ``state/`` belongs to (:mod:`flcore.project`, shared with the
sites), in the server's words: what another project's kit would take over here."""

from __future__ import annotations

from pathlib import Path

from flcore import project
from flcore.project import Project, kit_project

__all__ = ["claim_state", "kit_project"]


def claim_state(state_dir: Path, kit: Project) -> None:
    """Refuse a server state of another project; record the kit's project in one that names
    none.

    Raises:
        ConfigError: the state belongs to another project, or its record cannot be read.
    """
    project.claim_state(
        state_dir,
        kit,
        "its runs, registrations and audit",
        "Start this project's server in a workspace of its own (or put this workspace's own "
        "kit back)",
    )
