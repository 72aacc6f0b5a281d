"""The run a client trains and where its files are: shared by the agent and cross-site
validation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flcore.appconfig import ClientAppConfig


@dataclass(frozen=True)
class RunContext:
    """The run this client trains, and where its files are."""

    run_number: int
    app_dir: Path
    work_dir: Path
    nproc: int
    config: ClientAppConfig
