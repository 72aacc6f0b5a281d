"""flclientd.approvals and the site IT commands ``flclientd show-app`` / ``flclientd approve``."""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flclientd import approvals
from flclientd.approvals import ApprovalError, ApprovalList, parse_digest
from flclientd.cli import main as flclientd_main
from flclientd.review import main as review_main
from flclientd.review import visible
from flcore.appreview import review_app
from fldev.cluster import APPS

DIGEST = "ab" * 32
APP = "digits_custom"


NOBODY = 65534


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A client workspace with digits_custom deployed for run 3."""
    (tmp_path / "startup").mkdir()
    app = shutil.copytree(APPS / "digits_custom", tmp_path / "run_3" / "app_site")
    (app / ".app_name").write_text("digits_custom\n")
    return tmp_path


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return review_main(list(argv), out), out.getvalue()


@pytest.mark.parametrize("text", [DIGEST, f"sha256:{DIGEST}", DIGEST.upper(), f" {DIGEST}\n"])
def test_digests_are_read_as_people_type_them(text: str) -> None:
    assert parse_digest(text) == DIGEST


def test_a_prefix_is_not_an_approval() -> None:
    with pytest.raises(ApprovalError, match="only the start of a digest: give all 64 hex digits"):
        parse_digest(f"sha256:{DIGEST[:12]}")
    with pytest.raises(ApprovalError, match="is not a SHA-256 digest"):
        parse_digest("not-a-digest")


def test_approving_adds_once_and_keeps_earlier_approvals(workspace: Path) -> None:
    approvals_ = ApprovalList(workspace)
    assert approvals_.load() == [] and not approvals_.allows(DIGEST)
    assert approvals_.approve(DIGEST, "first")
    assert not approvals_.approve(DIGEST, "first")
    assert approvals_.approve("cd" * 32, "second")
    data = json.loads(approvals_.path.read_text())
    assert data["format_version"] == 1
    assert [(e["sha256"], e["app"]) for e in data["approved"]] == [
        (DIGEST, "first"),
        ("cd" * 32, "second"),
    ]
    assert approvals_.path == workspace / "local" / "approved_apps.json"
    assert approvals_.path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{", "not valid JSON"),
        (
            '{"format_version": 1, "approved": [{"sha256": "abc"}]}',
            r"approved\[0\]: 'sha256' must be 64",
        ),
        ('{"format_version": 1, "approved": [], "extra": 1}', "unknown key 'extra'"),
        ("[" * 100 + "]" * 100, "nested more than"),
        ('{"approved": []}', "missing required key 'format_version'"),
    ],
)
def test_a_malformed_file_approves_nothing_and_is_left_alone(
    workspace: Path, content: str, words: str
) -> None:
    approvals_ = ApprovalList(workspace)
    approvals_.path.parent.mkdir()
    approvals_.path.write_text(content)
    with pytest.raises(ApprovalError, match=words):
        approvals_.allows(DIGEST)
    with pytest.raises(ApprovalError):
        approvals_.approve(DIGEST, "x")
    assert approvals_.path.read_text() == content


def test_a_file_others_may_change_approves_nothing(workspace: Path) -> None:
    approvals_ = ApprovalList(workspace)
    approvals_.approve(DIGEST, "x")
    approvals_.path.chmod(0o666)
    with pytest.raises(ApprovalError, match=r"approved_apps.json has mode 0666.*chmod go-w"):
        approvals_.allows(DIGEST)
    approvals_.path.chmod(0o644)  # its folder: whoever may write there may replace the file
    approvals_.path.parent.chmod(0o777)
    with pytest.raises(ApprovalError, match=r"its folder .*local has mode 0777"):
        approvals_.allows(DIGEST)
    approvals_.path.parent.chmod(0o755)
    assert approvals_.allows(DIGEST)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_file_of_another_user_approves_nothing_unless_the_workspace_is_theirs(
    workspace: Path,
) -> None:
    """Another user's file is theirs to change whatever its mode. The workspace's owner is
    whom the daemon runs as: site IT running `flclientd approve` as root reads that file."""
    approvals_ = ApprovalList(workspace)
    approvals_.approve(DIGEST, "x")
    os.chown(approvals_.path, NOBODY, NOBODY)
    with pytest.raises(ApprovalError, match=r"approved_apps.json is owned by nobody.*chown root"):
        approvals_.allows(DIGEST)
    os.chown(workspace, NOBODY, NOBODY)
    os.chown(approvals_.path.parent, NOBODY, NOBODY)
    assert approvals_.allows(DIGEST)


def test_a_huge_file_is_refused_before_it_is_read(workspace: Path) -> None:
    approvals_ = ApprovalList(workspace)
    approvals_.path.parent.mkdir()
    with approvals_.path.open("wb") as handle:
        handle.truncate(100 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(ApprovalError, match="more than a config file may hold"):
        approvals_.allows(DIGEST)


def test_a_waiting_run_sees_the_approval(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals, "POLL_S", 0.01)
    errors: list[ApprovalError] = []

    async def scenario() -> None:
        approvals_ = ApprovalList(workspace)
        approvals_.path.parent.mkdir()
        approvals_.path.write_text("{")  # unusable first: reported once, approves nothing
        waiting = asyncio.ensure_future(approvals_.wait_for(DIGEST, errors.append))
        while not errors:
            await asyncio.sleep(0.01)
        assert not waiting.done()
        approvals_.path.unlink()
        approvals_.approve("cd" * 32, "another app")
        await asyncio.sleep(0.05)
        assert not waiting.done()
        approvals_.approve(DIGEST, "this app")
        await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())
    assert len(errors) == 1 and "not valid JSON" in str(errors[0])


def test_show_app_prints_the_digest_the_code_and_how_to_approve(workspace: Path) -> None:
    review = review_app(workspace / "run_3" / "app_site", "digits_custom")
    code, out = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "app digits_custom, deployed in run_3/app_site"
    assert lines[1] == f"sha256:{review.digest}"
    assert f"flclientd approve --workspace {workspace} {review.digest}" in out
    assert "  component model: digits_custom.model.ResidualDigitsNet" in lines
    model = (APPS / "digits_custom" / "resources" / "digits_custom" / "model.py").read_text()
    assert model in out
    code, listed = run("show-app", "--workspace", str(workspace), "digits_custom", "--list")
    assert code == 0 and model not in listed and "resources/digits_custom/model.py" in listed


def test_show_app_says_when_it_cannot_tell_whether_the_site_trusts_custom_code(
    workspace: Path,
) -> None:
    """Site IT running show-app as root on the service's workspace has its settings refused
    (another user's files): it said "NOT approved" even where the site trusts custom code."""
    code, out = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert code == 0
    assert "whether it runs anyway (trust_custom_code) cannot be told from here" in out
    assert "flclientd approve --workspace" in out


def test_show_app_stops_quietly_when_the_reader_of_its_output_leaves(workspace: Path) -> None:
    """``flclientd show-app --workspace W APP | head -30`` printed ``[Errno 32] Broken pipe``
    and exited 1. The app here outgrows a pipe's buffer, so show-app is still writing when
    the reader goes."""
    app = workspace / "run_3" / "app_site"
    (app / "resources" / "notes.py").write_text("# a long comment\n" * 20_000)
    process = subprocess.Popen(
        [sys.executable, "-m", "flclientd", "show-app", "--workspace", str(workspace), APP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith("app digits_custom")
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert errors == ""


def test_approve_names_the_app_and_show_app_then_says_approved(workspace: Path) -> None:
    review = review_app(workspace / "run_3" / "app_site", "digits_custom")
    code, out = run("approve", "--workspace", str(workspace), f"sha256:{review.digest}")
    assert code == 0
    assert out.startswith(f"approved app digits_custom sha256:{review.digest} in ")
    assert ApprovalList(workspace).allows(review.digest)
    code, out = run("show-app", "--workspace", str(workspace), "digits_custom", "--list")
    assert "status: approved at this site" in out
    code, out = run("approve", "--workspace", str(workspace), review.digest)
    assert code == 0 and "was approved already" in out


def test_hidden_characters_are_shown_and_counted(workspace: Path) -> None:
    code_file = workspace / "run_3" / "app_site" / "resources" / "trick.py"
    code_file.write_text("ok = True  # \u202e } \u2066if admin:\x1b[2K\n\tpass\n")
    _, out = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert "!!! 3 control or bidirectional character(s)" in out
    assert "ok = True  # \\u202e } \\u2066if admin:\\x1b[2K\n\tpass\n" in out
    assert visible("plain\n\ttext") == ("plain\n\ttext", 0)


def test_source_is_shown_as_python_reads_it_whatever_encoding_it_declares(
    workspace: Path,
) -> None:
    """With ``# coding: utf-7`` a line an editor shows as one comment runs a hidden line
    (``+AAo-`` is a newline): the reviewer saw the comment."""
    resources = workspace / "run_3" / "app_site" / "resources"
    hidden = b"# coding: utf-7\nok = True  # +AAo-import os+ADs- ran = os.sep\n"
    # What Python makes of it: an import and an assignment after the comment.
    assert [type(node) for node in ast.parse(hidden).body] == [ast.Assign, ast.Import, ast.Assign]
    (resources / "trick.py").write_bytes(hidden)
    (resources / "old.py").write_bytes(b"# -*- coding: latin-1 -*-\nname = 'Z\xfcrich'\n")
    (resources / "bad\u202ename.py").write_text("x = 1\n")
    _, out = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert "!!! declares the encoding utf-7: shown as Python reads it" in out
    assert "ok = True  # \nimport os; ran = os.sep\n" in out
    assert "name = 'Z\u00fcrich'" in out  # latin-1 source is shown, not called binary
    assert "bad\u202ename.py" not in out and "bad\\u202ename.py" in out


def test_show_app_by_digest_shows_the_copy_a_waiting_run_names(workspace: Path) -> None:
    """By name it shows the newest copy: with run 4's copy benign and run 3's waiting,
    site IT read the one and approved the other's digest, unread."""
    newer = shutil.copytree(workspace / "run_3" / "app_site", workspace / "run_4" / "app_site")
    (newer / "resources" / "extra.py").write_text("benign = True\n")
    (workspace / "run_3" / "app_site" / "resources" / "hidden.py").write_text("evil = 1\n")
    waiting = review_app(workspace / "run_3" / "app_site", "digits_custom").digest
    _, by_name = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert "run_4/app_site" in by_name and "evil = 1" not in by_name
    _, by_digest = run("show-app", "--workspace", str(workspace), f"sha256:{waiting}")
    assert by_digest.startswith("app digits_custom, deployed in run_3/app_site\n")
    assert f"sha256:{waiting}" in by_digest and "evil = 1" in by_digest
    assert run("show-app", "--workspace", str(workspace), "sha256:" + "0" * 64)[0] == 1


def test_binary_files_are_named_not_printed(workspace: Path) -> None:
    (workspace / "run_3" / "app_site" / "resources" / "blob.so").write_bytes(b"\x7fELF\x00\x01")
    _, out = run("show-app", "--workspace", str(workspace), "digits_custom")
    assert "===== resources/blob.so (6 bytes): binary, not shown =====" in out
    assert "code file resources/blob.so" in out


def test_mistakes_are_explained(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("show-app", "--workspace", str(workspace), "other")[0] == 1
    assert "no app named 'other' is deployed" in capsys.readouterr().err
    assert run("approve", "--workspace", str(workspace / "run_3"), DIGEST)[0] == 1
    assert "holds no startup/ folder" in capsys.readouterr().err


def test_the_daemon_command_dispatches_site_it_commands(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert flclientd_main(["approve", "--workspace", str(workspace), DIGEST]) == 0
    assert f"approved sha256:{DIGEST}" in capsys.readouterr().out
    assert ApprovalList(workspace).allows(DIGEST)


def test_the_app_names_the_server_gave_are_noted_cut_short_and_shown_escaped(
    workspace: Path,
) -> None:
    """The names come from the server: megabytes of them made the approvals file pass the
    reader's 1 MiB, which voided every approval; an escape sequence in one reached site IT's
    terminal."""
    long_name = "x" * 2_000_000
    for run_number, name in ((4, long_name), (5, "evil\x1b]0;owned\x07\n<3>forged")):
        copy = shutil.copytree(
            workspace / "run_3" / "app_site", workspace / f"run_{run_number}" / "app_site"
        )
        (copy / ".app_name").write_text(name + "\n")
    digest = review_app(workspace / "run_3" / "app_site", "digits_custom").digest
    code, out = run("approve", "--workspace", str(workspace), digest)
    assert code == 0 and "\x1b" not in out and "\x07" not in out and len(out) < 1000
    assert ApprovalList(workspace).allows(digest)
    (entry,) = json.loads(ApprovalList(workspace).path.read_text())["approved"]
    assert len(entry["app"]) <= 128
    shutil.rmtree(workspace / "run_4")
    code, out = run("show-app", "--workspace", str(workspace), "--list", f"sha256:{digest}")
    assert code == 0 and "\x1b" not in out and "\x07" not in out
    assert (
        out.splitlines()[0]
        == "app evil\\x1b]0;owned\\x07\\x0a<3>forged, deployed in run_5/app_site"
    )


@pytest.mark.parametrize("writable", ["file", "folder"])
def test_a_waiting_run_sees_the_chmod_the_refusal_advises(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, writable: str
) -> None:
    """Only the file's content and identity were watched: after `chmod go-w` the run stayed
    waiting."""
    monkeypatch.setattr(approvals, "POLL_S", 0.01)
    approvals_ = ApprovalList(workspace)
    approvals_.approve(DIGEST, "this app")
    changed = approvals_.path if writable == "file" else approvals_.path.parent
    mode = changed.stat().st_mode & 0o777
    changed.chmod(mode | 0o020)
    errors: list[ApprovalError] = []
    reported = asyncio.Event()

    def report(exc: ApprovalError) -> None:
        errors.append(exc)
        reported.set()

    async def scenario() -> None:
        waiting = asyncio.ensure_future(approvals_.wait_for(DIGEST, report))
        await asyncio.wait_for(reported.wait(), 5)
        changed.chmod(mode)
        await asyncio.wait_for(waiting, 5)

    asyncio.run(scenario())
    assert len(errors) == 1 and "chmod go-w" in str(errors[0])
