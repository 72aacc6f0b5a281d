"""What each program imports at start, checked in a fresh interpreter.

The daemons must start fast and small and never run torch or an app's code
(their training and model-init children do), load prometheus_client only
when a site turns the metrics endpoint on and MLflow never (their tracking
child does), and only the console draws with Textual. MONAI, an optional
extra, is imported by the children only for an app that trains a MONAI
bundle. An import added anywhere below a daemon's entry point that breaks
this fails here, not as a slow start in production.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import flcore

ROOT = Path(__file__).resolve().parents[2]
FLCORE_MODULES = sorted(
    info.name for info in pkgutil.walk_packages(flcore.__path__, prefix="flcore.")
)


def loaded_by(*modules: str) -> set[str]:
    """Top-level packages in ``sys.modules`` after a fresh interpreter imports ``modules``."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {name.partition(".")[0] for name in json.loads(done.stdout)}


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        (("flserverd.cli",), {"torch", "flapp", "textual", "prometheus_client", "mlflow", "monai"}),
        (("flclientd.cli",), {"torch", "flapp", "textual", "prometheus_client", "mlflow", "monai"}),
        (("fltui.cli",), {"torch", "flapp", "monai"}),
        (
            tuple(FLCORE_MODULES),
            {"torch", "flapp", "textual", "prometheus_client", "mlflow", "monai"},
        ),
        # MONAI is an optional extra: the children import its adapter only for a bundle app.
        (("flapp", "flapp.runtime.modelinit", "flclientd.worker.main"), {"textual", "monai"}),
    ],
    ids=["flserverd", "flclientd", "fltui", "flcore", "children"],
)
def test_a_program_starts_without_what_it_must_not_import(
    modules: tuple[str, ...], forbidden: set[str]
) -> None:
    loaded = loaded_by(*modules)
    assert {name.partition(".")[0] for name in modules} <= loaded
    assert loaded & forbidden == set()
