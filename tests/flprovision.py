"""flprovision run as a process from this checkout, as the tests of provisioning run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def flprovision(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``flprovision ARGS`` in ``cwd`` and return what it did (exit code, stdout, stderr)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(
        [sys.executable, "-m", "provision", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
