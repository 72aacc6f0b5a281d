"""A link in ``startup/`` or ``local/`` is judged by all it leads through (flcore.strictmodes):
it was judged by the file it ends at only, so a link to a file in a folder another user may
write let that user swap the file (a ``local/fed_client.json`` setting trust_custom_code)."""

from __future__ import annotations

import json
import os
import pwd
import re
from pathlib import Path

import pytest

from flcore import startup
from flcore.schema import ConfigError
from flcore.strictmodes import others_may_change

NOBODY = 65534
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="another user's or root's folder needs root")
SETTINGS = {"trust_custom_code": True}
CLIENT = startup.ClientStartup("demo", "site-a", "fl.example.org", 8002, heartbeat_interval=1.0)


def _workspace(root: Path) -> Path:
    """A site's workspace with its kit's fed_client.json and key, and an empty ``local/``."""
    kit = root / "ws" / "startup"
    kit.mkdir(parents=True)
    (kit / "fed_client.json").write_text(startup.to_json(CLIENT))
    key = kit / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    (root / "ws" / "local").mkdir()
    return root / "ws"


def _settings_in(folder: Path) -> Path:
    """site IT's settings kept in ``folder`` (as a configuration tool keeps them)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / "fed_client.json"
    kept.write_text(json.dumps(SETTINGS))
    return kept


def test_a_link_to_a_file_in_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    shared = tmp_path / "shared"
    (ws / "local" / "fed_client.json").symlink_to(_settings_in(shared))
    shared.chmod(0o777)
    said = (
        f"fed_client.json is a link to {shared / 'fed_client.json'}, and {shared} has mode "
        f"0777), and it decides for this site: run chmod go-w {shared}, or put the file "
        "itself in place of the link"
    )
    with pytest.raises(ConfigError, match=re.escape(said)):
        startup.load_client(ws)
    shared.chmod(0o755)
    assert startup.load_client(ws).trust_custom_code


def test_a_link_through_a_link_in_a_folder_others_may_write_is_refused(tmp_path: Path) -> None:
    """The second link's folder decides where the path leads, as much as the target's does."""
    ws = _workspace(tmp_path)
    kept = _settings_in(tmp_path / "private")
    hops = tmp_path / "hops"
    hops.mkdir(mode=0o777)
    hops.chmod(0o777)
    (hops / "next").symlink_to(kept)
    (ws / "startup" / "rootCA.pem").symlink_to(Path("..") / ".." / "hops" / "next")
    with pytest.raises(ConfigError, match=re.escape(f"and {hops} has mode 0777")):
        startup.load_client(ws)


@AS_ROOT
def test_a_link_to_another_user_s_folder_or_file_is_refused(tmp_path: Path) -> None:
    ws = _workspace(tmp_path)
    theirs = tmp_path / "theirs"
    kept = _settings_in(theirs)
    (ws / "local" / "fed_client.json").symlink_to(kept)
    name = pwd.getpwuid(NOBODY).pw_name
    for owned in (theirs, kept):
        os.chown(owned, NOBODY, NOBODY)
        with pytest.raises(
            ConfigError, match=re.escape(f"owned by {name}, not by root), and it decides")
        ):
            startup.load_client(ws)
        os.chown(owned, 0, 0)
    assert startup.load_client(ws).trust_custom_code


@AS_ROOT
def test_a_link_through_another_user_s_link_in_a_sticky_folder_is_refused(tmp_path: Path) -> None:
    """In a sticky folder (``/tmp``) the owner of a link may replace it, whoever owns the
    folder."""
    ws = _workspace(tmp_path)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    hop = sticky / "settings"
    hop.symlink_to(_settings_in(tmp_path / "private"))
    os.chown(hop, NOBODY, NOBODY, follow_symlinks=False)
    (ws / "local" / "fed_client.json").symlink_to(hop)
    name = pwd.getpwuid(NOBODY).pw_name
    said = (
        f"the link {hop} on its way is owned by {name}, not by root), and it decides for this "
        f"site: run chown -h root {hop}, or put the file itself in place of the link"
    )
    with pytest.raises(ConfigError, match=re.escape(said)):
        startup.load_client(ws)
    os.chown(hop, 0, 0, follow_symlinks=False)
    assert startup.load_client(ws).trust_custom_code


@AS_ROOT
def test_a_link_into_a_private_folder_under_a_sticky_one_is_fine(tmp_path: Path) -> None:
    """As the workspace's own folders: a root-owned sticky folder above (``/tmp``) is fine."""
    ws = _workspace(tmp_path)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    (ws / "local" / "fed_client.json").symlink_to(_settings_in(sticky / "site-it"))
    assert startup.load_client(ws).trust_custom_code


def test_an_approvals_file_linked_from_a_folder_others_may_write_may_be_changed(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    link = tmp_path / "approved_apps.json"
    link.symlink_to(_settings_in(shared))
    assert others_may_change(link) is None
    shared.chmod(0o777)
    found = others_may_change(link)
    assert found is not None
    assert found.reason == (
        f"approved_apps.json is a link to {shared / 'fed_client.json'}, and {shared} has mode 0777"
    )
