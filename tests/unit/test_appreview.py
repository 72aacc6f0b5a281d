"""flcore.appreview: the digest a site approves an app by, and what in an app is custom code."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from flcore.appreview import app_digest, app_files, is_built_in, review_app
from flcore.folders import FolderError, FolderReceiver, iter_chunks
from fldev.cluster import APPS


def _app(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _digest(root: Path) -> str:
    return app_digest(app_files(root))


def test_the_digest_is_the_documented_framing(tmp_path: Path) -> None:
    """Pins the format that docs/security.md and the module docstring describe: a site
    or an app's author can compute it with any SHA-256 tool."""
    files = {"resources/b.py": b"print(2)\n", "config/a.json": b"{}", "resources/a.py": b""}
    root = _app(tmp_path / "app", files)
    expected = hashlib.sha256(b"flstack-app-v1\0")
    for rel in sorted(files, key=str.encode):
        expected.update(len(rel.encode()).to_bytes(8, "big") + rel.encode())
        expected.update(len(files[rel]).to_bytes(8, "big") + files[rel])
    assert _digest(root) == expected.hexdigest()


@pytest.mark.parametrize(
    "change",
    [
        {"resources/m.py": b"print(2)\n"},  # a changed file
        {"resources/n.py": b""},  # an added empty file
        {"resources/data.bin": b"\x00"},  # any file counts, code or not
    ],
)
def test_any_change_changes_the_digest(tmp_path: Path, change: dict[str, bytes]) -> None:
    base = {"config/config_train.json": b"{}", "resources/m.py": b"print(1)\n"}
    before = _digest(_app(tmp_path / "a", base))
    assert _digest(_app(tmp_path / "b", {**base, **change})) != before


def test_moving_bytes_between_a_name_and_its_content_changes_the_digest(tmp_path: Path) -> None:
    assert _digest(_app(tmp_path / "a", {"resources/ab": b"c"})) != _digest(
        _app(tmp_path / "b", {"resources/a": b"bc"})
    )
    assert _digest(_app(tmp_path / "c", {"resources/x": b"1", "resources/y": b""})) != _digest(
        _app(tmp_path / "d", {"resources/x": b"", "resources/y": b"1"})
    )


def test_a_renamed_file_changes_the_digest(tmp_path: Path) -> None:
    assert _digest(_app(tmp_path / "a", {"resources/a.py": b"x"})) != _digest(
        _app(tmp_path / "b", {"resources/b.py": b"x"})
    )


def test_files_outside_config_and_resources_do_not_count(tmp_path: Path) -> None:
    root = _app(tmp_path / "app", {"config/a.json": b"{}"})
    before = _digest(root)
    _app(root, {".app_name": b"x\n", "README.md": b"notes"})
    assert _digest(root) == before


def test_links_are_refused(tmp_path: Path) -> None:
    root = _app(tmp_path / "app", {"config/a.json": b"{}"})
    (root / "resources").mkdir()
    (root / "resources" / "link.py").symlink_to(tmp_path / "elsewhere.py")
    with pytest.raises(FolderError, match=r"resources/link\.py is a symbolic link"):
        app_files(root)


def test_server_and_site_compute_the_same_digest_for_what_travelled(tmp_path: Path) -> None:
    """The digest the server prints at upload is the one a site sees after deploy."""
    source = shutil.copytree(APPS / "digits_custom", tmp_path / "source")
    receiver = FolderReceiver(tmp_path / "received", 10 * 1024 * 1024)
    for rel, offset, data, eof in iter_chunks(source):
        receiver.write(rel, offset, data, eof)
    receiver.finish()
    assert _digest(receiver.staging) == _digest(source)


@pytest.mark.parametrize(
    "path",
    [
        "torch.nn.CrossEntropyLoss",
        "torch.optim.Adam",
        "flapp.models.DigitsCNN",
        "flapp.datasets.NpzClassification",
        "flapp.trainer.SupervisedTrainer",
        "flapp.DigitsCNN",
        "flcore.models.DigitsCNN",
    ],
)
def test_built_in_components(path: str) -> None:
    assert is_built_in(path)


@pytest.mark.parametrize(
    "path",
    [
        "torch.hub.load",  # fetches and runs code from the internet
        "torch.nn.functional.torch.hub.load",  # one attribute more reaches it again
        "torch.optim.sgd.torch.hub.load",
        "torch.utils.cpp_extension.load_inline",  # compiles and runs C++ from its arguments
        "torch.load",
        "flapp.runtime.components.import_object",
        "flapp.models.torch.hub.load",
        "os.system",
        "digits_custom.model.ResidualDigitsNet",
        "torch.nn._private",
        "torch.nn",
    ],
)
def test_everything_else_is_custom_code(path: str) -> None:
    assert not is_built_in(path)


def test_an_app_of_built_in_components_needs_no_approval() -> None:
    review = review_app(APPS / "digits_fedavg", "digits_fedavg")
    assert not review.needs_approval and review.custom_code() == []
    assert review.short == f"sha256:{review.digest[:12]}"


def test_custom_code_is_listed_file_by_file_and_component_by_component() -> None:
    review = review_app(APPS / "digits_custom", "digits_custom")
    assert review.needs_approval
    assert review.custom_code() == [
        "code file resources/digits_custom/__init__.py",
        "code file resources/digits_custom/model.py",
        "code file resources/digits_custom/trainer.py",
        "component model: digits_custom.model.ResidualDigitsNet",
        "component trainer: digits_custom.trainer.ShiftAugmentingTrainer",
    ]
    assert review.waiting == f"waiting for approval of app digits_custom {review.short}"


def test_a_monai_bundle_always_needs_approval() -> None:
    """A bundle's configs build any class and run their "$..." expressions, even without
    a Python file in the app."""
    review = review_app(APPS / "seg3d_bundle", "seg3d_bundle")
    assert review.needs_approval
    assert review.custom_code() == [
        "component bundle: resources/seg3d_bundle (its configs run as code)"
    ]


@pytest.mark.parametrize("name", ["native.cpython-311-x86_64-linux-gnu.so", "mod.pyc", "x.abi3.so"])
def test_compiled_code_counts_as_code(tmp_path: Path, name: str) -> None:
    root = shutil.copytree(APPS / "digits_fedavg", tmp_path / "app")
    (root / "resources" / name).write_bytes(b"\x7fELF")
    review = review_app(root, "app")
    assert review.code_files == (f"resources/{name}",)


def test_a_built_in_component_path_that_leaves_its_module_needs_approval(tmp_path: Path) -> None:
    root = shutil.copytree(APPS / "digits_fedavg", tmp_path / "app")
    train = root / "config" / "config_train.json"
    train.write_text(train.read_text().replace("flapp.models.DigitsCNN", "torch.hub.load"))
    assert review_app(root, "app").custom_code() == ["component model: torch.hub.load"]
