"""What accelerator this site has, found out without importing torch in the daemon.

The client daemon reports its device at login and refuses ``start_mgpu``
with more GPUs than it has. Importing torch (and initialising CUDA) in the
daemon would cost hundreds of MB and tie the daemon's health to the GPU
driver's, so a short child process answers instead, with the same
interpreter and environment (CUDA_VISIBLE_DEVICES included) that the
training child will have.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass

logger = logging.getLogger(__name__)

PROBE = """
import json, torch
names = []
if torch.cuda.is_available():
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(names))
"""


@dataclass(frozen=True)
class DeviceInfo:
    """The site's accelerator in words (``cpu``, ``cuda x2 (NVIDIA H100 80GB HBM3)``)."""

    device: str
    gpu_count: int


def describe(names: list[str]) -> DeviceInfo:
    """Turn the GPU names the probe found into a DeviceInfo."""
    if not names:
        return DeviceInfo("cpu", 0)
    return DeviceInfo(f"cuda x{len(names)} ({', '.join(dict.fromkeys(names))})", len(names))


def probe_device(timeout: float = 120.0) -> DeviceInfo:
    """Ask a child process whether CUDA is available and how many GPUs it sees.

    Blocks for as long as the child takes to import torch (a few seconds at
    most); from a running event loop, call it through ``asyncio.to_thread``.
    A probe that fails is logged and reads as ``cpu``: a site without a
    working CUDA can still train on its CPU.
    """
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("could not probe for GPUs (%s); assuming none", exc)
        return DeviceInfo("cpu", 0)
    try:
        if done.returncode:
            raise ValueError(f"exit code {done.returncode}")
        names = json.loads(done.stdout.strip().splitlines()[-1])
        if not isinstance(names, list):
            raise ValueError(f"unexpected answer {names!r}")
        return describe([str(name) for name in names])
    except (ValueError, IndexError) as exc:
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        logger.warning("could not probe for GPUs (%s: %s); assuming none", exc, tail[0])
        return DeviceInfo("cpu", 0)
