"""flapp.runtime.monaibundle: a MONAI bundle's network, and the bundle trained and evaluated
through MONAI's FL client (MonaiAlgo), in process on a tiny copy of the seg3d data."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from flcore.appconfig import BundleConfig, load_app
from flcore.schema import ConfigError

UNet = pytest.importorskip("monai.networks.nets").UNet
pytest.importorskip("ignite")
pytest.importorskip("nibabel")
prepare_data = importlib.import_module("examples.seg3d.prepare_data")
monaibundle = importlib.import_module("flapp.runtime.monaibundle")
modelinit = importlib.import_module("flapp.runtime.modelinit")
workbench = importlib.import_module("flclientd.worker.workbench")
ranks = importlib.import_module("flclientd.worker.ranks")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_APP = ROOT / "examples" / "apps" / "seg3d_bundle"
BUNDLE = "seg3d_bundle"
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def clean_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The bundle's folder goes on sys.path, and a test's bundle imports its own 'scripts'."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("scripts", None)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One site's data list: two 16^3 training volumes and one for validation."""
    out = tmp_path_factory.mktemp("seg3d")
    args = ["--sites", "site", "--out", str(out), "--size", "16", "--train", "2", "--val", "1"]
    assert prepare_data.main(args) == 0
    return out / "site"


@pytest.fixture
def app(tmp_path: Path) -> Path:
    return shutil.copytree(BUNDLE_APP, tmp_path / "app")


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_first_global_model_is_the_bundles_network(app: Path, tmp_path: Path) -> None:
    network = monaibundle.bundle_network(app / "resources" / BUNDLE, BundleConfig(BUNDLE))
    assert isinstance(network, UNet)
    modelinit.init_model(app, tmp_path / "model.safetensors")
    assert load_file(tmp_path / "model.safetensors").keys() == network.state_dict().keys()


def test_a_bundle_trains_and_evaluates_the_weights_it_is_given(
    app: Path, data: Path, tmp_path: Path
) -> None:
    resources = files_of(app / "resources")
    learner = monaibundle.BundleLearner(
        app / "resources" / BUNDLE, BundleConfig(BUNDLE), data, tmp_path / "work", CPU
    )
    assert (learner.train_samples, learner.val_samples) == (2, 1)
    network = monaibundle.bundle_network(app / "resources" / BUNDLE, BundleConfig(BUNDLE))
    initial = {name: tensor.clone() for name, tensor in learner.state().items()}
    assert initial.keys() == network.state_dict().keys()

    before = learner.validate()
    assert list(before) == ["val_dice"] and 0.0 <= before["val_dice"] <= 1.0
    metrics = learner.train(0, 1)
    assert {"train_dice", "train_loss"} <= metrics.keys()
    trained = learner.state()
    assert any(not torch.equal(trained[name], initial[name]) for name in initial)

    learner.load(initial)
    assert learner.validate() == before, "evaluate judged other weights than those loaded"
    assert (tmp_path / "work" / monaibundle.BUNDLE_COPY / "configs" / "train.json").is_file()
    assert files_of(app / "resources") == resources, "the approved app was written to"


def test_a_bundle_imports_its_own_scripts_as_under_monai_bundle_run(app: Path) -> None:
    bundle = app / "resources" / BUNDLE
    (bundle / "scripts").mkdir()
    (bundle / "scripts" / "__init__.py").write_text(
        "from monai.networks.nets import UNet as SphereNet\n"
    )
    train = json.loads((bundle / "configs" / "train.json").read_text())
    train["imports"].append("$import scripts")
    train["network_def"]["_target_"] = "scripts.SphereNet"
    (bundle / "configs" / "train.json").write_text(json.dumps(train))
    assert isinstance(monaibundle.bundle_network(bundle, BundleConfig(BUNDLE)), UNet)


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("net", "defines no 'net' (set 'network' to the id of the network definition)"),
        ("val_interval", "'val_interval' is a int, not a torch.nn.Module"),
    ],
)
def test_a_network_id_that_names_no_network_is_refused(
    app: Path, network: str, message: str
) -> None:
    config = BundleConfig(BUNDLE, network=network)
    with pytest.raises(ConfigError) as info:
        monaibundle.bundle_network(app / "resources" / BUNDLE, config)
    assert str(info.value).startswith("config_train.json: bundle 'seg3d_bundle': ")
    assert str(info.value).endswith(message)


def test_a_bundle_app_is_refused_for_several_ranks(app: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="runs in one process here; start this site with"):
        workbench.open_learner(load_app(app), data, tmp_path, ranks.Ranks(0, 0, 2), CPU)


def test_a_site_without_monai_is_told_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "monai.fl.client", None)
    spec = importlib.util.spec_from_file_location("monaibundle_probe", monaibundle.__file__)
    assert spec is not None and spec.loader is not None
    with pytest.raises(ConfigError) as info:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert "MONAI is not installed here" in str(info.value)
    assert str(info.value).endswith("install it with: pip install 'flstack[monai]'")
