"""What the server asks a client to do, and the run a client does it for."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flcore.appconfig import ClientAppConfig


@dataclass(frozen=True)
class Task:
    """An offer from the server: train a round, validate the final model, or cross-validate."""

    run_number: int
    round: int
    kind: int
    owners: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunContext:
    """The run this client trains, and where its files are."""

    run_number: int
    app_dir: Path
    work_dir: Path
    nproc: int
    config: ClientAppConfig
