"""A site's certificate that ends while its daemon runs, between real daemons over mutual
TLS: the server stops serving it (TLS checked the end at the handshake only), and the site
ends with the words it would say at its next start, not a year of "Socket closed"."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flcore.identity import KIND_CLIENT
from flcore.kitsig import SIGNATURE_FILE, read_startup, sign_files
from flcore.startup import STARTUP_DIR
from fldev.cluster import Cluster
from provision import pki
from provision.workspace import Workspace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXIT_REFUSED = 2
LIFE_S = 20
"""How long the site's certificate lasts from the test's start: time for both daemons to
start and the site to log in."""


def _ending_kit(cluster: Cluster, name: str, left: timedelta) -> datetime:
    """Give ``name``'s kit a certificate of the project's CA that ends in ``left``, sealed
    again by the CA as lead IT would have; returns when it ends."""
    ca = Workspace(cluster.root / "provision").require_ca()
    now = datetime.now(UTC)
    subject = pki.Subject(name, f"org-{name}", KIND_CLIENT)
    ending = pki.issue(ca, subject, "ecdsa-p256", 1, now - timedelta(days=1) + left)
    startup = cluster.root / name / STARTUP_DIR
    (startup / "client.crt").write_bytes(pki.cert_pem(ending.cert))
    (startup / "client.key").write_bytes(pki.key_pem(ending.key))
    files = {k: v for k, v in read_startup(startup).items() if k != SIGNATURE_FILE}
    (startup / SIGNATURE_FILE).write_bytes(sign_files(files, ca.key))
    return ending.cert.not_valid_after_utc


def test_a_site_whose_certificate_ends_while_connected_is_cut_off_and_says_why(
    cluster: Cluster,
) -> None:
    """Before, the server served the site's open connection past its certificate's end."""
    end = _ending_kit(cluster, "flclient1", timedelta(seconds=LIFE_S))
    server = cluster.server()
    site = cluster.client("flclient1")
    assert datetime.now(UTC) < end, "the daemons took longer to start than the certificate lasts"
    assert site.wait(LIFE_S + 60) == EXIT_REFUSED
    assert (
        f"this kit's certificate (flclient1) expired on {end:%Y-%m-%d %H:%M} UTC: ask lead IT"
        in (site.log())
    )
    assert "server unreachable" not in site.log()
    assert "Traceback" not in site.log() + server.log()
