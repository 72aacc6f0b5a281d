"""scripts/check_unsafe.py: the lint check that fails the build on decoders that can run code."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_unsafe.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_unsafe", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


check_unsafe = _load()


def findings(source: str) -> list[str]:
    return [f.what for f in check_unsafe.check_source(source, "x.py")]


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("import pickle\n", "import of pickle"),
        ("import pickle as p\n", "import of pickle"),
        ("from pickle import loads\n", "import of pickle"),
        ("import _pickle\n", "import of _pickle"),
        ("import dill\n", "import of dill"),
        ("import cloudpickle\n", "import of cloudpickle"),
        ("import marshal\n", "import of marshal"),
        ("from shelve import open\n", "import of shelve"),
        ("import yaml\nyaml.load(text)\n", "yaml.load() without Loader=yaml.SafeLoader"),
        ("import yaml\nyaml.load(text, Loader=yaml.Loader)\n", "yaml.Loader: builds any"),
        ("import yaml\nyaml.load(text, yaml.FullLoader)\n", "yaml.FullLoader"),
        ("import yaml\nyaml.load(text, Loader=mine)\n", "without Loader=yaml.SafeLoader"),
        ("import yaml\nyaml.unsafe_load(text)\n", "yaml.unsafe_load()"),
        ("import yaml\nyaml.full_load(text)\n", "yaml.full_load()"),
        ("import yaml as y\ny.load_all(text)\n", "yaml.load_all() without"),
        ("from yaml import load\n", "from yaml import load"),
        ("import torch\ntorch.load(path)\n", "torch.load() without weights_only=True"),
        ("import torch\ntorch.load(path, weights_only=False)\n", "without weights_only=True"),
        ("import torch as t\nt.load(path)\n", "without weights_only=True"),
        ("from torch import load\n", "from torch import load"),
        ("eval(text)\n", "eval(): runs code"),
        ("exec(text)\n", "exec(): runs code"),
        ("import builtins\nbuiltins.exec(text)\n", "builtins.exec(): runs code"),
        ("from builtins import eval\n", "from builtins import eval"),
        ("import numpy as np\nnp.load(path, allow_pickle=True)\n", "allow_pickle=True"),
    ],
)
def test_each_forbidden_use_is_caught(source: str, words: str) -> None:
    found = findings(source)
    assert any(words in what for what in found), found


@pytest.mark.parametrize(
    "source",
    [
        "import yaml\nyaml.safe_load(text)\n",
        "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)\n",
        "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)\n",
        "import torch\ntorch.load(path, map_location='cpu', weights_only=True)\n",
        "model.eval()\n",
        "trainer.exec_run()\n",
        "import numpy as np\nnp.load(path, allow_pickle=False)\nnp.load(path)\n",
        "import json\njson.loads(text)\n",
        "# import pickle would be wrong here\ntext = 'eval(x)'\n",
        "import safetensors.torch\nsafetensors.torch.load_file(path)\n",
    ],
)
def test_safe_uses_pass(source: str) -> None:
    assert findings(source) == []


def test_a_line_may_stay_only_with_its_reason() -> None:
    assert findings("eval(text)  # unsafe-ok: the text is a literal written right here\n") == []
    assert findings("eval(text)  # unsafe-ok: because\n") == ["eval(): runs code from data"]


def test_the_repository_is_clean_and_make_lint_runs_the_check() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "scripts/check_unsafe.py" in (ROOT / "Makefile").read_text()


def test_a_finding_fails_the_check(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "import yaml\n\n\ndef f(t):\n    return yaml.load(t)\n"
    )
    (tmp_path / "pkg" / "good.py").write_text("import json\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1
    assert done.stdout == "pkg/bad.py:5: yaml.load() without Loader=yaml.SafeLoader\n"
    assert "1 use(s) of a decoder that can run code" in done.stderr
