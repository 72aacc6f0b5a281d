"""flcore.folders: what an app folder may send, and what a receiver accepts."""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
from pathlib import Path, PurePosixPath

import pytest

from flcore.folders import (
    FolderError,
    FolderReceiver,
    _open_plain,
    check_relpath,
    folder_size,
    iter_app_files,
    iter_chunks,
    replace_folder,
)
from flcore.tensorfile import CHUNK_BYTES

# --------------------------------------------------------------------------- check_relpath


@pytest.mark.parametrize(
    "raw", ["config/a.json", "resources/pkg/mod.py", "x", "config/.hidden", "a/b..c/d"]
)
def test_check_relpath_accepts_plain_relative_paths(raw: str) -> None:
    assert check_relpath(raw) == PurePosixPath(raw)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("/etc/passwd", "absolute path"),
        ("/config/a", "absolute path"),
        ("//config/a", "absolute path"),
        ("config/../../x", "'..'"),
        ("..", "'..'"),
        ("../x", "'..'"),
        ("config/..", "'..'"),
        ("./config/a", "'.'"),
        ("config/./a", "'.'"),
        ("config//a", "refused"),
        ("config/a/", "refused"),
        ("", "invalid path"),
        ("config\\..\\x", "invalid path"),
        ("config\\a", "invalid path"),
        ("config/a\0b", "invalid path"),
        ("config/a\nb", "control characters"),
        ("config/\x1b[31mred", "control characters"),
        ("config/del\x7f", "control characters"),
        ("config/a\x9b31mX\x85.json", "control characters"),  # C1: CSI and NEL
        ("resources/" + "n" * 300 + ".py", "303 bytes long, and file systems allow at most 255"),
        ("resources/" + "é" * 128, "256 bytes long"),
        ("/".join(["resources", *["d"] * 4999, "x.py"]), "5,001 levels deep"),
        ("/".join(["resources", *["d" * 200] * 6]), "1,215 bytes long, and app paths"),
        ("resources/bad\udcff.py", "not valid UTF-8"),
    ],
)
def test_check_relpath_refuses(raw: str, words: str) -> None:
    with pytest.raises(FolderError, match=words):
        check_relpath(raw)


def test_check_relpath_accepts_names_at_the_limits() -> None:
    longest = "resources/" + "n" * 255
    assert check_relpath(longest).name == "n" * 255
    deepest = "/".join(["resources", *["d"] * 30, "x.py"])
    assert len(check_relpath(deepest).parts) == 32


def test_messages_quote_a_huge_path_briefly() -> None:
    with pytest.raises(FolderError) as refused:
        check_relpath("/".join(["resources", *["d"] * 4999, "x.py"]))
    assert len(str(refused.value)) < 200


# --------------------------------------------------------------------------- iter_app_files


def _app(root: Path) -> Path:
    (root / "config").mkdir(parents=True)
    (root / "config" / "config_train.json").write_text("{}")
    (root / "config" / "config_fed_server.json").write_text('{"num_rounds": 2}')
    (root / "resources" / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "resources" / "pkg" / "model.py").write_text("X = 1\n")
    (root / "resources" / "pkg" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    (root / "resources" / "__pycache__").mkdir()
    (root / "resources" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (root / "README.md").write_text("not part of the app")
    (root / "models").mkdir()
    (root / "models" / "big.pt").write_bytes(b"\0" * 10)
    return root


def test_iter_app_files_lists_config_and_resources_only(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    files = list(iter_app_files(root))
    assert [rel for rel, _ in files] == [
        "config/config_fed_server.json",
        "config/config_train.json",
        "resources/pkg/model.py",
    ]
    assert all(path == root / rel for rel, path in files)
    size, count = folder_size(root)
    assert (size, count) == (len('{"num_rounds": 2}') + 2 + 6, 3)


def test_iter_app_files_refuses_file_symlink(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    secret = tmp_path / "secret.txt"
    secret.write_text("password")
    (root / "resources" / "pkg" / "link.txt").symlink_to(secret)
    with pytest.raises(FolderError, match=re.escape("resources/pkg/link.txt is a symbolic link")):
        list(iter_app_files(root))


def test_iter_app_files_refuses_dir_symlink(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"x")
    (root / "config" / "more").symlink_to(outside, target_is_directory=True)
    with pytest.raises(FolderError, match="config/more is a symbolic link"):
        list(iter_app_files(root))


def test_iter_app_files_refuses_symlinked_top_level(tmp_path: Path) -> None:
    root = tmp_path / "app"
    root.mkdir()
    real = tmp_path / "real_config"
    real.mkdir()
    (real / "config_train.json").write_text("{}")
    (root / "config").symlink_to(real, target_is_directory=True)
    with pytest.raises(FolderError, match="symbolic link"):
        list(iter_app_files(root))


def test_iter_app_files_refuses_dangling_symlink(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    (root / "config" / "gone.json").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(FolderError, match=re.escape("config/gone.json is a symbolic link")):
        list(iter_app_files(root))


def test_iter_app_files_refuses_special_file(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    os.mkfifo(root / "config" / "pipe")
    with pytest.raises(FolderError, match="config/pipe is not a regular file"):
        list(iter_app_files(root))


def test_iter_app_files_refuses_a_path_too_deep_before_walking_it(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    deep = root / "resources"
    for _ in range(40):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "x.py").write_text("")
    with pytest.raises(FolderError, match="33 levels deep, and app paths may be at most 32"):
        folder_size(root)


def test_iter_app_files_refuses_a_path_too_long_to_send(tmp_path: Path) -> None:
    root = _app(tmp_path / "app")
    long = root / "resources"
    for letter in "abcde":
        long = long / (letter * 250)
    long.mkdir(parents=True)
    (long / "x.py").write_text("")
    with pytest.raises(FolderError, match="app paths may be at most 1,024"):
        list(iter_app_files(root))


def test_iter_app_files_refuses_non_folder(tmp_path: Path) -> None:
    with pytest.raises(FolderError, match="is not a folder"):
        list(iter_app_files(tmp_path / "missing"))


def test_iter_chunks_covers_every_byte(tmp_path: Path) -> None:
    root = tmp_path / "app"
    (root / "config").mkdir(parents=True)
    big = bytes(range(256)) * (CHUNK_BYTES // 256 * 2 + 3)
    (root / "config" / "big.bin").write_bytes(big)
    (root / "config" / "empty.txt").write_bytes(b"")
    (root / "config" / "exact.bin").write_bytes(b"e" * CHUNK_BYTES)
    chunks = list(iter_chunks(root))
    by_file: dict[str, list[tuple[int, bytes, bool]]] = {}
    for rel, offset, data, eof in chunks:
        by_file.setdefault(rel, []).append((offset, data, eof))
    assert sorted(by_file) == ["config/big.bin", "config/empty.txt", "config/exact.bin"]
    for rel, parts in by_file.items():
        assert [eof for _, _, eof in parts] == [False] * (len(parts) - 1) + [True], rel
        assert b"".join(d for _, d, _ in parts) == (root / rel).read_bytes(), rel
        offsets = [o for o, _, _ in parts]
        assert offsets == [sum(len(d) for _, d, _ in parts[:i]) for i in range(len(parts))]
    assert by_file["config/empty.txt"] == [(0, b"", True)]
    assert len(by_file["config/exact.bin"]) == 1


def open_files_under(folder: Path) -> list[Path]:
    """Files under ``folder`` this process holds open now."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            target = Path(os.readlink(fd))
            if target.is_relative_to(folder):
                held.append(target)
    return held


def test_iter_chunks_holds_no_file_open_while_its_reader_pauses(tmp_path: Path) -> None:
    """The server sends an app's chunks as the site reads them: a file held open across
    each chunk kept a descriptor per download for as long as the site did not read."""
    root = tmp_path / "app"
    (root / "config").mkdir(parents=True)
    (root / "config" / "big.bin").write_bytes(b"b" * (CHUNK_BYTES * 2 + 1))
    (root / "config" / "small.json").write_bytes(b"{}")
    held = [open_files_under(root) for _ in iter_chunks(root)]
    assert held == [[]] * 4


# --------------------------------------------------------------------------- FolderReceiver


def _receiver(tmp_path: Path, max_bytes: int = 1 << 20, max_files: int = 100) -> FolderReceiver:
    return FolderReceiver(tmp_path / "staging", max_bytes, max_files)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_receiver_round_trip_from_iter_chunks(tmp_path: Path) -> None:
    source = _app(tmp_path / "app")
    receiver = _receiver(tmp_path)
    for rel, offset, data, eof in iter_chunks(source):
        receiver.write(rel, offset, data, eof)
    assert receiver.finish() == [
        "config/config_fed_server.json",
        "config/config_train.json",
        "resources/pkg/model.py",
    ]
    assert _tree(receiver.staging) == {
        "config/config_fed_server.json": b'{"num_rounds": 2}',
        "config/config_train.json": b"{}",
        "resources/pkg/model.py": b"X = 1\n",
    }


def test_receiver_writes_multi_chunk_file(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a.bin", 0, b"abc", False)
    receiver.write("config/a.bin", 3, b"def", False)
    receiver.write("config/a.bin", 6, b"g", True)
    receiver.write("resources/empty.py", 0, b"", True)
    assert receiver.finish() == ["config/a.bin", "resources/empty.py"]
    assert _tree(receiver.staging) == {"config/a.bin": b"abcdefg", "resources/empty.py": b""}
    assert receiver.total_bytes == 7


def test_receiver_drops_other_top_level_folders_and_files(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path, max_bytes=100)
    receiver.write("models/weights.pt", 0, b"x" * 50, True)  # dropped: not counted to the limit
    receiver.write("README.md", 0, b"readme", True)
    receiver.write("config", 0, b"a file named config", True)
    receiver.write("config/a.json", 0, b"{}", True)
    receiver.write("secrets/deep/key.pem", 0, b"k", True)
    assert receiver.finish() == ["config/a.json"]
    assert receiver.dropped == {"models", "README.md", "config", "secrets"}
    assert receiver.total_bytes == 2
    assert _tree(receiver.staging) == {"config/a.json": b"{}"}


def test_what_the_receiver_drops_is_bounded_as_what_it_keeps(tmp_path: Path) -> None:
    """Dropped parts are not counted to what the app may hold, but they are bounded: a
    sender cannot stream without end, nor make the names the reply lists grow without end."""
    receiver = _receiver(tmp_path, max_bytes=1 << 20)
    receiver.write("models/a.pt", 0, bytes(1 << 20), True)  # as much as may be kept: fine
    with pytest.raises(FolderError, match="more than 1 MiB outside config/ and resources/"):
        receiver.write("models/b.pt", 0, b"x", True)
    receiver.discard()
    receiver = FolderReceiver(tmp_path / "names", max_bytes=1 << 20, max_files=3)
    for name in ("a", "b", "c"):
        receiver.write(name, 0, b"", True)
    receiver.write("b/again", 0, b"", True)  # a name already dropped is no new one
    with pytest.raises(FolderError, match="more than 3 other files and folders"):
        receiver.write("d", 0, b"", True)
    assert receiver.dropped == {"a", "b", "c"}


def test_receiver_size_limit(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path, max_bytes=10)
    receiver.write("config/a", 0, b"12345", True)
    receiver.write("config/b", 0, b"12345", False)  # exactly at the limit: fine
    with pytest.raises(FolderError, match="exceeds the server's limit"):
        receiver.write("config/b", 5, b"6", True)
    receiver.discard()
    assert not receiver.staging.exists()


def test_receiver_file_count_limit(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path, max_files=3)
    for i in range(3):
        receiver.write(f"config/f{i}", 0, b"x", True)
    with pytest.raises(FolderError, match="more than 3 files"):
        receiver.write("config/f3", 0, b"x", True)
    assert not (receiver.staging / "config" / "f3").exists()


def test_receiver_refuses_new_file_not_at_offset_zero(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    with pytest.raises(FolderError, match="chunks out of order"):
        receiver.write("config/a", 5, b"x", True)


def test_receiver_refuses_offset_gap_in_file(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", False)
    with pytest.raises(FolderError, match="chunk at byte 4, expected 3"):
        receiver.write("config/a", 4, b"x", True)


def test_receiver_refuses_file_sent_twice(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", True)
    with pytest.raises(FolderError, match="chunks out of order"):
        receiver.write("config/a", 0, b"abc", True)
    assert (receiver.staging / "config" / "a").read_bytes() == b"abc"


def test_receiver_refuses_compiled_python(tmp_path: Path) -> None:
    """A .pyc in __pycache__ would run instead of the reviewed source: it never lands."""
    receiver = _receiver(tmp_path)
    with pytest.raises(FolderError, match="compiled Python"):
        receiver.write("resources/pkg/__pycache__/model.cpython-311.pyc", 0, b"\0", True)
    assert not (receiver.staging / "resources").exists()


def test_a_listed_file_is_read_only_as_the_plain_file_it_was(tmp_path: Path) -> None:
    """Listing and reading are moments apart: what stood there could be swapped for a link
    to the admin's key, or a FIFO that blocks the upload, and would have been sent."""
    secret = tmp_path / "client.key"
    secret.write_text("PRIVATE KEY")
    (tmp_path / "link.py").symlink_to(secret)
    os.mkfifo(tmp_path / "fifo.py")
    with pytest.raises(FolderError, match=r"link\.py is a symbolic link"):
        _open_plain(tmp_path / "link.py", "link.py")
    with pytest.raises(FolderError, match=r"fifo\.py is not a regular file"):
        _open_plain(tmp_path / "fifo.py", "fifo.py")


def test_receiver_refuses_an_extension_module_beside_its_source(tmp_path: Path) -> None:
    """Python imports model.abi3.so before model.py: show-app printed the source in full and
    the binary as "not shown", and the binary is what ran."""
    receiver = _receiver(tmp_path)
    receiver.write("resources/pkg/model.py", 0, b"x = 1\n", True)
    receiver.write("resources/pkg/model.abi3.so", 0, b"\x7fELF", True)
    with pytest.raises(FolderError, match=r"resources/pkg/model\.abi3\.so: Python would import"):
        receiver.finish()
    alone = _receiver(tmp_path / "alone")  # a compiled module of its own is code to approve
    alone.write("resources/pkg/fast.abi3.so", 0, b"\x7fELF", True)
    alone.write("resources/other/model.py", 0, b"x = 1\n", True)
    assert sorted(alone.finish()) == ["resources/other/model.py", "resources/pkg/fast.abi3.so"]


def test_receiver_turns_what_the_disk_refuses_into_a_clear_error(tmp_path: Path) -> None:
    """A file larger than the process may write (as a full disk would refuse it)."""
    receiver = _receiver(tmp_path)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, limits[1]))
    try:
        with pytest.raises(FolderError, match=r"'resources/a\.py' cannot be stored here: File too"):
            receiver.write("resources/a.py", 0, b"x" * 5000, True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    receiver.discard()


def test_receiver_refuses_file_ending_without_eof(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", False)
    with pytest.raises(FolderError, match="config/a: file ended without its last chunk"):
        receiver.write("config/b", 0, b"x", True)


def test_receiver_finish_refuses_stream_ending_mid_file(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", False)
    with pytest.raises(FolderError, match="config/a: upload ended in the middle of this file"):
        receiver.finish()


@pytest.mark.parametrize(
    "raw",
    ["config/../../escape.txt", "/tmp/escape.txt", "config/..", "resources/./../x", "config\\x"],
)
def test_receiver_never_writes_outside_staging(tmp_path: Path, raw: str) -> None:
    receiver = _receiver(tmp_path / "inner")
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(FolderError):
        receiver.write(raw, 0, b"evil", True)
    assert {p for p in tmp_path.rglob("*")} == before


def test_receiver_refuses_path_below_a_file(tmp_path: Path) -> None:
    """A path clash is the sender's fault and must be a FolderError, not an OSError."""
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", True)
    with pytest.raises(FolderError):
        receiver.write("config/a/b", 0, b"x", True)


def test_receiver_refuses_file_over_a_folder(tmp_path: Path) -> None:
    """A path clash is the sender's fault and must be a FolderError, not an OSError."""
    receiver = _receiver(tmp_path)
    receiver.write("config/a/b", 0, b"abc", True)
    with pytest.raises(FolderError):
        receiver.write("config/a", 0, b"x", True)


def test_receiver_refuses_existing_staging(tmp_path: Path) -> None:
    (tmp_path / "staging").mkdir()
    with pytest.raises(FileExistsError):
        _receiver(tmp_path)


def test_receiver_discard_removes_staging_with_open_file(tmp_path: Path) -> None:
    receiver = _receiver(tmp_path)
    receiver.write("config/a", 0, b"abc", False)
    receiver.discard()
    assert not receiver.staging.exists()


# --------------------------------------------------------------------------- replace_folder


def test_replace_folder_over_existing(tmp_path: Path) -> None:
    target = tmp_path / "transfer" / "app"
    (target / "config").mkdir(parents=True)
    (target / "config" / "old.json").write_text("old")
    staging = tmp_path / "transfer" / ".staging"
    (staging / "config").mkdir(parents=True)
    (staging / "config" / "new.json").write_text("new")

    replace_folder(staging, target)

    assert _tree(target) == {"config/new.json": b"new"}
    assert not staging.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == ["app"]


def test_the_new_folder_is_durable_before_the_old_one_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy's files were never fsynced: a power loss soon after could leave the run's
    app with empty config files where the old copy had been whole."""
    target = tmp_path / "app"
    (target / "config").mkdir(parents=True)
    staging = tmp_path / ".staging"
    (staging / "config").mkdir(parents=True)
    (staging / "config" / "config_fed_client.json").write_text("{}")
    (staging / "resources" / "pkg").mkdir(parents=True)
    (staging / "resources" / "pkg" / "m.py").write_text("pass")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if target.exists() and not (target / "config" / "config_fed_client.json").exists():
            synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), staging))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    replace_folder(staging, target)
    assert sorted(synced) == sorted(
        [
            ".",
            "config",
            "config/config_fed_client.json",
            "resources",
            "resources/pkg",
            "resources/pkg/m.py",
        ]
    )
    assert _tree(target) == {"config/config_fed_client.json": b"{}", "resources/pkg/m.py": b"pass"}


def test_replace_folder_creates_parents(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "resources").mkdir(parents=True)
    (staging / "resources" / "m.py").write_text("pass")
    target = tmp_path / "run_1" / "app_server"

    replace_folder(staging, target)

    assert _tree(target) == {"resources/m.py": b"pass"}
    assert not staging.exists()


def test_replace_folder_clears_leftover_old(tmp_path: Path) -> None:
    target = tmp_path / "app"
    target.mkdir()
    (target / "a").write_text("1")
    leftover = tmp_path / ".app.old"
    leftover.mkdir()
    (leftover / "stale").write_text("from a crash")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "b").write_text("2")

    replace_folder(staging, target)

    assert _tree(target) == {"b": b"2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]
