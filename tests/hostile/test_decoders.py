"""Every hostile payload of the corpus, fed to every decoder and loader that could meet it.

Each is refused with a clear error (never a RecursionError, MemoryError or an
exception's class name), before it takes memory: tracemalloc bounds what a
refusal may allocate, far below what the payload declares. The cases that
travel over the network are sent to real daemons in test_wire.py.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from fladmin.client import _from_wire
from flapp.models import MLP
from flapp.runtime.modelfile import load_state, state_manifest
from flapp.runtime.modelinit import read_checkpoint
from flclientd.approvals import ApprovalError, ApprovalList
from flclientd.runner import TrainingProcess
from flclientd.serde import downward_from_proto
from flclientd.worker.protocol import decode
from flcore import appconfig, startup
from flcore.appreview import review_app
from flcore.configfile import MAX_DEPTH, parse_json
from flcore.feed import MAX_TEXT, MAX_TRACEBACK
from flcore.feedwire import client_from_proto
from flcore.feedwire import log_from_proto as feed_log_from_proto
from flcore.folders import FolderError, FolderReceiver
from flcore.kitsig import KitSignatureError, verify_startup
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.proto.gen import flstack_federation_pb2 as fed_pb2
from flcore.schema import ConfigError
from flcore.tensorfile import Manifest, SpoolWriter, TensorFile, TensorFileError, TensorSpec
from flcore.wire import manifest_from_proto
from fldev.cluster import APPS
from flserverd.serde import SITE_DATA_DEPTH, upward_from_proto
from flserverd.transfer import TransferError, check_app_name
from provision import ProvisionError, extract_kit, load_project, read_kit
from tests.hostile import payloads
from tests.hostile.payloads import (
    CLASS_NAMING,
    HOSTILE_PATHS,
    HUNDRED_MB,
    LYING_SAFETENSORS,
    TWO_POW_40,
    class_naming_json,
    deep_json,
    pickle_that_runs_code,
    sparse_file,
)

ALLOCATION_BOUND = 16 * 1024 * 1024
"""What refusing any payload may allocate: a fraction of what each declares (1 TiB, 1 GiB,
100 MB)."""


def refused(call: Callable[[], object], errors: type | tuple[type, ...], match: str) -> str:
    """Run ``call``, insist it raises one of ``errors`` matching ``match`` within the
    allocation bound, and return the message."""
    tracemalloc.start()
    try:
        with pytest.raises(errors, match=match) as raised:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND, f"refusing took {peak:,} bytes"
    message = str(raised.value)
    assert "Traceback" not in message and "RecursionError" not in message
    return message


# --------------------------------------------------------------------------- a pickle


@pytest.fixture
def evil(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A pickle file that would create ``marker``, and the marker's path."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle_that_runs_code(marker))
    yield path, marker
    assert not marker.exists(), "a decoder ran the pickle's code"


def test_the_pickle_would_really_run_code(tmp_path: Path) -> None:
    """Proof that the payload is live: an ordinary unpickler (in another interpreter, since
    nothing in flstack may import pickle) creates the marker."""
    marker = tmp_path / "pwned"
    subprocess.run(
        [sys.executable, "-c", "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle_that_runs_code(marker),
        check=True,
    )
    assert marker.exists()


def test_a_pickle_as_initial_checkpoint_is_refused_in_plain_words(evil: tuple[Path, Path]) -> None:
    message = refused(lambda: read_checkpoint(evil[0]), ConfigError, "cannot read it")
    assert "holds Python objects other than tensors, which flstack never loads" in message
    assert "\x1b" not in message and "weights_only=False" not in message


def test_a_pickle_named_like_a_safetensors_file_is_refused(evil: tuple[Path, Path]) -> None:
    renamed = evil[0].rename(evil[0].with_suffix(".safetensors"))
    refused(lambda: read_checkpoint(renamed), ConfigError, "cannot read it")
    refused(lambda: TensorFile(renamed), TensorFileError, "out of bounds|not valid JSON")


@pytest.mark.parametrize(
    "loader",
    [
        lambda p: appconfig.read_json(p),
        lambda p: parse_json(p.read_bytes(), "message"),
        lambda p: decode(p.read_bytes()),
    ],
)
def test_a_pickle_where_json_is_expected_is_refused(
    evil: tuple[Path, Path], loader: Callable[[Path], object]
) -> None:
    refused(lambda: loader(evil[0]), ConfigError, "not valid JSON|not UTF-8")


# --------------------------------------------------------------------------- classes by name


def test_a_message_naming_classes_is_plain_data_for_the_peer_decoders() -> None:
    """What a FOBS- or jsonpickle-style decoder would build is, here, a dict of strings."""
    assert decode(class_naming_json().encode()) == CLASS_NAMING
    message = fed_pb2.ClientMessage(
        result=fed_pb2.CommandResult(command_id="1", ok=True, data_json=class_naming_json())
    )
    assert upward_from_proto(message, "site").data == CLASS_NAMING  # type: ignore[union-attr]
    command = fed_pb2.ServerMessage(
        command=fed_pb2.ServerCommand(command_id="2", name="deploy", args_json=class_naming_json())
    )
    assert downward_from_proto(command).args == CLASS_NAMING  # type: ignore[union-attr]
    reply = admin_pb2.CommandReply(ok=True, text="t", data_json=class_naming_json())
    assert _from_wire("x", reply).data == CLASS_NAMING


def test_a_config_naming_classes_is_refused_or_held_for_approval(tmp_path: Path) -> None:
    app = shutil.copytree(APPS / "digits_fedavg", tmp_path / "app")
    train = app / "config" / appconfig.TRAIN_CONFIG
    original = json.loads(train.read_text())
    train.write_text(json.dumps({**original, **CLASS_NAMING}))
    refused(lambda: appconfig.load_app(app), ConfigError, "unknown key '__class__'")
    original["model"] = {"path": "os.system", "args": {"command": "touch /tmp/flstack-pwned"}}
    train.write_text(json.dumps(original))
    appconfig.load_app(app)  # a dotted path is a string: nothing is imported here
    assert review_app(app, "app").custom_code() == ["component model: os.system"]


def test_an_approvals_file_naming_classes_approves_nothing(tmp_path: Path) -> None:
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "approved_apps.json").write_text(class_naming_json())
    refused(lambda: ApprovalList(tmp_path).allows("ab" * 32), ApprovalError, "unknown key")


# --------------------------------------------------------------------------- paths and names


@pytest.mark.parametrize("case", sorted(HOSTILE_PATHS))
def test_hostile_upload_paths_are_refused_and_nothing_lands_outside(
    tmp_path: Path, case: str
) -> None:
    receiver = FolderReceiver(tmp_path / "box" / "staging", 1 << 20)
    message = refused(lambda: receiver.write(HOSTILE_PATHS[case], 0, b"x", True), FolderError, ".")
    assert len(message) < 300  # a 10 KB path is quoted, not repeated
    receiver.discard()
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["box"]


@pytest.mark.parametrize("name", ["../x", "a/b", "", "a\0b", "x\n", "\x1b[2J", "n" * 300])
def test_hostile_app_names_are_refused(name: str) -> None:
    refused(lambda: check_app_name(name), TransferError, "app name")


@pytest.mark.parametrize("name", ["", "a\0b", "w\nx", "\x1b[2J", "n" * 2000])
def test_hostile_tensor_names_are_refused(name: str) -> None:
    spec = TensorSpec(name, "F32", (1,))
    refused(spec.check, TensorFileError, "must be 1-1024 printable characters")


def test_a_tensor_named_like_the_metadata_is_refused_before_a_byte_arrives() -> None:
    """Written into a spool, its entry would become the file's metadata: an empty one
    vanished from the model, a full one failed only once every byte had come."""
    refused(
        TensorSpec("__metadata__", "F32", (0,)).check,
        TensorFileError,
        "may not be named '__metadata__'",
    )


def test_an_unknown_dtype_of_megabytes_is_not_repeated_in_the_refusal() -> None:
    """The refusal becomes a log line and the site's verdict: it must stay a sentence."""
    message = refused(TensorSpec("w", "X" * 3_000_000, (1,)).check, TensorFileError, "unknown")
    assert len(message) < 300


def test_feed_strings_cannot_reach_a_terminal_as_escapes() -> None:
    row = client_from_proto(
        admin_pb2.ClientState(instance="a\x1b]0;pwned\x07", error="\x1b[2J\x9b31m", detail="\0")
    )
    assert "\x1b" not in row.instance + row.error and "\x9b" not in row.error
    assert "\0" not in row.detail


def test_the_console_keeps_no_more_of_a_string_than_the_server_itself_would() -> None:
    """A broken server's megabyte strings were kept whole: 5,000 log lines of 4 MiB each."""
    mib = "x" * (1 << 20)
    row = client_from_proto(admin_pb2.ClientState(instance="a", error=mib, traceback=mib + "End"))
    assert len(row.error) <= MAX_TEXT and "characters cut" in row.error
    assert len(row.traceback) <= MAX_TRACEBACK and row.traceback.endswith("End")
    line = feed_log_from_proto(common_pb2.LogRecord(time=1.0, message=mib, source=mib))
    assert len(line.message) <= MAX_TEXT and len(line.source) <= MAX_TEXT


# --------------------------------------------------------------------------- 2^40 bytes


def test_a_manifest_of_2_pow_40_bytes_is_refused_before_allocation(tmp_path: Path) -> None:
    message = refused(
        lambda: manifest_from_proto(payloads.huge_manifest()),
        TensorFileError,
        "more than a model may hold",
    )
    assert f"{TWO_POW_40:,}" in message
    huge = Manifest((TensorSpec("w", "U8", (TWO_POW_40,)),))
    refused(
        lambda: SpoolWriter(tmp_path / "spool.safetensors", huge),
        TensorFileError,
        "more than a model may hold",
    )
    assert not (tmp_path / "spool.safetensors").exists()


def test_chunks_past_their_tensor_are_refused() -> None:
    writer = SpoolWriter(Path("/dev/null"), Manifest((TensorSpec("w", "F32", (2,)),)))
    refused(lambda: writer.write("w", 0, bytes(4 * 3)), TensorFileError, "runs past")
    refused(lambda: writer.write("w", TWO_POW_40, bytes(4)), TensorFileError, "expected byte 0")
    refused(lambda: writer.write("other", 0, bytes(4)), TensorFileError, "expected a chunk")


# --------------------------------------------------------------------------- lying safetensors


@pytest.mark.parametrize("case", sorted(LYING_SAFETENSORS))
def test_lying_safetensors_are_refused_by_every_reader(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(LYING_SAFETENSORS[case])
    refused(lambda: TensorFile(path), TensorFileError, ".")
    model = MLP(in_features=4, hidden=2, out_features=2)
    expected = state_manifest(model.state_dict())
    refused(lambda: load_state(model, path, expected), TensorFileError, ".")  # the children
    refused(lambda: read_checkpoint(path), ConfigError, "cannot read it")  # initial_checkpoint


# --------------------------------------------------------------------------- deep JSON


@pytest.mark.parametrize(
    ("decoder", "errors"),
    [
        (lambda text, root: parse_json(text, "f.json"), ConfigError),
        (lambda text, root: decode(text.encode()), ValueError),
        (lambda text, root: startup_from(text, root), ConfigError),
        (lambda text, root: approvals_from(text, root), ApprovalError),
        (lambda text, root: app_config_from(text, root), ConfigError),
    ],
    ids=["config", "worker socket", "kit startup", "approvals", "app config"],
)
def test_deeply_nested_json_is_refused(
    tmp_path: Path, decoder: Callable[[str, Path], object], errors: type[Exception]
) -> None:
    text = deep_json()
    refused(lambda: decoder(text, tmp_path), errors, "nested more than")


def test_deeply_nested_json_from_peers_is_read_as_nothing() -> None:
    deep = deep_json()
    result = fed_pb2.ClientMessage(result=fed_pb2.CommandResult(command_id="1", data_json=deep))
    assert upward_from_proto(result, "site").data == {}  # type: ignore[union-attr]
    command = fed_pb2.ServerMessage(command=fed_pb2.ServerCommand(command_id="2", args_json=deep))
    assert downward_from_proto(command).reason == "malformed command arguments"  # type: ignore[union-attr]
    read = _from_wire("x", admin_pb2.CommandReply(ok=True, text="done\n", data_json=deep))
    assert read.data == {}  # and the admin is told, not shown an "ok" reply with no data
    assert read.text.startswith("done\n(this reply's data cannot be read: reply data: nested")


def test_a_site_nested_to_the_limit_cannot_blank_every_sites_data_in_a_reply() -> None:
    """The server took a site's data nested to the very limit, then put it two levels
    deeper in its reply, which the admin's client then refused whole: every site's data of
    a check_status client was gone."""

    def result(depth: int) -> object:
        nested = "{}" if depth == 1 else '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)
        message = fed_pb2.ClientMessage(
            result=fed_pb2.CommandResult(command_id="1", ok=True, data_json=nested)
        )
        return upward_from_proto(message, "site").data  # type: ignore[union-attr]

    assert result(SITE_DATA_DEPTH) != {} and result(SITE_DATA_DEPTH + 1) == {}
    wrapped = json.dumps({"clients": {"site": result(SITE_DATA_DEPTH), "b": {"ok": True}}})
    read = _from_wire("x", admin_pb2.CommandReply(ok=True, data_json=wrapped))
    assert read.data["clients"]["b"] == {"ok": True} and SITE_DATA_DEPTH + 2 < MAX_DEPTH


def test_a_training_child_speaking_deep_json_is_killed_not_followed(tmp_path: Path) -> None:
    """The daemon's end of the worker socket: a hostile line ends the child, and the
    daemon's reader neither recurses nor hangs."""

    async def scenario() -> list[str]:
        process = TrainingProcess(tmp_path, tmp_path, None)
        killed: list[str] = []
        process.kill = lambda: killed.append("killed")  # type: ignore[method-assign]
        ours, theirs = socket.socketpair()
        theirs.sendall(deep_json(50_000).encode() + b"\n")
        theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        process._on_connect(reader, writer)  # reads in a task of its own
        assert process._reader_task is not None
        await asyncio.wait_for(process._reader_task, 10)
        return killed

    assert asyncio.run(scenario()) == ["killed"]


TEMPLATE = Path(__file__).resolve().parents[2] / "examples" / "apps" / "digits_fedavg"


def _client_workspace(root: Path) -> Path:
    (root / "startup").mkdir(parents=True)
    (root / "startup" / "client.key").write_text("key")
    (root / "startup" / "client.key").chmod(0o600)
    return root


def startup_from(text: str, root: Path) -> object:
    workspace = _client_workspace(root / "ws")
    (workspace / "startup" / startup.CLIENT_FILE).write_text(text)
    return startup.load_client(workspace)


def approvals_from(text: str, root: Path) -> object:
    (root / "local").mkdir()
    (root / "local" / "approved_apps.json").write_text(text)
    return ApprovalList(root).allows("ab" * 32)


def app_config_from(text: str, root: Path) -> object:
    app = shutil.copytree(TEMPLATE, root / "app")
    (app / "config" / appconfig.TRAIN_CONFIG).write_text(text)
    return appconfig.load_app(app)


# --------------------------------------------------------------------------- 100 MB files


@pytest.mark.parametrize(
    ("where", "load", "errors"),
    [
        (
            "app/config/config_train.json",
            lambda root: appconfig.load_app(root / "app"),
            ConfigError,
        ),
        ("ws/startup/fed_client.json", lambda root: startup.load_client(root / "ws"), ConfigError),
        ("ws/local/fed_client.json", lambda root: startup.load_client(root / "ws"), ConfigError),
        (
            "ws/local/approved_apps.json",
            lambda root: ApprovalList(root / "ws").allows("ab" * 32),
            ApprovalError,
        ),
        (
            "ws/startup/signature.json",
            lambda root: verify_startup(root / "ws" / "startup"),
            KitSignatureError,
        ),
        (
            "project.yml",
            lambda root: load_project(root / "project.yml"),
            (ConfigError, ProvisionError),
        ),
    ],
)
def test_a_100_mb_file_is_refused_before_it_is_read(
    tmp_path: Path, where: str, load: Callable[[Path], Any], errors: type | tuple[type, ...]
) -> None:
    shutil.copytree(TEMPLATE, tmp_path / "app")
    _client_workspace(tmp_path / "ws")
    (tmp_path / "ws" / "startup" / startup.CLIENT_FILE).write_text(
        startup.to_json(startup.ClientStartup("p", "c", "h", 1, 6.0))
    )
    sparse_file(tmp_path / where)
    refused(lambda: load(tmp_path), errors, f"{HUNDRED_MB:,} bytes|more than")


# --------------------------------------------------------------------------- zip bombs


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bombs")
    return {
        "honest": payloads.zip_bomb(folder / "honest.zip"),
        "lying": payloads.lying_zip_bomb(folder / "lying.zip"),
    }


@pytest.mark.parametrize("kind", ["honest", "lying"])
def test_a_zip_bomb_as_a_kit_is_refused_before_it_inflates(
    tmp_path: Path, bombs: dict[str, Path], kind: str
) -> None:
    refused(
        lambda: extract_kit(bombs[kind], "x", tmp_path / "dest"),
        ProvisionError,
        "more than any kit file|not a readable zip|is not encrypted with the kit's password",
    )
    assert not (tmp_path / "dest").exists()
    # A kit without a key (the CSR flow's) has no password: there its sizes refuse it.
    refused(
        lambda: read_kit(bombs[kind], None),
        ProvisionError,
        "more than any kit file|not a readable zip",
    )


def test_a_zip_bomb_inside_an_upload_is_kept_as_the_bytes_it_is(
    tmp_path: Path, bombs: dict[str, Path]
) -> None:
    """flstack never unpacks what an app carries: the bomb lands as its own compressed
    bytes, inside the upload limit, and counts toward the app's digest like any file."""
    receiver = FolderReceiver(tmp_path / "staging", 8 * 1024 * 1024)
    data = bombs["honest"].read_bytes()
    tracemalloc.start()
    try:
        receiver.write("resources/data.zip", 0, data, True)
        receiver.finish()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATION_BOUND
    assert (tmp_path / "staging" / "resources" / "data.zip").read_bytes() == data
    small = FolderReceiver(tmp_path / "small", 512 * 1024)
    refused(lambda: small.write("resources/data.zip", 0, data, True), FolderError, "limit")


def test_checkpoints_of_plain_tensors_still_load(tmp_path: Path) -> None:
    """The refusals above are not a refusal of everything: a state dict saved by torch
    loads."""
    path = tmp_path / "good.pt"
    state = MLP(in_features=4, hidden=2, out_features=2).state_dict()
    torch.save(state, path)
    assert read_checkpoint(path).keys() == state.keys()
