"""Property-based tests of the decoders a peer or a person feeds: the admin command parser,
the tensor codec, the upload folder decoder, and the site's own files (approvals, state, the
training child's messages). Config loaders of kits, apps and project.yml have theirs in
test_provision_configfile.py.

Each property: whatever arrives, the decoder answers with a value or its own clear error,
never another exception, and what it accepts is what it claims to be.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from flclientd.approvals import ApprovalError, ApprovalList, parse_digest
from flclientd.sitestate import SiteState
from flclientd.worker.protocol import decode, encode
from flcore.crossvalmatrix import ValidationMatrix
from flcore.federation import CommandResult
from flcore.folders import FolderError, FolderReceiver, check_relpath
from flcore.identity import ROLE_MEMBER, ROLE_SUPER
from flcore.proto.gen import flstack_common_pb2 as common_pb2
from flcore.tensorfile import (
    NUMPY_DTYPES,
    Manifest,
    SpoolWriter,
    TensorFile,
    TensorFileError,
    TensorSpec,
)
from flcore.wire import manifest_from_proto, manifest_to_proto
from flserverd.commands import AdminCommands
from flserverd.runstore import RunStore
from flserverd.server import FLServer
from tests.fuzz import FUZZ, mutated, values
from tests.unit.test_commands import ADMIN, FakeCrossValidation, FakeServer, two_sites

# --------------------------------------------------------------------------- admin commands

WORDS = [
    "check_status", "set_run_number", "start_mgpu", "validate", "help", "abort", "start",
    "shutdown", "deploy", "upload_folder", "server", "client", "all", "site-a", "site-b",
    "site-c", "0", "1", "2", "64", "-1", "99999999999999999999", "digits_fedavg", "'", '"',
    "\\", "\0", "\x1b[2J", "../x", "é",
]  # fmt: skip


@dataclass
class FuzzServer(FakeServer):
    """The fake of test_commands, with what deploy and start server also need."""

    store: RunStore | None = None
    published: int = 0
    starts: list[bool] = field(default_factory=list)

    def publish_run(self) -> None:
        self.published += 1

    async def start_training(self, fresh: bool = False) -> str:
        self.starts.append(fresh)
        return "Server training is starting...."


line_words = st.lists(st.sampled_from(WORDS) | st.text(max_size=12), max_size=6).map(" ".join)


@FUZZ
@given(line=line_words | st.text(max_size=200), role=st.sampled_from([ROLE_SUPER, ROLE_MEMBER]))
def test_property_every_command_line_gets_a_clear_answer(
    tmp_path: Path, line: str, role: str
) -> None:
    base = two_sites()
    server = FuzzServer(base.registry, store=RunStore(tmp_path))
    server.answers = {i: CommandResult("c", True, "ok", {}) for i in ("site-a", "site-b")}
    server.crossval = FakeCrossValidation(ValidationMatrix(1, ["global"], []))
    server.run_number = 1
    commands = AdminCommands(cast(FLServer, server))
    reply = asyncio.run(commands.execute(ADMIN, role, line, 5.0, False))
    assert reply.text
    assert "could not carry out" not in reply.text, (line, reply.text)
    assert [ok for _, _, ok in server.db.audited] == [reply.ok]


# --------------------------------------------------------------------------- tensor codec

names = st.text(min_size=0, max_size=20)
dtypes = st.sampled_from([*NUMPY_DTYPES, "F8", "", "C64", "f32"])
shapes = st.lists(st.integers(min_value=-3, max_value=1 << 45) | st.integers(0, 6), max_size=5)
specs = st.builds(common_pb2.TensorSpec, name=names, dtype=dtypes, shape=shapes)


@FUZZ
@given(
    tensors=st.lists(specs, max_size=6),
    total=st.integers(min_value=0, max_value=1 << 50) | st.none(),
)
def test_property_a_declared_manifest_is_consistent_or_refused(
    tensors: list[common_pb2.TensorSpec], total: int | None
) -> None:
    """``total`` None declares the tensors' honest sum, so that consistent manifests occur."""
    message = common_pb2.ModelManifest(tensors=tensors)
    honest = Manifest(tuple(TensorSpec(t.name, t.dtype, tuple(t.shape)) for t in tensors))
    try:
        declared = honest.total_bytes if total is None else total
    except KeyError:  # an unknown dtype has no size: any total will do
        declared = total or 0
    message.total_bytes = min(declared, (1 << 63) - 1)
    try:
        manifest = manifest_from_proto(message)
    except TensorFileError as exc:
        assert str(exc)
        return
    manifest.check()
    assert manifest.total_bytes == message.total_bytes
    assert manifest_from_proto(manifest_to_proto(manifest)) == manifest


small_specs = st.lists(
    st.builds(
        TensorSpec,
        name=st.text(alphabet="abcxyz._", min_size=1, max_size=6),
        dtype=st.sampled_from(["F32", "U8", "I64", "BF16", "BOOL"]),
        shape=st.lists(st.integers(0, 3), max_size=3).map(tuple),
    ),
    max_size=4,
    unique_by=lambda s: s.name,
)
chunks = st.lists(
    st.tuples(
        st.text(alphabet="abcxyz._", max_size=6), st.integers(-2, 40), st.binary(max_size=24)
    ),
    max_size=8,
)


@FUZZ
@given(tensors=small_specs, stream=chunks)
def test_property_a_spool_is_complete_and_readable_or_refused(
    tmp_path: Path, tensors: list[TensorSpec], stream: list[tuple[str, int, bytes]]
) -> None:
    manifest = Manifest(tuple(tensors))
    writer = SpoolWriter(tmp_path / "spool.safetensors", manifest, require_finite=False)
    try:
        for name, offset, data in stream:
            writer.write(name, offset, data)
        model = writer.finish()
    except TensorFileError as exc:
        assert str(exc)
        writer.discard()
        return
    assert model.manifest == manifest
    assert TensorFile(model.path).manifest == manifest
    model.path.unlink()


@FUZZ
@given(
    header=values.map(json.dumps) | st.text(max_size=60),
    length=st.integers(0, 200) | st.none(),
    data=st.binary(max_size=40),
)
def test_property_any_file_is_a_tensor_file_or_refused(
    tmp_path: Path, header: str, length: int | None, data: bytes
) -> None:
    raw = header.encode()
    declared = len(raw) if length is None else length
    path = tmp_path / "model.safetensors"
    path.write_bytes(declared.to_bytes(8, "little") + raw + data)
    try:
        model = TensorFile(path)
    except TensorFileError as exc:
        assert str(exc).startswith(str(path)) or "tensor" in str(exc)
        return
    assert sum(end - begin for begin, end in model.offsets.values()) == model.manifest.total_bytes


# --------------------------------------------------------------------------- upload folders


@FUZZ
@given(
    st.text(max_size=80)
    | st.lists(
        st.sampled_from(["config", "resources", "..", ".", "", "a", "__pycache__"]), max_size=6
    ).map("/".join)
)
def test_property_a_path_is_plain_and_inside_or_refused(raw: str) -> None:
    try:
        path = check_relpath(raw)
    except FolderError as exc:
        assert str(exc)
        return
    assert isinstance(path, PurePosixPath) and not path.is_absolute()
    assert ".." not in path.parts and path.as_posix() == raw


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["config/a.json", "resources/m.py", "resources/p/q.py", "x", "../y"])
            | st.text(max_size=20),
            st.integers(-1, 12),
            st.binary(max_size=8),
            st.booleans(),
        ),
        max_size=8,
    )
)
def test_property_an_upload_stream_lands_inside_its_folder_or_is_refused(
    tmp_path: Path, stream: list[tuple[str, int, bytes, bool]]
) -> None:
    box = tmp_path / "box"
    box.mkdir(exist_ok=True)
    staging = box / "staging"
    receiver = FolderReceiver(staging, max_bytes=40, max_files=4)
    try:
        for raw, offset, data, eof in stream:
            receiver.write(raw, offset, data, eof)
        files = receiver.finish()
    except FolderError as exc:
        assert str(exc)
        receiver.discard()
        assert list(box.iterdir()) == []
        return
    written = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    assert written == sorted(files)
    assert all(f.split("/")[0] in ("config", "resources") for f in files)
    assert sum(p.stat().st_size for p in staging.rglob("*") if p.is_file()) <= 40
    receiver.discard()


# --------------------------------------------------------------------------- the site's own files

VALID_APPROVALS = {"format_version": 1, "approved": [{"sha256": "ab" * 32, "app": "x"}]}


@FUZZ
@given(st.data())
def test_property_an_approvals_file_approves_or_is_refused(
    tmp_path: Path, data: st.DataObject
) -> None:
    document = data.draw(mutated(VALID_APPROVALS) | values)
    path = tmp_path / "local" / "approved_apps.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(document))
    try:
        approved = ApprovalList(tmp_path).allows("ab" * 32)
    except ApprovalError as exc:
        assert str(exc).startswith(str(path))
        return
    assert approved == (document == VALID_APPROVALS)


@FUZZ
@given(st.text(max_size=80))
def test_property_a_typed_digest_is_a_full_digest_or_refused(text: str) -> None:
    try:
        digest = parse_digest(text)
    except ApprovalError as exc:
        assert "digest" in str(exc)
        return
    assert len(digest) == 64 and set(digest) <= set("0123456789abcdef")


@FUZZ
@given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()))
def test_property_a_site_state_file_is_read_or_started_afresh(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(raw)
    state = SiteState.load(path)
    assert isinstance(state.token, str) and type(state.training_run) is int


@FUZZ
@given(st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode()))
def test_property_a_line_from_the_worker_socket_is_an_object_or_refused(raw: bytes) -> None:
    try:
        message = decode(raw)
    except ValueError as exc:
        assert str(exc)
        return
    assert isinstance(message, dict)
    assert decode(encode(message)) == message or any(
        isinstance(v, float) and v != v for v in message.values()
    )
