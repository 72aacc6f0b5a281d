"""Sites approve the code they run: real daemons, real flclientd show-app / approve."""

from __future__ import annotations

import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fldev.cluster import ADMIN, Cluster
from fldev.poll import wait_until
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP = "digits_custom"


def custom_app(cluster: Cluster, marker: Path) -> Path:
    """digits_custom whose package notes, on import, the pid of its process's parent."""
    app = cluster.add_app(APP)
    init = app / "resources" / "digits_custom" / "__init__.py"
    init.write_text(
        init.read_text() + f"\nimport os as _os\nwith open({str(marker)!r}, 'a') as _f:\n"
        "    _f.write(f'{_os.getppid()}\\n')\n"
    )
    cluster.configure("config_fed_server.json", app=APP, num_rounds=2, min_num_clients=1)
    cluster.configure("config_fed_client.json", app=APP, local_epochs=1, cross_validate=False)
    return app


def imported_under(marker: Path, pid: int) -> bool:
    """Whether a child of process ``pid`` imported the app's code."""
    return marker.exists() and str(pid) in marker.read_text().split()


def client_row(cluster: Cluster, site: str) -> dict[str, Any]:
    row: dict[str, Any] = cluster.ok(f"check_status client {site}").data["clients"][site]
    return row


def waiting(cluster: Cluster, site: str, run_number: int) -> dict[str, Any] | None:
    row = client_row(cluster, site)
    return (
        row if row["status"] == "waiting for approval" and row["run_number"] == run_number else None
    )


def site_tool(cluster: Cluster, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flclientd", *args], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_custom_code_runs_only_after_the_site_approved_it(cluster: Cluster) -> None:
    marker = cluster.root / "imported.txt"
    cluster.server()
    first = cluster.client("flclient1")
    second = cluster.client("flclient2")
    custom_app(cluster, marker)
    digest = cluster.digest(APP)
    cluster.ok("set_run_number 1")
    upload = cluster.ok(f"upload_folder {APP}")
    assert f"each site trains it only after its IT approved sha256:{digest}" in upload.text
    assert upload.data["sha256"] == digest and upload.data["needs_approval"] is True
    # One digest everywhere: the list, and the documented command on the admin's copy.
    (listed,) = [a for a in cluster.ok("list_apps").data["apps"] if a["name"] == APP]
    assert listed["sha256"] == digest
    local = cluster.root / ADMIN / "transfer" / APP
    done = subprocess.run(
        [sys.executable, "-m", "flcore.appreview", str(local)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout == f"sha256:{digest}  {local}\n"
    cluster.ok(f"deploy {APP} server")
    deployed = cluster.ok(f"deploy {APP} client")
    assert f"not approved yet (sha256:{digest[:12]})" in deployed.text
    cluster.ok("start server")
    cluster.ok("start client")

    for site in ("flclient1", "flclient2"):
        row = wait_until(partial(waiting, cluster, site, 1), 60, f"{site} to wait")
        assert row["detail"] == f"waiting for approval of app {APP} sha256:{digest[:12]}"
    text = cluster.ok("check_status client").text
    assert f"status: waiting for approval of app {APP} sha256:{digest[:12]}" in text
    rows = {c["instance"]: c for c in cluster.status()["clients"]}
    assert rows["flclient1"]["detail"] == f"waiting for approval of app {APP} sha256:{digest[:12]}"
    first.wait_log(f"flclientd show-app --workspace {cluster.root / 'flclient1'} sha256:{digest}")
    # Nothing of the app was imported at a site, and no training process exists.
    assert cluster.worker_pids() == []
    assert not imported_under(marker, first.pid) and not imported_under(marker, second.pid)
    (again,) = cluster.admin("start client flclient1")
    assert not again.ok
    assert "training then starts by itself" in again.text
    wait_until(
        lambda: cluster.run_state()["server_status"] == "training started",
        60,
        "the server's run to go on while the sites wait",
    )

    shown = site_tool(cluster, "show-app", "--workspace", str(cluster.root / "flclient1"), APP)
    assert f"sha256:{digest}" in shown.splitlines()
    by_digest = ["show-app", "--workspace", str(cluster.root / "flclient1"), f"sha256:{digest}"]
    assert site_tool(cluster, *by_digest) == shown  # the copy the log names
    assert "NOT approved at this site" in shown and "_os.getppid()" in shown
    approved = site_tool(
        cluster, "approve", "--workspace", str(cluster.root / "flclient1"), f"sha256:{digest}"
    )
    assert approved.startswith(f"approved app {APP} sha256:{digest}")

    finished(cluster, 1)
    assert imported_under(marker, first.pid)
    assert {tuple(r["clients"]) for r in cluster.metrics(1)} == {("flclient1",)}
    assert not imported_under(marker, second.pid)
    # The run ended while flclient2 waited: it stops waiting, having run nothing.
    wait_until(
        lambda: client_row(cluster, "flclient2")["status"] == "training stopped",
        30,
        "flclient2 to stop",
    )
    assert client_row(cluster, "flclient2")["detail"] == ""
    assert not imported_under(marker, second.pid)


def test_a_built_in_app_runs_at_once_and_a_changed_file_asks_again(cluster: Cluster) -> None:
    marker = cluster.root / "imported.txt"
    cluster.server()
    site = cluster.client("flclient1")
    cluster.prepare_run(1, num_rounds=1, min_num_clients=1)
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    finished(cluster, 1)
    assert not (cluster.root / "flclient1" / "local" / "approved_apps.json").exists()
    assert "uses built-in components only" in site.log()

    app = custom_app(cluster, marker)
    old = cluster.digest(APP)
    cluster.approve(APP, "flclient1")
    trainer = app / "resources" / "digits_custom" / "trainer.py"
    trainer.write_text(trainer.read_text() + "\n# one more line\n")
    new = cluster.digest(APP)
    assert new != old
    cluster.ok("set_run_number 2")
    cluster.ok(f"upload_folder {APP}")
    cluster.ok(f"deploy {APP} server")
    cluster.ok(f"deploy {APP} client flclient1")
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    row = wait_until(lambda: waiting(cluster, "flclient1", 2), 60, "the changed app to wait")
    assert row["detail"].endswith(f"sha256:{new[:12]}")
    assert cluster.worker_pids() == [] and not imported_under(marker, site.pid)
    assert cluster.ok("abort client flclient1").text.strip().endswith("Aborting the client...")
    assert client_row(cluster, "flclient1")["status"] == "training stopped"
    assert cluster.worker_pids() == [] and not imported_under(marker, site.pid)
    assert site.alive()


def test_a_site_that_trusts_custom_code_runs_it_without_approval(cluster: Cluster) -> None:
    marker = cluster.root / "imported.txt"
    local = cluster.root / "flclient1" / "local"
    local.mkdir(exist_ok=True)  # extracting a kit makes it
    (local / "fed_client.json").write_text('{"trust_custom_code": true}')
    cluster.server()
    site = cluster.client("flclient1")
    custom_app(cluster, marker)
    cluster.ok("set_run_number 1")
    cluster.ok(f"upload_folder {APP}")
    cluster.ok(f"deploy {APP} server")
    deployed = cluster.ok(f"deploy {APP} client flclient1")
    assert "not approved" not in deployed.text
    cluster.ok("start server")
    cluster.ok("start client flclient1")
    finished(cluster, 1)
    assert imported_under(marker, site.pid)
    assert "runs custom code without approval, since trust_custom_code is on" in site.log()
