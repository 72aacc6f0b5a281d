"""Components named by dotted path, and the built-in model and dataset components."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from flapp.datasets import NpzClassification
from flapp.models import MLP, DigitsCNN
from flapp.runtime.components import build, holds_code, import_object, resolve, use_resources
from flapp.trainer import SupervisedTrainer
from flcore.appconfig import ComponentSpec
from flcore.schema import ConfigError

WHERE = "config_train.json: model"


@pytest.fixture
def resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An app's resources/ folder on sys.path, undone after the test (modules included)."""
    folder = tmp_path / "resources"
    folder.mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    before = set(sys.modules)
    use_resources(folder)
    yield folder
    for name in set(sys.modules) - before:
        del sys.modules[name]


def write_module(folder: Path, name: str, text: str) -> None:
    path = folder.joinpath(*name.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_custom_code_leaves_no_bytecode_beside_it(resources: Path) -> None:
    """The digest a site approved covers every file in resources/: importing the app must
    not add a __pycache__ there."""
    write_module(resources, "approved_pkg.model", "class Net:\n    pass\n")
    assert import_object("approved_pkg.model.Net", WHERE).__name__ == "Net"
    assert not list(resources.rglob("__pycache__"))


def test_resources_without_code_are_no_packages(tmp_path: Path) -> None:
    """Only an app with code puts resources/ on the import path: a data folder named like a
    package (triton/) made torch take it for the package, for an app needing no approval."""
    resources = tmp_path / "resources"
    (resources / "triton").mkdir(parents=True)
    (resources / "triton" / "README").write_text("data\n")
    assert not holds_code(resources) and not holds_code(tmp_path / "none")
    (resources / "net.py").write_text("x = 1\n")
    assert holds_code(resources)


def test_imports_classes_by_dotted_path() -> None:
    assert import_object("torch.optim.SGD", WHERE) is torch.optim.SGD
    assert import_object("flapp.models.DigitsCNN.forward", WHERE) is DigitsCNN.forward


def test_a_missing_module_is_named() -> None:
    with pytest.raises(ConfigError) as failure:
        import_object("custom.net.Net", WHERE)
    assert str(failure.value) == (
        "config_train.json: model: cannot import 'custom.net.Net': No module named 'custom'"
    )


def test_a_missing_attribute_is_named() -> None:
    with pytest.raises(ConfigError, match=re.escape("'torch.optim' has no attribute 'SGDD'")):
        import_object("torch.optim.SGDD", WHERE)


@pytest.mark.parametrize("path", ["Net", "torch..SGD", ""])
def test_a_path_must_be_dotted(path: str) -> None:
    with pytest.raises(ConfigError, match="is not a dotted path"):
        import_object(path, WHERE)


def test_errors_inside_custom_code_are_reported_as_they_are(resources: Path) -> None:
    write_module(resources, "broken_dep", "import not_installed_anywhere\n")
    with pytest.raises(ConfigError, match="No module named 'not_installed_anywhere'"):
        import_object("broken_dep.Net", WHERE)
    write_module(resources, "broken_code", "1 / 0\n")
    with pytest.raises(ConfigError, match="ZeroDivisionError: division by zero"):
        import_object("broken_code.Net", WHERE)


@pytest.mark.parametrize(
    ("old", "new", "obj"),
    [
        ("flcore.models.DigitsCNN", "flapp.models.DigitsCNN", DigitsCNN),
        (
            "flcore.datasets.NpzClassification",
            "flapp.datasets.NpzClassification",
            NpzClassification,
        ),
        (
            "flclientd.worker.trainer.SupervisedTrainer",
            "flapp.trainer.SupervisedTrainer",
            SupervisedTrainer,
        ),
    ],
)
def test_apps_that_name_the_old_modules_still_work(
    old: str, new: str, obj: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Apps uploaded or deployed before the app API moved to flapp keep running."""
    assert import_object(old, WHERE) is obj
    assert caplog.messages == [f"{WHERE}: {old!r} is now {new!r}; rename it in the app"]


@pytest.mark.parametrize(
    ("statement", "moved"),
    [
        ("from flclientd.worker.trainer import SupervisedTrainer", "flapp.trainer"),
        ("from flcore.models import DigitsCNN", "flapp.models"),
        ("import flcore.datasets", "flapp.datasets"),
    ],
)
def test_custom_code_that_imports_an_old_module_is_told_the_new_one(
    resources: Path, statement: str, moved: str
) -> None:
    write_module(resources, "oldstyle", f"{statement}\n")
    old = statement.split()[1]
    with pytest.raises(ConfigError) as failure:
        import_object("oldstyle.Net", WHERE)
    assert str(failure.value) == (
        f"{WHERE}: cannot import 'oldstyle.Net': it imports {old!r}, which is now {moved!r} "
        "(import the app API from 'flapp')"
    )


def test_resources_come_first_on_sys_path(resources: Path) -> None:
    write_module(resources, "custom_pkg.__init__", "")
    write_module(resources, "custom_pkg.net", "VALUE = 3\nclass Net:\n    pass\n")
    assert sys.path[0] == str(resources.resolve())
    assert import_object("custom_pkg.net.VALUE", WHERE) == 3
    with pytest.raises(
        ConfigError,
        match=re.escape("'custom_pkg.net.VALUE' names a value of type int, not a class"),
    ):
        resolve(ComponentSpec("custom_pkg.net.VALUE"), WHERE)


def test_build_passes_the_callers_and_the_configs_arguments() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = build(ComponentSpec("torch.optim.SGD", {"lr": 0.5}), "optimizer", params)
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_build_refuses_arguments_the_factory_does_not_take() -> None:
    with pytest.raises(ConfigError) as failure:
        build(ComponentSpec("torch.optim.SGD", {"lrate": 0.5}), "config_train.json: optimizer", [])
    message = str(failure.value)
    assert message.startswith(
        "config_train.json: optimizer: 'torch.optim.SGD' does not accept these arguments:"
    )
    assert "lrate" in message


def test_build_refuses_args_that_the_caller_sets() -> None:
    spec = ComponentSpec("flapp.datasets.NpzClassification", {"data_root": "/elsewhere"})
    with pytest.raises(ConfigError, match="'args' may not set 'data_root'"):
        build(spec, "config_train.json: dataset", data_root=Path("/data"))


def test_digits_cnn_is_small_and_classifies_8x8_images() -> None:
    model = DigitsCNN()
    parameters = sum(p.numel() for p in model.parameters())
    assert 10_000 < parameters < 100_000
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


@pytest.mark.parametrize(
    ("layers", "expected"),
    [(1, 64 * 10 + 10), (2, 64 * 32 + 32 + 32 * 10 + 10), (3, 64 * 32 + 32 + 32 * 32 + 32 + 330)],
)
def test_mlp_size_follows_its_arguments(layers: int, expected: int) -> None:
    model = MLP(in_features=64, hidden=32, out_features=10, layers=layers)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"layers": 0}, "MLP: layers must be a positive integer, got 0"),
        ({"hidden": 2.5}, "MLP: hidden must be a positive integer, got 2.5"),
        ({"in_features": True}, "MLP: in_features must be a positive integer, got True"),
        ({"layers": 1025}, "MLP: 1,025 layers is more than the 1,024 allowed; use fewer layers"),
        (
            {"hidden": 2**15, "layers": 3},
            "MLP: 1,074,003,970 parameters is more than the 536,870,912 allowed; "
            "make hidden or layers smaller",
        ),
    ],
)
def test_mlp_refuses_bad_and_too_large_sizes_before_allocating(
    args: dict[str, object], message: str
) -> None:
    """An app of built-ins runs at a site unapproved: MLP(layers=0) reached the admin as an
    unexpected ValueError, and a large ``hidden`` took the site's memory."""
    sizes: dict[str, object] = {"in_features": 4, "hidden": 4, "out_features": 2, **args}
    with pytest.raises(ConfigError) as failure:
        MLP(**sizes)  # type: ignore[arg-type]
    assert str(failure.value) == message


@pytest.mark.parametrize(
    ("args", "parameters"), [({}, 38_282), ({"num_classes": 3, "channels": 5, "hidden": 7}, 1_661)]
)
def test_digits_cnn_counts_its_parameters_before_building(
    args: dict[str, int], parameters: int
) -> None:
    """The count the cap is checked against is the one the model ends up with."""
    model = DigitsCNN(**args)
    assert sum(p.numel() for p in model.parameters()) == parameters
    too_many = f"DigitsCNN: {parameters:,} parameters is more than"
    with (
        mock.patch("flapp.models.MAX_PARAMETERS", parameters - 1),
        pytest.raises(ConfigError, match=too_many),
    ):
        DigitsCNN(**args)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"channels": 0}, "DigitsCNN: channels must be a positive integer, got 0"),
        ({"hidden": 2**20}, "DigitsCNN: 548,410,058 parameters is more than the 536,870,912"),
    ],
)
def test_digits_cnn_refuses_bad_and_too_large_sizes(args: dict[str, int], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        DigitsCNN(**args)


def write_split(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y)


def test_npz_classification_loads_both_splits(tmp_path: Path) -> None:
    write_split(
        tmp_path / "train.npz", np.ones((6, 1, 8, 8), np.float64), np.arange(6, dtype=np.int32)
    )
    write_split(tmp_path / "held" / "v.npz", np.zeros((2, 3), np.float32), np.array([1, 0]))
    data = NpzClassification(tmp_path, validation="held/v.npz")
    assert len(data.train) == 6 and len(data.validation) == 2
    x, y = data.train[5]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert y.dtype == torch.int64 and int(y) == 5


def test_a_missing_file_names_the_file_and_data_root(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as failure:
        NpzClassification(tmp_path)
    assert str(failure.value) == (
        f"dataset file {tmp_path / 'train.npz'} is missing (DATA_ROOT is {tmp_path})"
    )


def test_relative_files_need_a_data_root() -> None:
    with pytest.raises(ConfigError, match="this site has no DATA_ROOT set"):
        NpzClassification(None)


@pytest.mark.parametrize("name", ["/etc/shadow", "../outside.npz", "held/../../outside.npz"])
def test_a_dataset_file_outside_data_root_is_refused_unread(tmp_path: Path, name: str) -> None:
    """A built-in-only app runs without the site's approval: it read any .npz the service
    user could, and its errors told the server which paths exist."""
    root = tmp_path / "data"
    root.mkdir()
    write_split(tmp_path / "outside.npz", np.ones((2, 2), np.float32), np.ones(2, np.int64))
    with pytest.raises(ConfigError, match="must be a path inside DATA_ROOT"):
        NpzClassification(root, train=name)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.ones((3, 2), np.float32), np.ones(2, np.int64), "'x' has 3 samples but 'y' has 2"),
        (np.ones((3, 2), np.int64), np.ones(3, np.int64), "'x' must be a float array"),
        (np.ones((3, 2), np.float32), np.ones(3, np.float32), "'y' must be a 1-D integer array"),
        (np.ones((0, 2), np.float32), np.ones(0, np.int64), "holds no samples"),
    ],
)
def test_bad_arrays_are_refused(tmp_path: Path, x: np.ndarray, y: np.ndarray, message: str) -> None:
    write_split(tmp_path / "train.npz", x, y)
    write_split(tmp_path / "val.npz", x, y)
    with pytest.raises(ConfigError, match=message):
        NpzClassification(tmp_path)


def damaged(path: Path, how: str) -> None:
    """Write at ``path`` an .npz file that is broken in the way ``how`` names."""
    write_split(path, np.ones((2, 2), np.float32), np.ones(2, np.int64))
    data = path.read_bytes()
    if how == "cut short":
        path.write_bytes(data[: len(data) // 2])
    else:  # the local header of 'x.npy' names another file, which zipfile's error quotes
        path.write_bytes(data.replace(b"x.npy", b"Q.npy", 1))


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("cut short", "it is no zip archive, or a damaged one (numpy.savez writes them)"),
        ("renamed in its header", "it is no zip archive, or a damaged one"),
    ],
)
def test_a_damaged_npz_is_refused_without_quoting_its_bytes(
    tmp_path: Path, how: str, why: str
) -> None:
    """zipfile's error went uncaught, and its message (which reaches the server) quoted
    bytes of the site's file."""
    damaged(tmp_path / "train.npz", how)
    with pytest.raises(ConfigError) as failure:
        NpzClassification(tmp_path)
    message = str(failure.value)
    assert message.startswith(f"dataset file {tmp_path / 'train.npz'}: cannot read it as .npz: ")
    assert why in message and "Q.npy" not in message


def test_a_npy_file_is_refused_unread(tmp_path: Path) -> None:
    """np.load read a .npy file whole, and then failed on it with a TypeError."""
    np.save(tmp_path / "train.npy", np.ones((2, 2), np.float32))
    with (
        mock.patch("numpy.lib.format.read_array", side_effect=AssertionError("read")),
        pytest.raises(ConfigError, match=r"train.npy is no .npz archive .* numpy.savez$"),
    ):
        NpzClassification(tmp_path, train="train.npy")


@pytest.mark.parametrize("name", [5, None, ["train.npz"]])
def test_a_file_name_must_be_a_string(tmp_path: Path, name: object) -> None:
    with pytest.raises(
        ConfigError, match="must be a file name \\(a string\\) relative to DATA_ROOT"
    ):
        NpzClassification(tmp_path, train=name)  # type: ignore[arg-type]


def test_pickled_arrays_are_refused(tmp_path: Path) -> None:
    objects = np.array([{"a": 1}, None], dtype=object)
    write_split(tmp_path / "train.npz", objects, np.ones(2, np.int64))
    with pytest.raises(ConfigError, match=re.escape("cannot read it as .npz")):
        NpzClassification(tmp_path)


@pytest.mark.parametrize(
    ("spec", "args", "message"),
    [
        (
            ComponentSpec("torch.optim.SGD", {"lr": "x"}),
            ([torch.nn.Parameter(torch.zeros(2))],),
            "'torch.optim.SGD' could not be built from its args: .*correct them in the config",
        ),
        (
            ComponentSpec("torch.nn.Linear", {"in_features": -1, "out_features": 2}),
            (),
            "'torch.nn.Linear' could not be built from its args: .*negative dimension",
        ),
    ],
)
def test_a_factory_that_refuses_its_values_is_a_config_error(
    spec: ComponentSpec, args: tuple[object, ...], message: str
) -> None:
    """A built-in app's bad value reached the admin as "an error it did not expect,
    TypeError (...)" instead of a sentence about the config."""
    with pytest.raises(ConfigError, match=f"^config_train.json: x: {message}"):
        build(spec, "config_train.json: x", *args)


def test_a_custom_factory_that_refuses_its_values_is_left_as_it_is() -> None:
    """Outside the built-ins such an error may be a bug in the code, which its traceback
    shows (the model-init child prints none for a config error)."""
    with pytest.raises(ValueError, match="Invalid literal for Fraction") as failure:
        build(ComponentSpec("fractions.Fraction", {"numerator": "x"}), "config_train.json: x")
    assert not isinstance(failure.value, ConfigError)


def test_a_config_error_of_a_factory_reaches_the_admin_as_it_is(tmp_path: Path) -> None:
    spec = ComponentSpec("flapp.datasets.NpzClassification")
    with pytest.raises(ConfigError, match=r"^dataset file .* is missing"):
        build(spec, "config_train.json: dataset", data_root=tmp_path)


def test_a_torch_nn_module_too_large_for_a_built_in_app_is_refused_before_it_is_made() -> None:
    """torch.nn modules count as built-in (an app of them runs without the site's approval),
    and nothing capped their sizes: Linear(2**20, 2**20) would take 4 TiB."""
    where = "config_train.json: model"
    huge = ComponentSpec("torch.nn.Linear", {"in_features": 2**20, "out_features": 2**20})
    too_many = rf"^{where}: 'torch.nn.Linear': 1,099,512,676,352 values is more than the"
    with pytest.raises(ConfigError, match=too_many):
        build(huge, where)
    small = build(ComponentSpec("torch.nn.Linear", {"in_features": 4, "out_features": 2}), where)
    assert isinstance(small, torch.nn.Linear) and small.weight.device.type == "cpu"
