"""Read-only pictures of the server's state, for check_status and the event stream.

Built on the event loop at the moment of publishing, so what an admin sees
is a consistent snapshot even while rounds move on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flserverd.registry import ClientSession


@dataclass(frozen=True)
class ClientView:
    """One row of the clients table."""

    instance: str
    client_name: str
    token: str
    org: str
    status: str
    last_heartbeat: float
    connected_at: float
    run_number: int
    round: int
    samples: int
    device: str
    gpu_count: int
    error: str
    traceback: str
    app: str
    hostname: str
    connected: bool

    @classmethod
    def of(cls, s: ClientSession) -> ClientView:
        """Picture a session as it is now."""
        return cls(
            instance=s.instance,
            client_name=s.client_name,
            token=s.token,
            org=s.org,
            status=s.status.status,
            last_heartbeat=s.last_heartbeat,
            connected_at=s.connected_at,
            run_number=s.status.run_number,
            round=s.status.round,
            samples=s.status.samples,
            device=s.machine.device,
            gpu_count=s.machine.gpu_count,
            error=s.status.error,
            traceback=s.status.traceback,
            app=s.status.app,
            hostname=s.machine.hostname,
            connected=s.connected,
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json output."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class RunView:
    """The run and round progress."""

    run_number: int
    server_status: str
    app: str = ""
    phase: str = ""
    start_round: int = 0
    current_round: int = -1
    num_rounds: int = 0
    min_num_clients: int = 0
    max_num_clients: int = 0
    updates_received: int = 0
    contributed: tuple[str, ...] = ()
    awaited: tuple[str, ...] = ()
    wait_deadline: float = 0.0
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    failed_sites: tuple[str, ...] = ()
    best_metric: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for --json output."""
        data = dict(self.__dict__)
        for key in ("contributed", "awaited", "failed_sites", "history"):
            data[key] = list(data[key])
        return data
