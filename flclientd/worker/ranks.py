"""The ranks of a multi-GPU training child, and the few messages they exchange.

For ``start_mgpu`` the daemon runs the child under torchrun, which starts
one process per GPU with RANK, LOCAL_RANK, WORLD_SIZE and a local
rendezvous (``--standalone``). Only rank 0 talks to the daemon; it passes
each request on to the other ranks as a JSON string in a uint8 tensor, so
nothing is pickled even inside the group.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

IDLE_TIMEOUT = datetime.timedelta(days=30)


class NoGpuError(RuntimeError):
    """Multi-process training was asked for on a site that cannot host it."""


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the ranks of the training child."""

    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_environment(cls) -> Ranks:
        """Read torchrun's variables (one rank when absent)."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
        )

    @property
    def is_main(self) -> bool:
        """Rank 0 talks to the daemon, validates and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether there are other ranks to keep in step with."""
        return self.world_size > 1


def choose_device(ranks: Ranks, allow_cpu_multiprocess: bool) -> torch.device:
    """One GPU per rank when CUDA is there; the CPU otherwise, if that is allowed.

    Several CPU processes on one machine only compete for the same cores, so
    that path exists for tests and must be asked for explicitly.
    """
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        if ranks.world_size > count:
            raise NoGpuError(
                f"{ranks.world_size} training processes need {ranks.world_size} GPUs, "
                f"but this site has {count}"
            )
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    if ranks.distributed and not allow_cpu_multiprocess:
        raise NoGpuError(
            f"this site has no GPU; training with {ranks.world_size} processes needs "
            f"{ranks.world_size} GPUs (use 'start client' for one CPU process)"
        )
    return torch.device("cpu")


def describe_device(device: torch.device, world_size: int) -> str:
    """How the device reads in status output: ``cpu``, ``cuda:0 (name)`` or ``cuda x2 (name)``."""
    if device.type != "cuda":
        return device.type if world_size == 1 else f"{device.type} x{world_size}"
    name = torch.cuda.get_device_name(device)
    where = str(device) if world_size == 1 else f"cuda x{world_size}"
    return f"{where} ({name})"


class RankGroup:
    """The process group of the ranks, for passing small JSON messages between them."""

    def __init__(self, ranks: Ranks, device: torch.device) -> None:
        self.ranks = ranks
        self.backend = "nccl" if device.type == "cuda" else "gloo"
        self._device = device
        # torchrun provides MASTER_ADDR/MASTER_PORT. Ranks other than 0 wait for the next
        # request inside a broadcast, and a site may wait for hours between rounds, so the
        # collective timeout is long; a lost daemon ends the ranks another way (rank 0
        # sees its socket close and exits, then torchrun stops the others).
        dist.init_process_group(
            self.backend,
            rank=ranks.rank,
            world_size=ranks.world_size,
            timeout=IDLE_TIMEOUT,
        )

    def broadcast_json(self, message: dict[str, Any] | None, src: int = 0) -> dict[str, Any]:
        """Send ``message`` from rank ``src`` to all; every rank returns it."""
        if self.ranks.rank == src:
            data = json.dumps(message).encode()
            length = torch.tensor([len(data)], dtype=torch.int64, device=self._device)
        else:
            length = torch.zeros(1, dtype=torch.int64, device=self._device)
        dist.broadcast(length, src)
        if self.ranks.rank == src:
            payload = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self._device)
        else:
            payload = torch.empty(int(length.item()), dtype=torch.uint8, device=self._device)
        dist.broadcast(payload, src)
        received: dict[str, Any] = json.loads(payload.cpu().numpy().tobytes())
        return received

    def exchange(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        """Every rank's message, in rank order, on every rank."""
        return [
            self.broadcast_json(mine if rank == self.ranks.rank else None, src=rank)
            for rank in range(self.ranks.world_size)
        ]

    def close(self) -> None:
        """Leave the group cleanly on a requested stop."""
        dist.destroy_process_group()
