"""flserverd.admins: who is logged in as an admin, by token, and how many tokens each keeps."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from flcore.identity import KIND_ADMIN, KIND_CLIENT, Identity
from flserverd.admins import (
    ADMIN_LOGIN_IDLE_S,
    MAX_COMMANDS_PER_ADMIN,
    MAX_FEEDS_PER_ADMIN,
    MAX_LOGINS_PER_ADMIN,
    AdminBusy,
    AdminLogins,
)
from flserverd.registry import AuthError

ADMIN = Identity("it@lead.org", "lead", KIND_ADMIN, "super", serial=7)
OTHER = Identity("viewer@lead.org", "lead", KIND_ADMIN, "member", serial=8)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def test_a_looping_script_keeps_a_bounded_number_of_tokens_least_recently_used_first() -> None:
    logins = AdminLogins(ticks=Clock())
    console, _ = logins.login(ADMIN, ADMIN.name)
    scripts = [logins.login(ADMIN, ADMIN.name)[0] for _ in range(MAX_LOGINS_PER_ADMIN - 2)]
    logins.authenticate(console, ADMIN)  # the console keeps working: its token is recent
    viewer, _ = logins.login(OTHER, OTHER.name)
    for _ in range(10):
        scripts.append(logins.login(ADMIN, ADMIN.name)[0])
    assert len(logins._logins) == MAX_LOGINS_PER_ADMIN + 1
    assert logins.authenticate(viewer, OTHER).user == OTHER.name  # another admin's is kept
    assert logins.authenticate(scripts[-1], ADMIN).serial == ADMIN.serial
    assert logins.authenticate(console, ADMIN).user == ADMIN.name
    with pytest.raises(AuthError, match="not logged in"):
        logins.authenticate(scripts[0], ADMIN)


def test_a_token_works_only_whole_and_with_its_certificate() -> None:
    logins = AdminLogins(ticks=Clock())
    token, _ = logins.login(ADMIN, ADMIN.name)
    for presented, identity in ((token, OTHER), (token, None), (token[:-1], ADMIN), ("", ADMIN)):
        with pytest.raises(AuthError, match="not logged in"):
            logins.authenticate(presented, identity)
    site = Identity("site-a", "h", KIND_CLIENT)
    with pytest.raises(AuthError, match="not an admin certificate"):
        logins.login(site, "site-a")
    with pytest.raises(AuthError, match="does not match the certificate") as refused:
        logins.login(ADMIN, "x" * 10_000)
    assert len(str(refused.value)) < 300  # the typed name is the peer's: shown bounded


def test_a_token_idle_for_12_hours_is_refused_though_nobody_logged_in_since() -> None:
    """Idle tokens were dropped only when someone logged in: on a quiet server one idle for
    days still worked, while list_admins said nobody was logged in."""
    clock = Clock()
    logins = AdminLogins(ticks=clock)
    token, _ = logins.login(ADMIN, ADMIN.name)
    clock.now += ADMIN_LOGIN_IDLE_S - 10
    assert logins.authenticate(token, ADMIN).user == ADMIN.name  # used: idle from now on
    clock.now += ADMIN_LOGIN_IDLE_S
    with pytest.raises(AuthError, match="not logged in"):
        logins.authenticate(token, ADMIN)
    assert logins._logins == {}


def test_revoke_logs_out_exactly_the_refused_admins() -> None:
    logins = AdminLogins(ticks=Clock())
    mine = [logins.login(ADMIN, ADMIN.name)[0] for _ in range(2)]
    kept, _ = logins.login(OTHER, OTHER.name)
    out = logins.revoke(lambda admin: "revoked" if admin.serial == ADMIN.serial else None)
    assert out == {ADMIN.name: "revoked"}  # once, for both its logins
    assert logins.authenticate(kept, OTHER).user == OTHER.name
    with pytest.raises(AuthError):
        logins.authenticate(mine[0], ADMIN)


def test_one_admin_has_a_bounded_number_of_feeds_and_commands_under_way() -> None:
    """A script that opens feeds or fires fan-outs without waiting for their replies held
    the server's queues and every site's control stream; another admin is not held up."""
    logins = AdminLogins(ticks=Clock())
    with ExitStack() as feeds:
        for _ in range(MAX_FEEDS_PER_ADMIN):
            logins.may_follow(ADMIN.name)
            feeds.enter_context(logins.watching(ADMIN.name))
        with pytest.raises(AdminBusy, match=r"follows the live feed in 8 consoles already.*close"):
            logins.may_follow(ADMIN.name)
        logins.may_follow(OTHER.name)
    logins.may_follow(ADMIN.name)  # the feeds ended
    for _ in range(MAX_COMMANDS_PER_ADMIN):
        logins.command_started(ADMIN.name)
    with pytest.raises(AdminBusy, match=r"has 8 commands under way already.*wait for their"):
        logins.command_started(ADMIN.name)
    logins.command_started(OTHER.name)
    logins.command_ended(ADMIN.name)
    logins.command_started(ADMIN.name)  # one done: one more may start
