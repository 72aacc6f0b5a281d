"""flclientd.device: the site's accelerator, found out without importing torch."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from flclientd import device
from flclientd.device import (
    CPU_BUILD,
    CUDA_BUILD,
    OTHER_BUILD,
    DeviceInfo,
    describe,
    installed_torch_version_file,
    probe_device,
    torch_build,
)

VERSION_PY = """from typing import Optional

__all__ = ['__version__', 'debug', 'cuda', 'git_version', 'hip', 'rocm', 'xpu']
__version__ = '2.13.0{suffix}'
debug = False
cuda: Optional[str] = {cuda}
git_version = 'cf30153c4c131c8164ee7798e5022d810682e2cb'
hip: Optional[str] = {hip}
rocm: Optional[str] = None
"""


@pytest.mark.parametrize(
    ("cuda", "hip", "build"),
    [("None", "None", CPU_BUILD), ("'12.8'", "None", CUDA_BUILD), ("None", "'6.4.1'", OTHER_BUILD)],
)
def test_torchs_build_is_read_from_its_version_file(
    tmp_path: Path, cuda: str, hip: str, build: str
) -> None:
    version = tmp_path / "version.py"
    version.write_text(VERSION_PY.format(suffix="", cuda=cuda, hip=hip))
    assert torch_build(version) == build


@pytest.mark.parametrize("text", ["cuda = compute()\nhip = None\n", "not python (", "x = 1\n"])
def test_a_version_file_that_cannot_be_read_asks_torch_itself(tmp_path: Path, text: str) -> None:
    version = tmp_path / "version.py"
    version.write_text(text)
    assert torch_build(version) == OTHER_BUILD
    assert torch_build(tmp_path / "missing.py") == OTHER_BUILD
    assert torch_build(None) == OTHER_BUILD


def test_a_cpu_build_of_torch_answers_without_starting_a_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The project pins a CPU build: the probe used to import torch in a child at every start
    of the daemon (1-2 s of CPU on the critical path to the first round)."""
    assert torch_build(installed_torch_version_file()) == CPU_BUILD

    def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"a process was started: {args}")

    monkeypatch.setattr(subprocess, "run", no_process)
    assert probe_device() == DeviceInfo("cpu", 0)


def test_a_cuda_build_asks_the_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Here there is no CUDA driver: the driver's probe runs and finds no GPU."""
    monkeypatch.setattr(device, "torch_build", lambda version_file: CUDA_BUILD)
    assert probe_device(timeout=60) == DeviceInfo("cpu", 0)


def test_gpu_names_are_described() -> None:
    assert describe([]) == DeviceInfo("cpu", 0)
    assert describe(["NVIDIA H100", "NVIDIA H100"]) == DeviceInfo("cuda x2 (NVIDIA H100)", 2)
