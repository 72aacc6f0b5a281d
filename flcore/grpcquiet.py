"""gRPC's C core keeps its own log lines to itself unless the user asks for them.

The core writes lines such as ``I1207 ... ssl_transport_security.cc:2563]
Handshake failed`` or ``E1207 ... add_port.cc:83] Failed to add port`` straight
to stderr: onto the admin's terminal, into a daemon's journal between its own
one-line events. What they report reaches flstack as an error that it says in
its own words (the server cannot be reached, the port is in use). The core reads
``GRPC_VERBOSITY`` once, when grpc is imported, so each package that is a program
calls :func:`quiet_grpc_core` in its ``__init__``, before any of its modules
imports grpc. A ``GRPC_VERBOSITY`` the user set is kept: ``GRPC_VERBOSITY=debug``
still shows what the core has to say.
"""

from __future__ import annotations

import os

VERBOSITY = "GRPC_VERBOSITY"


def quiet_grpc_core() -> None:
    """Silence gRPC's core for this process and the ones it starts, unless the user chose
    a verbosity."""
    os.environ.setdefault(VERBOSITY, "NONE")
