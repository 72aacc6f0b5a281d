"""The training child and its parent-side handle, with real child processes (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flapp.runtime.modelfile import save_state
from flapp.runtime.modelinit import init_model
from flclientd.runner import TrainingProcess, WorkerFailed
from flclientd.worker.workbench import BEST_SCORE_KEY
from flcore.proctable import command_line, descendants, process_table
from flcore.tensorfile import TensorFile
from fldev.poll import wait_until_async

TRAIN_SAMPLES = 48
VAL_SAMPLES = 20


def process_group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group."""
    return [p.pid for p in process_table() if p.group == pgid and p.state != "Z"]


def wait_until_gone(pgid: int, timeout: float = 2.0) -> list[int]:
    """Members of the group still alive after ``timeout`` seconds (empty when all are gone)."""
    deadline = time.monotonic() + timeout
    while (members := process_group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return members


def write_data(folder: Path, seed: int = 0) -> Path:
    """Tiny random 1x8x8 data: enough to train on, quick to load."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train.npz", TRAIN_SAMPLES), ("val.npz", VAL_SAMPLES)):
        x = rng.random((count, 1, 8, 8), dtype=np.float32)
        np.savez(folder / name, x=x, y=rng.integers(0, 10, count))
    return folder


def write_app(
    root: Path,
    train: dict[str, Any] | None = None,
    resources: dict[str, str] | None = None,
    cross_validate: bool = True,
) -> Path:
    """An app folder with the digits configuration, changed by ``train``."""
    config = {
        "model": {"path": "flapp.models.DigitsCNN"},
        "dataset": {"path": "flapp.datasets.NpzClassification"},
        "optimizer": {"path": "torch.optim.SGD", "args": {"lr": 0.05}},
        "batch_size": 16,
        **(train or {}),
    }
    (root / "config").mkdir(parents=True)
    (root / "config" / "config_train.json").write_text(json.dumps(config))
    client = {"local_epochs": 1, "cross_validate": cross_validate}
    (root / "config" / "config_fed_client.json").write_text(json.dumps(client))
    (root / "config" / "config_fed_server.json").write_text(json.dumps({"num_rounds": 2}))
    for name, text in (resources or {}).items():
        path = root / "resources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


class Keeper:
    """Starts training children for a test and remembers their process groups for teardown."""

    def __init__(self) -> None:
        self.pgids: list[int] = []
        self.logs: list[tuple[int, str]] = []

    async def start(
        self, app: Path, data: Path | None, work: Path, **kwargs: Any
    ) -> TrainingProcess:
        kwargs.setdefault("on_log", lambda level, text: self.logs.append((level, text)))
        process = await TrainingProcess.start(app_dir=app, data_root=data, work_dir=work, **kwargs)
        assert process.pgid is not None
        self.pgids.append(process.pgid)
        return process


@pytest.fixture
def keeper() -> Iterator[Keeper]:
    """A Keeper whose process groups are killed after the test, whatever happened in it."""
    kept = Keeper()
    yield kept
    for pgid in kept.pgids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text``."""
    return [p.pid for p in process_table() if p.pid != os.getpid() and text in command_line(p.pid)]


@pytest.fixture
def digits_run(tmp_path: Path) -> Iterator[tuple[Path, Path, Path, Path]]:
    """(app, data, work dir, initial global model) for the plain digits configuration."""
    app = write_app(tmp_path / "app")
    work = tmp_path / "run"
    init_model(app, work / "global.safetensors")
    yield app, write_data(tmp_path / "data"), work, work / "global.safetensors"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.timeout(90)
def test_a_site_that_does_not_cross_validate_skips_judging_its_updates(
    tmp_path: Path, keeper: Keeper
) -> None:
    app = write_app(tmp_path / "app", cross_validate=False)
    work = tmp_path / "run"
    init_model(app, work / "global.safetensors")
    data = write_data(tmp_path / "data")

    async def scenario() -> None:
        process = await keeper.start(app, data, work)
        try:
            result = await process.train(
                round=0,
                global_model=work / "global.safetensors",
                out=work / "u.safetensors",
                epochs=1,
            )
            assert {"val_accuracy", "train_loss"} <= set(result.metrics)
            assert not any(key.startswith("local_") for key in result.metrics)
            assert process.best_local_model is None
        finally:
            await process.stop()

    run(scenario())


@pytest.mark.timeout(90)
def test_trains_validates_and_stops(
    digits_run: tuple[Path, Path, Path, Path], keeper: Keeper
) -> None:
    app, data, work, global_model = digits_run

    async def scenario() -> None:
        process = await keeper.start(app, data, work)
        try:
            assert process.info.device == "cpu"
            assert process.info.world_size == 1
            assert (process.info.train_samples, process.info.val_samples) == (48, 20)
            assert process.best_local_model is None

            update = work / "update.safetensors"
            result = await process.train(round=0, global_model=global_model, out=update, epochs=2)
            assert result.num_samples == TRAIN_SAMPLES
            assert {"val_accuracy", "val_loss", "train_loss", "local_val_accuracy"} <= set(
                result.metrics
            )
            assert TensorFile(update).manifest == TensorFile(global_model).manifest
            assert process.best_local_model == work / "best_local_model.safetensors"

            checked = await process.validate(model=update)
            assert checked.num_samples == VAL_SAMPLES
            assert checked.metrics["val_accuracy"] == pytest.approx(
                result.metrics["local_val_accuracy"]
            )
            assert any("round 0 epoch 2/2" in text for _, text in keeper.logs)
        finally:
            pgid = process.pgid
            await process.stop()
        assert not process.running
        assert pgid is not None and wait_until_gone(pgid) == []
        with pytest.raises(WorkerFailed, match="not running"):
            await process.validate(model=global_model)

    run(scenario())


@pytest.mark.timeout(90)
def test_a_model_that_does_not_fit_is_refused_and_the_child_carries_on(
    digits_run: tuple[Path, Path, Path, Path], tmp_path: Path, keeper: Keeper
) -> None:
    app, data, work, global_model = digits_run
    wrong = tmp_path / "wrong.safetensors"
    state = load_file(str(global_model))
    state["classifier.3.bias"] = torch.zeros(5)
    save_file(state, str(wrong))

    async def scenario() -> None:
        process = await keeper.start(app, data, work)
        try:
            with pytest.raises(WorkerFailed, match="does not fit the model") as failure:
                await process.validate(model=wrong)
            assert "tensor 'classifier.3.bias' has shape [5], expected [10]" in str(failure.value)
            assert process.running
            result = await process.train(
                round=1, global_model=global_model, out=work / "u.safetensors", epochs=1
            )
            assert result.num_samples == TRAIN_SAMPLES
        finally:
            await process.stop()

    run(scenario())


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("train", "resources", "message"),
    [
        (
            {"model": {"path": "custom.net.Net"}},
            {},
            "config_train.json: model: cannot import 'custom.net.Net': No module named 'custom'",
        ),
        (
            {"model": {"path": "custom.net.Net"}},
            {
                "custom/__init__.py": "",
                "custom/net.py": "raise RuntimeError('broken on purpose')\n",
            },
            "cannot import 'custom.net.Net': RuntimeError: broken on purpose",
        ),
        (
            {"optimizer": {"path": "torch.optim.SGD", "args": {"lrate": 0.1}}},
            {},
            "config_train.json: optimizer: 'torch.optim.SGD' does not accept these arguments",
        ),
    ],
)
def test_start_fails_with_the_cause_and_leaves_nothing(
    tmp_path: Path, train: dict[str, Any], resources: dict[str, str], message: str
) -> None:
    app = write_app(tmp_path / "app", train, resources)
    data = write_data(tmp_path / "data")
    logs: list[tuple[int, str]] = []

    async def scenario() -> None:
        with pytest.raises(WorkerFailed) as failure:
            await TrainingProcess.start(
                app_dir=app,
                data_root=data,
                work_dir=tmp_path / "run",
                on_log=lambda *a: logs.append(a),
            )
        assert message in failure.value.message
        assert str(failure.value) == failure.value.message
        assert "Traceback" in failure.value.traceback

    run(scenario())
    assert processes_mentioning(str(tmp_path / "run")) == []


@pytest.mark.timeout(60)
def test_missing_data_names_the_file_and_data_root(tmp_path: Path) -> None:
    app = write_app(tmp_path / "app")
    empty = tmp_path / "empty"
    empty.mkdir()

    async def scenario() -> None:
        with pytest.raises(WorkerFailed) as failure:
            await TrainingProcess.start(
                app_dir=app, data_root=empty, work_dir=tmp_path / "run", on_log=lambda *a: None
            )
        assert f"{empty / 'train.npz'} is missing" in failure.value.message
        assert f"DATA_ROOT is {empty}" in failure.value.message

    run(scenario())


CHATTY_MODEL = """
    import logging
    import sys

    from flapp import DigitsCNN

    def build():
        logging.getLogger("custom.chatty").warning("a warning\\nover two lines")
        print("printed to stdout")
        print("printed to stderr", file=sys.stderr)
        return DigitsCNN()
"""


@pytest.mark.timeout(60)
def test_log_lines_reach_the_parent_with_their_level(tmp_path: Path, keeper: Keeper) -> None:
    app = write_app(
        tmp_path / "app",
        {"model": {"path": "chatty.build"}},
        {"chatty.py": CHATTY_MODEL},
    )
    data = write_data(tmp_path / "data")

    async def scenario() -> None:
        process = await keeper.start(app, data, tmp_path / "run")
        await process.stop()
        assert (logging.WARNING, "custom.chatty: a warning") in keeper.logs
        assert (logging.WARNING, "over two lines") in keeper.logs
        assert (logging.INFO, "printed to stdout") in keeper.logs
        assert (logging.WARNING, "printed to stderr") in keeper.logs
        assert any(level == logging.INFO and "ready on cpu" in text for level, text in keeper.logs)

    run(scenario())


CUSTOM_TRAINER = """
    from flapp import SupervisedTrainer

    class CountingTrainer(SupervisedTrainer):
        def __init__(self, bonus):
            self.bonus = bonus
            self.epochs = 0

        def train_epoch(self, model, loader, optimizer, loss_fn, device):
            self.epochs += 1
            metrics = super().train_epoch(model, loader, optimizer, loss_fn, device)
            return {**metrics, "epochs_seen": self.epochs}

        def validate(self, model, loader, loss_fn, device):
            return {**super().validate(model, loader, loss_fn, device), "val_bonus": self.bonus}
"""


@pytest.mark.timeout(60)
def test_a_custom_trainer_replaces_the_steps(tmp_path: Path, keeper: Keeper) -> None:
    app = write_app(
        tmp_path / "app",
        {"trainer": {"path": "mytrainer.CountingTrainer", "args": {"bonus": 7}}},
        {"mytrainer.py": CUSTOM_TRAINER},
    )
    data = write_data(tmp_path / "data")
    global_model = tmp_path / "run" / "global.safetensors"
    init_model(app, global_model)

    async def scenario() -> None:
        process = await keeper.start(app, data, tmp_path / "run")
        try:
            result = await process.train(
                round=0, global_model=global_model, out=tmp_path / "u.safetensors", epochs=3
            )
            assert result.metrics["epochs_seen"] == 3
            assert result.metrics["val_bonus"] == 7
            assert result.metrics["local_val_bonus"] == 7
        finally:
            await process.stop()

    run(scenario())


EXIT_WATCHER = """
    import atexit
    from pathlib import Path

    from flapp import NpzClassification

    MARKS = Path(__file__).resolve().parents[2] / "marks"

    class Sentinel:
        def __del__(self):
            (MARKS / "torn down").touch()

    KEPT = Sentinel()  # collected only when the interpreter is torn down
    atexit.register(lambda: (MARKS / "exit handlers").touch())

    def watched(data_root, **args):
        MARKS.mkdir(exist_ok=True)
        return NpzClassification(data_root, **args)
"""


@pytest.mark.timeout(60)
def test_a_stopped_child_runs_its_exit_handlers_but_skips_tearing_down_torch(
    tmp_path: Path, keeper: Keeper
) -> None:
    """Tearing down an interpreter with torch loaded takes a second or two of CPU (more than
    the 3 s grace on a busy machine, and the child was killed): a stopped child runs the exit
    handlers (its own and the app's) and then ends without the teardown."""
    app = write_app(
        tmp_path / "app",
        {"dataset": {"path": "exits.watched"}},
        {"exits.py": EXIT_WATCHER},
    )
    data = write_data(tmp_path / "data")
    marks = tmp_path / "marks"

    async def scenario() -> None:
        process = await keeper.start(app, data, tmp_path / "run")
        await process.stop()
        assert not process.running

    run(scenario())
    assert sorted(p.name for p in marks.iterdir()) == ["exit handlers"]


GRANDCHILD_DATASET = """
    import subprocess

    from flapp import NpzClassification

    def with_grandchild(data_root, **args):
        subprocess.Popen(["sleep", "300"])
        return NpzClassification(data_root, **args)
"""


@pytest.mark.timeout(60)
def test_kill_ends_every_process_of_the_group_at_once(tmp_path: Path, keeper: Keeper) -> None:
    app = write_app(
        tmp_path / "app",
        {"dataset": {"path": "grandchild.with_grandchild"}, "num_workers": 2},
        {"grandchild.py": GRANDCHILD_DATASET},
    )
    data = write_data(tmp_path / "data")
    global_model = tmp_path / "run" / "global.safetensors"
    init_model(app, global_model)

    async def scenario() -> None:
        process = await keeper.start(app, data, tmp_path / "run")
        pgid = process.pgid
        assert pgid is not None
        training = asyncio.create_task(
            process.train(
                round=0, global_model=global_model, out=tmp_path / "u.safetensors", epochs=100_000
            )
        )
        await wait_until_async(
            lambda: len(process_group_members(pgid)) >= 4,
            20,
            "the child itself, two DataLoader workers and the sleep",
        )
        killed_at = time.monotonic()
        process.kill()
        with pytest.raises(WorkerFailed, match=r"^training process was killed \(SIGKILL\): by an"):
            await training
        assert time.monotonic() - killed_at < 2
        assert wait_until_gone(pgid) == []
        assert not process.running

    run(scenario())


@pytest.mark.timeout(60)
def test_a_child_that_dies_fails_the_next_call(
    digits_run: tuple[Path, Path, Path, Path], keeper: Keeper
) -> None:
    app, data, work, global_model = digits_run

    async def scenario() -> None:
        process = await keeper.start(app, data, work)
        assert process.pgid is not None
        os.kill(process.pgid, signal.SIGKILL)  # as the kernel's OOM killer would
        with pytest.raises(WorkerFailed, match=r"or else most often for taking more memory"):
            await process.train(
                round=0, global_model=global_model, out=work / "u.safetensors", epochs=1
            )
        assert not process.running

    run(scenario())


ORPHAN_PARENT = """
import asyncio, os, sys
from pathlib import Path
from flclientd.runner import TrainingProcess

async def main():
    process = await TrainingProcess.start(
        app_dir=Path(sys.argv[1]), data_root=Path(sys.argv[2]), work_dir=Path(sys.argv[3]),
        on_log=lambda *a: None,
    )
    print(process.pgid, flush=True)
    os._exit(0)

asyncio.run(main())
"""


@pytest.mark.timeout(60)
def test_the_child_ends_itself_when_the_daemon_dies(
    digits_run: tuple[Path, Path, Path, Path],
) -> None:
    app, data, work, _ = digits_run
    done = subprocess.run(
        [sys.executable, "-c", ORPHAN_PARENT, str(app), str(data), str(work)],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    pgid = int(done.stdout.split()[-1])
    leftovers = wait_until_gone(pgid, timeout=5)
    for pid in leftovers:
        os.kill(pid, signal.SIGKILL)
    assert leftovers == []


@pytest.mark.timeout(60)
def test_several_processes_need_gpus_unless_cpu_is_allowed(
    digits_run: tuple[Path, Path, Path, Path],
) -> None:
    app, data, work, _ = digits_run

    async def scenario() -> None:
        with pytest.raises(WorkerFailed, match="this site has no GPU"):
            await TrainingProcess.start(
                app_dir=app, data_root=data, work_dir=work, nproc=2, on_log=lambda *a: None
            )

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run(scenario())


@pytest.mark.timeout(180)
def test_two_ranks_train_with_ddp_on_the_cpu(
    digits_run: tuple[Path, Path, Path, Path], keeper: Keeper
) -> None:
    app, data, work, global_model = digits_run

    async def scenario() -> None:
        process = await keeper.start(
            app, data, work, nproc=2, allow_cpu_multiprocess=True, ready_timeout=120
        )
        try:
            assert process.info.world_size == 2
            assert process.info.train_samples == TRAIN_SAMPLES
            pgid = process.pgid
            assert pgid is not None
            ranks = [pid for pid in descendants(pgid) if "flclientd.worker" in command_line(pid)]
            assert len(ranks) == 2  # torchrun's two ranks, each in a session of its own
            update = work / "update.safetensors"
            result = await process.train(round=0, global_model=global_model, out=update, epochs=2)
            assert result.num_samples == TRAIN_SAMPLES
            assert "local_val_accuracy" in result.metrics
            assert TensorFile(update).manifest == TensorFile(global_model).manifest
            assert load_file(update)["classifier.3.bias"].tolist() != (
                load_file(global_model)["classifier.3.bias"].tolist()
            )
            assert any(text.startswith("rank 1 ") for _, text in keeper.logs)
            checked = await process.validate(model=update)
            assert checked.num_samples == VAL_SAMPLES
        finally:
            await process.stop(grace=10)
        assert wait_until_gone(pgid) == []
        assert [pid for pid in ranks if Path(f"/proc/{pid}").exists()] == []

    run(scenario())


@pytest.mark.timeout(120)
def test_a_child_started_again_keeps_the_best_local_model_it_cannot_beat(
    digits_run: tuple[Path, Path, Path, Path], keeper: Keeper
) -> None:
    """A new child began with no best score, so the first round after a restart replaced
    the best local model (what cross-site validation shares) whatever its score."""
    app, data, work, global_model = digits_run
    best = work / "best_local_model.safetensors"

    async def scenario() -> None:
        process = await keeper.start(app, data, work)
        try:
            result = await process.train(
                round=0, global_model=global_model, out=work / "u0.safetensors", epochs=1
            )
        finally:
            await process.stop()
        kept = TensorFile(best).metadata[BEST_SCORE_KEY]
        assert float(kept) == pytest.approx(result.metrics["local_val_accuracy"])
        # As if an earlier round had scored what no later one can.
        save_state(load_file(str(best)), best, metadata={BEST_SCORE_KEY: "2.0"})
        again = await keeper.start(app, data, work)
        try:
            await again.train(
                round=1, global_model=global_model, out=work / "u1.safetensors", epochs=1
            )
        finally:
            await again.stop()
        assert TensorFile(best).metadata[BEST_SCORE_KEY] == "2.0"

    run(scenario())
