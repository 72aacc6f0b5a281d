"""The initial global model and the model-file helpers shared with the training child."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flapp.models import DigitsCNN
from flapp.runtime.modelfile import load_state, save_state, state_manifest
from flapp.runtime.modelinit import init_model, main
from flcore.diskfault import disk_fault
from flcore.tensorfile import TensorFile, TensorFileError
from fldev.smalldisk import small_disk
from flserverd.server import build_initial_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_imports(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """init_model puts resources/ on sys.path and imports from it; undo both."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_app(
    root: Path,
    server: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    resources: dict[str, str] | None = None,
) -> Path:
    train = {
        "model": model or {"path": "flapp.models.DigitsCNN"},
        "dataset": {"path": "flapp.datasets.NpzClassification"},
        "seed": 3,
    }
    (root / "config").mkdir(parents=True)
    (root / "config" / "config_train.json").write_text(json.dumps(train))
    (root / "config" / "config_fed_server.json").write_text(json.dumps(server or {}))
    for name, text in (resources or {}).items():
        path = root / "resources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def test_writes_the_models_state_dict(tmp_path: Path) -> None:
    out = tmp_path / "out" / "global.safetensors"
    manifest = init_model(write_app(tmp_path / "app"), out)
    written = load_file(str(out))
    assert sorted(written) == sorted(DigitsCNN().state_dict())
    assert set(TensorFile(out).manifest.tensors) == set(manifest.tensors)
    assert [p.name for p in out.parent.iterdir()] == ["global.safetensors"]


def test_the_seed_decides_the_weights(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app")
    for name, seed in (("a", None), ("b", None), ("c", 3), ("d", 4)):
        init_model(app, tmp_path / f"{name}.safetensors", seed)
    weights = {
        name: load_file(str(tmp_path / f"{name}.safetensors"))["features.0.weight"]
        for name in "abcd"
    }
    assert torch.equal(weights["a"], weights["b"])
    assert torch.equal(weights["a"], weights["c"])
    assert not torch.equal(weights["a"], weights["d"])


@pytest.mark.parametrize("form", ["safetensors", "plain", "state_dict", "model"])
def test_continues_from_an_initial_checkpoint(tmp_path: Path, form: str) -> None:
    state = {name: torch.full_like(t, 0.25) for name, t in DigitsCNN().state_dict().items()}
    if form == "safetensors":
        checkpoint = tmp_path / "pretrained.safetensors"
        save_file(state, str(checkpoint))
    else:
        checkpoint = tmp_path / "pretrained.pt"
        torch.save(state if form == "plain" else {form: state, "epoch": 7}, checkpoint)
    app = write_app(tmp_path / "app", {"initial_checkpoint": str(checkpoint)})
    init_model(app, tmp_path / "global.safetensors", checkpoint_dirs=[tmp_path])
    written = load_file(str(tmp_path / "global.safetensors"))
    assert all(torch.equal(written[name], value) for name, value in state.items())


def test_a_relative_checkpoint_is_found_in_the_app(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app", {"initial_checkpoint": "resources/start.safetensors"})
    (app / "resources").mkdir()
    state = {name: torch.full_like(t, 0.5) for name, t in DigitsCNN().state_dict().items()}
    save_file(state, str(app / "resources" / "start.safetensors"))
    init_model(app, tmp_path / "global.safetensors")
    written = load_file(str(tmp_path / "global.safetensors"))
    assert written.keys() == state.keys()
    assert all(torch.equal(written[name], value) for name, value in state.items())


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(list(args))
    return code, capsys.readouterr().err.splitlines()


def test_a_checkpoint_that_does_not_fit_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = DigitsCNN().state_dict()
    del state["classifier.3.bias"]
    state["classifier.1.weight"] = torch.zeros(3, 3)
    state["features.0.bias"] = state["features.0.bias"].double()
    state["extra"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"))
    app = write_app(tmp_path / "app", {"initial_checkpoint": str(tmp_path / "bad.safetensors")})
    out = tmp_path / "global.safetensors"
    code, err = run_main(
        capsys, "--app", str(app), "--out", str(out), "--checkpoint-dir", str(tmp_path)
    )
    assert code == 2
    assert len(err) == 1
    line = err[0]
    assert line.startswith(
        f"error: config_fed_server.json: initial_checkpoint {tmp_path / 'bad.safetensors'} "
        "does not fit the model: "
    )
    assert "missing tensor 'classifier.3.bias'" in line
    assert "unexpected tensor 'extra'" in line
    assert "tensor 'classifier.1.weight' has shape [3, 3], expected [64, 512]" in line
    assert "tensor 'features.0.bias' has dtype F64, expected F32" in line
    assert not out.exists()


def test_a_checkpoint_that_would_run_code_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "evil.pt"
    torch.save({"state_dict": DigitsCNN().state_dict(), "hook": Path("/")}, checkpoint)
    app = write_app(tmp_path / "app", {"initial_checkpoint": str(checkpoint)})
    out = tmp_path / "g.safetensors"
    code, err = run_main(
        capsys, "--app", str(app), "--out", str(out), "--checkpoint-dir", str(tmp_path)
    )
    assert code == 2
    assert err[0].startswith(f"error: config_fed_server.json: initial_checkpoint {checkpoint}:")
    assert "cannot read it" in err[0]


def test_a_missing_checkpoint_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = write_app(tmp_path / "app", {"initial_checkpoint": "nowhere.pt"})
    code, err = run_main(capsys, "--app", str(app), "--out", str(tmp_path / "g.safetensors"))
    assert (code, err) == (
        2,
        [f"error: config_fed_server.json: initial_checkpoint {app / 'nowhere.pt'} does not exist"],
    )


def test_a_checkpoint_is_read_only_where_the_server_allows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another project's model on the same host is a fine checkpoint for this model: the child
    reads none but in the app or a --checkpoint-dir (the server's workspace and the folders
    its operator allows), links followed, and builds nothing from it."""
    other, allowed = tmp_path / "other_project", tmp_path / "allowed"
    for folder in (other, allowed):
        folder.mkdir()
    save_file(DigitsCNN().state_dict(), str(other / "best_global_model.safetensors"))
    (allowed / "link.safetensors").symlink_to(other / "best_global_model.safetensors")
    for name, words in (
        (str(other / "best_global_model.safetensors"), "is outside the folders"),
        (str(allowed / "link.safetensors"), "is outside the folders"),
        ("../other_project/best_global_model.safetensors", "leads out of the app"),
    ):
        app = write_app(tmp_path / "app", {"initial_checkpoint": name})
        out = tmp_path / "g.safetensors"
        code, err = run_main(
            capsys, "--app", str(app), "--out", str(out), "--checkpoint-dir", str(allowed)
        )
        assert code == 2 and len(err) == 1 and words in err[0], err
        assert err[0].startswith("error: config/config_fed_server.json: initial_checkpoint ")
        assert not out.exists()
        shutil.rmtree(app)


def test_custom_models_come_from_resources(tmp_path: Path) -> None:
    net = """
        from torch import nn

        class Net(nn.Module):
            def __init__(self, width):
                super().__init__()
                self.layer = nn.Linear(width, 2)
    """
    app = write_app(
        tmp_path / "app",
        model={"path": "mynet.Net", "args": {"width": 5}},
        resources={"mynet.py": net},
    )
    init_model(app, tmp_path / "g.safetensors")
    assert load_file(str(tmp_path / "g.safetensors"))["layer.weight"].shape == (2, 5)


def test_the_servers_model_init_child_gets_no_mlflow_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child runs the app's code; only the server's tracking child needs MLflow's
    credentials, which the server's environment holds."""
    net = """
        import os
        from pathlib import Path
        from torch import nn

        class Net(nn.Module):
            def __init__(self, seen):
                super().__init__()
                names = (k for k in os.environ if k.startswith("MLFLOW_"))
                Path(seen).write_text(" ".join(sorted(names)))
                self.layer = nn.Linear(2, 2)
    """
    seen = tmp_path / "seen"
    app = write_app(
        tmp_path / "app",
        model={"path": "mynet.Net", "args": {"seen": str(seen)}},
        resources={"mynet.py": net},
    )
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-for-apps")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "not-for-apps")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    asyncio.run(build_initial_model(app, tmp_path / "g.safetensors", []))
    assert (tmp_path / "g.safetensors").is_file() and seen.read_text() == ""


def test_config_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = write_app(tmp_path / "app", model={"path": "custom.net.Net"})
    code, err = run_main(capsys, "--app", str(app), "--out", str(tmp_path / "g.safetensors"))
    assert (code, err) == (
        2,
        [
            "error: config_train.json: model: cannot import 'custom.net.Net': "
            "No module named 'custom'"
        ],
    )


def test_unexpected_errors_come_with_their_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = "def build():\n    raise RuntimeError('no weights today')\n"
    app = write_app(
        tmp_path / "app", model={"path": "broken.build"}, resources={"broken.py": broken}
    )
    code, err = run_main(capsys, "--app", str(app), "--out", str(tmp_path / "g.safetensors"))
    assert code == 2
    assert err[0] == "error: RuntimeError: no weights today"
    assert "Traceback (most recent call last):" in err[1:]


def test_a_model_must_be_a_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = write_app(tmp_path / "app", model={"path": "collections.OrderedDict"})
    code, err = run_main(capsys, "--app", str(app), "--out", str(tmp_path / "g.safetensors"))
    assert code == 2
    assert err == [
        "error: config_train.json: model: 'collections.OrderedDict' returned a OrderedDict, "
        "not a torch.nn.Module"
    ]


@pytest.mark.timeout(60)
def test_runs_as_a_module(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flapp.runtime.modelinit", "--app", str(app), "--seed", "1"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "g.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.safetensors").is_file()
    (app / "config" / "config_train.json").write_text("{")
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "h.safetensors")],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: config/config_train.json: not valid JSON")


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.head = nn.Linear(3, 4, bias=False)
        self.head.weight = self.embed.weight


def test_tied_weights_are_saved_under_every_name(tmp_path: Path) -> None:
    model = Tied()
    path = tmp_path / "tied.safetensors"
    save_state(model.state_dict(), path)
    assert sorted(load_file(str(path))) == ["embed.weight", "head.weight"]
    other = Tied()
    load_state(other, path, state_manifest(model.state_dict()))
    assert torch.equal(other.head.weight, model.embed.weight)


def test_every_dtype_and_layout_reads_back_as_saved(tmp_path: Path) -> None:
    """The file is written tensor by tensor from raw bytes: views, transposes, empty and
    0-dim tensors and every dtype a model file holds must read back equal (safetensors'
    own reader is the judge)."""
    weight = torch.randn(4, 6)
    state = {
        "bf16": torch.randn(3, 5, dtype=torch.bfloat16),
        "step": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "mask": torch.tensor([True, False, True]),
        "transposed": weight.t(),
        "rows": weight[1:3],
        "half": torch.randn(5, dtype=torch.float16),
        "double": torch.randn(2, dtype=torch.float64),
    }
    path = tmp_path / "all.safetensors"
    save_state(state, path)
    back = load_file(str(path))
    assert list(back) == list(state)
    for name, tensor in state.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


def test_load_state_refuses_a_file_that_does_not_fit(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_state({"embed.weight": torch.zeros(4, 3, dtype=torch.float16)}, path)
    model = Tied()
    with pytest.raises(TensorFileError) as failure:
        load_state(model, path, state_manifest(model.state_dict()))
    assert str(failure.value) == (
        "m.safetensors does not fit the model: tensor 'embed.weight' has dtype F16, "
        "expected F32; missing tensor 'head.weight'"
    )


def test_state_manifest_refuses_dtypes_model_files_cannot_hold() -> None:
    with pytest.raises(TensorFileError, match="which model files cannot hold"):
        state_manifest({"z": torch.zeros(2, dtype=torch.complex64)})


@pytest.mark.usefixtures("mountable")
def test_a_full_disk_while_saving_is_the_oserror_it_is(tmp_path: Path) -> None:
    """A full disk must be recognised as one (the site pauses instead of failing), and
    nothing half-written stays: a real 1 MiB tmpfs, a 4 MiB state dict."""
    folder = tmp_path / "disk"
    folder.mkdir()
    with small_disk(folder, 1):
        target = folder / "update.safetensors"
        with pytest.raises(OSError, match="No space left on device") as raised:
            save_state({"w": torch.zeros(1024, 1024)}, target, durable=False)
        assert (disk_fault(raised.value) or "").startswith("disk full: ")
        assert list(folder.iterdir()) == []


EXIT_WATCHER = """
    import atexit
    from pathlib import Path

    from torch import nn

    MARKS = Path(__file__).resolve().parents[2] / "marks"
    MARKS.mkdir(exist_ok=True)

    class Sentinel:
        def __del__(self):
            (MARKS / "torn down").touch()

    KEPT = Sentinel()  # collected only when the interpreter is torn down
    atexit.register(lambda: (MARKS / "exit handlers").touch())

    def net():
        return nn.Linear(3, 2)
"""


@pytest.mark.timeout(60)
def test_the_child_runs_its_exit_handlers_but_skips_tearing_down_torch(tmp_path: Path) -> None:
    """The server waits for the child to end before round 0: tearing down an interpreter with
    torch loaded costs it a second or two of CPU, for nothing."""
    app = write_app(
        tmp_path / "app", model={"path": "watch.net"}, resources={"watch.py": EXIT_WATCHER}
    )
    command = [sys.executable, "-m", "flapp.runtime.modelinit", "--app", str(app)]
    done = subprocess.run(
        [*command, "--out", str(tmp_path / "g.safetensors")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("2 tensors, 8 values\n")  # the output is flushed
    assert sorted(p.name for p in (tmp_path / "marks").iterdir()) == ["exit handlers"]
