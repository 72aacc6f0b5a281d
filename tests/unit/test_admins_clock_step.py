"""An admin's login outlives a step of the server's wall clock (NTP, a resumed VM).

Idleness was the wall clock's difference: a step forward of more than the 12 hours an idle
token lasts logged every admin out ("not logged in: log in again") and emptied
list_admins, though nobody had been idle.
"""

from __future__ import annotations

import time

from flcore.identity import KIND_ADMIN, Identity
from flserverd.admins import ADMIN_LOGIN_IDLE_S, AdminLogins

ADMIN = Identity("it@lead.org", "lead", KIND_ADMIN, "super", serial=7)


def test_a_wall_clock_step_forward_logs_no_admin_out() -> None:
    step = [0.0]
    logins = AdminLogins(clock=lambda: time.time() + step[0])
    token, _ = logins.login(ADMIN, ADMIN.name)
    step[0] = ADMIN_LOGIN_IDLE_S + 3600
    assert logins.users() == [ADMIN.name]
    assert logins.authenticate(token, ADMIN).user == ADMIN.name
    assert logins.seen(ADMIN.name).last_used >= time.time() + ADMIN_LOGIN_IDLE_S  # wall clock
