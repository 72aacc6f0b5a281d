"""A kit that names the server by a host name the server's certificate is not for: the TLS
hostname check fails on every try, and the site retried it for good as if the network were
down (systemd restarting it after each retry window) instead of saying its kit is wrong; the
console said it could not connect."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace

import pytest

from fldev.cluster import ADMIN, Cluster, Daemon
from provision import extract_kit, provision_workspace

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def test_a_kit_naming_the_server_by_a_name_not_in_its_certificate_stops_the_site(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Lead IT changed the server's host in project.yml and sent the sites new kits, but the
    server still runs with its kit for the old name (``localhost``)."""
    cluster = make_cluster()
    server = cluster.server()
    renamed = replace(cluster.project, server=replace(cluster.project.server, host="127.0.0.1"))
    issued = provision_workspace(renamed, cluster.root / "provision", force=True)
    kits = {k.name: k for k in issued.written}
    workspace, console = cluster.root / "renamed-site", cluster.root / "renamed-admin"
    for name, folder in (("flclient1", workspace), (ADMIN, console)):
        password = kits[name].password
        assert password is not None
        extract_kit(kits[name].zip_path, password, folder)
    site = Daemon(
        "renamed-site",
        [sys.executable, "-m", "flclientd", "--workspace", str(workspace)],
        cluster.root / "renamed-site.log",
        cluster.env(),
    ).start()
    cluster.daemons.append(site)
    # A configuration error, said once: exit 2 so that systemd does not restart it forever.
    assert site.wait(30) == 2
    ours = [line for line in site.log().splitlines() if " flclientd" in line]
    said = [line for line in ours if "presents a certificate" in line]
    assert len(said) == 1, ours
    assert said[0].endswith(
        f"the server at 127.0.0.1:{cluster.fed_port} presents a certificate for localhost, not "
        "for 127.0.0.1, the host name this kit dials: the kit names the server wrongly (or the "
        "server runs with a kit for another name); provision the kits with the host name the "
        "server's certificate is for"
    )
    assert not any("Could not connect" in line for line in ours)
    assert "joined" not in server.log()

    command = ["-m", "fltui", "--startup", str(console / "startup"), "--cmd", "check_status server"]
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=cluster.env(),
    )
    assert result.returncode == 2
    (told,) = [line for line in result.stderr.splitlines() if line.startswith("fltui:")]
    assert (
        f"the server at 127.0.0.1:{cluster.admin_port} presents a certificate for localhost, "
        "not for 127.0.0.1" in told
    )
