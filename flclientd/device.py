"""What accelerator this site has, found out without importing torch.

The client daemon reports its device at login and refuses ``start_mgpu``
with more GPUs than it has. Importing torch (and initialising CUDA) in the
daemon would cost hundreds of MB and tie the daemon's health to the GPU
driver's; importing it in a child just to ask costs the start of every
daemon one to two seconds of CPU, and the training child imports it again
at ``start client``. So the probe asks the cheapest source that gives
torch's answer:

* torch's build, read from its ``version.py`` (parsed, not imported): a
  CPU build of torch sees no GPU, whatever the machine has, so the answer
  is ``cpu`` at once;
* for a CUDA build, the CUDA driver itself (``libcuda``, through ctypes in
  a short child with the training child's interpreter and environment,
  ``CUDA_VISIBLE_DEVICES`` included): the devices and names torch's
  ``torch.cuda`` would list, in milliseconds;
* for any other build (ROCm) or a ``version.py`` that cannot be read, torch
  itself in a child, as before.

The training child reports the device it really trains on when it is ready
(``training process ready on ...`` in the site's log).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TORCH_PROBE = """
import json, torch
names = []
if torch.cuda.is_available():
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(names))
"""

CUDA_PROBE = """
import ctypes, json
names = []
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError:
    cuda = None
if cuda is not None and cuda.cuInit(0) == 0:
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) == 0:
        for index in range(count.value):
            device = ctypes.c_int()
            name = ctypes.create_string_buffer(256)
            if cuda.cuDeviceGet(ctypes.byref(device), index) == 0:
                cuda.cuDeviceGetName(name, 256, device)
                names.append(name.value.decode(errors="replace") or f"GPU {index}")
print(json.dumps(names))
"""

CPU_BUILD = "cpu"
CUDA_BUILD = "cuda"
OTHER_BUILD = "other"


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


def torch_build(version_file: Path | None) -> str:
    """What kind of torch is installed (``cpu``, ``cuda`` or ``other``), read from its
    ``version.py`` without running it; ``other`` when the file cannot be read."""
    if version_file is None:
        return OTHER_BUILD
    try:
        tree = ast.parse(version_file.read_text())
        values = {}
        for node in tree.body:
            target: ast.expr | None = None
            if isinstance(node, ast.AnnAssign):
                target = node.target
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
            value = getattr(node, "value", None)
            if isinstance(target, ast.Name) and isinstance(value, ast.expr):
                values[target.id] = ast.literal_eval(value)
        cuda, hip = values["cuda"], values["hip"]
    except (OSError, SyntaxError, ValueError, KeyError) as exc:
        logger.debug("cannot read torch's build from %s: %s", version_file, exc)
        return OTHER_BUILD
    if hip:
        return OTHER_BUILD
    return CUDA_BUILD if cuda else CPU_BUILD


def installed_torch_version_file() -> Path | None:
    """torch's ``version.py`` where this interpreter would import torch from (torch is not
    imported), or None when torch is not installed."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "version.py"


def probe_device(timeout: float = 120.0) -> DeviceInfo:
    """Whether torch would see a GPU here, and how many, without importing it.

    A CPU build answers at once; otherwise a short child asks (the CUDA
    driver, or torch for other builds). Blocks for as long as that child
    takes (milliseconds for the driver, seconds for torch); from a running
    event loop, call it through ``asyncio.to_thread``. A probe that fails is
    logged and reads as ``cpu``: a site without a working GPU can still
    train on its CPU.
    """
    build = torch_build(installed_torch_version_file())
    if build == CPU_BUILD:
        return DeviceInfo("cpu", 0)
    script = CUDA_PROBE if build == CUDA_BUILD else TORCH_PROBE
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
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
