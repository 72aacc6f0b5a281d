"""fladmin: the admin client of an flstack server, for consoles and scripts.

A script that operates a federation imports this package, not the console::

    from fladmin import AdminClient, load_kit

    client = AdminClient(startup, load_kit(startup), "admin@lead.org")
    await client.login()
    reply = await client.execute("check_status server")

:class:`AdminLink` adds the live feed (a snapshot, then deltas) as
:mod:`flcore.feed` data; ``fltui`` draws its screens from it.
"""

from fladmin.client import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_RULE,
    AdminClient,
    AdminError,
    CommandReply,
    load_kit,
    parse_timeout,
)
from fladmin.link import AdminLink, Link

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_RULE",
    "AdminClient",
    "AdminError",
    "AdminLink",
    "CommandReply",
    "Link",
    "load_kit",
    "parse_timeout",
]
