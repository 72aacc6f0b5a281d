"""A replacement kit issued too soon after a console ``revoke``: refused (lead IT's clock may
be ahead of the server's), with words that say it is the replacement and what to do."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from flserverd.commands import AdminCommands
from flserverd.revocation import minute_after
from flserverd.server import FLServer
from flserverd.statedb import StateDB
from tests.unit.test_exchange import on_server
from tests.unit.test_revocation import ADMIN, NOW, SITE, Clock, _ca, _revocations, refused


def test_a_replacement_issued_within_the_margin_is_told_to_be_issued_again_and_when(
    tmp_path: Path,
) -> None:
    """Lead IT re-issued the kit two minutes after the revoke, as the reply said to: the
    site installed it and read "this kit no longer works; ask lead IT for a new one", about
    the new one."""
    _, ca_path = _ca(tmp_path)
    db = StateDB(tmp_path / "state.sqlite3")
    revocations = _revocations(db, tmp_path, ca_path, Clock(NOW))
    revocations.seen(SITE)
    revoked = revocations.revoke(SITE.name, ADMIN.name)
    assert revoked is not None
    works = minute_after(revoked.works_from)
    soon = refused(revocations, replace(SITE, serial=0x53, issued=NOW + timedelta(minutes=2)))
    assert soon == (
        "this kit of site-a was issued on 2026-03-01 12:02 UTC, within 5 minutes after "
        "it@lead.org revoked site-a on this server (2026-03-01 12:00 UTC), a margin kept for "
        "lead IT's clock being ahead of the server's, so it is refused too: lead IT should "
        "re-issue it once more ('flprovision --reissue site-a'); one issued after "
        f"{works} works"
    )
    old = refused(revocations, SITE)  # the kit revoked is told it no longer works
    assert old is not None and old.startswith("site-a was revoked on this server by it@lead.org")
    assert "no longer works" in old
    db.close()


def test_the_revoke_reply_says_after_when_lead_it_may_re_issue_the_kit(tmp_path: Path) -> None:
    """The reply sent lead IT to 'flprovision --reissue' at once; the kit it made then was
    refused at the site, hours later."""

    async def scenario(server: FLServer) -> None:
        commands = AdminCommands(server)
        for _ in range(2):  # revoked now, then already
            reply = await commands.execute(ADMIN.name, "super", "revoke site-a", 5.0, True)
            (held,) = server.revocations.names()
            assert (
                f"'flprovision --reissue site-a' after {minute_after(held.works_from)}: a kit "
                "issued earlier is refused too)"
            ) in reply.text

    on_server(tmp_path, scenario)
