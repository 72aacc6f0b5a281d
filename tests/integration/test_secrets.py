"""Secrets stay secret: after a real run, no token, private key or password of the run is in
a daemon's log, the audit table, a --json reply, a check_status text or the console's feed;
and no daemon may write a core dump."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

import grpc
import pytest

from fladmin.client import AdminClient, load_kit
from flcore.proto.gen import flstack_admin_pb2 as admin_pb2
from fldev.cluster import ADMIN, MEMBER, Cluster
from fldev.poll import wait_until_async
from tests.integration.test_admin import fltui
from tests.integration.test_training import finished

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY_LINE = re.compile(r"^[A-Za-z0-9+/=]{40,}$", re.MULTILINE)


def _secrets(cluster: Cluster, admin_tokens: list[str]) -> dict[str, str]:
    """Every secret of the run, by what it is."""
    found = {f"password of {name}": word for name, word in cluster.passwords.items()}
    for index, token in enumerate(admin_tokens):
        found[f"admin token {index}"] = token
    for state in cluster.root.glob("flclient*/state/flclientd_*.json"):
        token = json.loads(state.read_text())["token"]
        assert token, state
        found[f"token of {state.stem}"] = token
    for key in cluster.root.rglob("*.key"):
        for number, line in enumerate(KEY_LINE.findall(key.read_text())):
            found[f"{key.relative_to(cluster.root)} line {number}"] = line
    return found


def _core_limit(pid: int) -> str:
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max core file size"))
    return " ".join(line.split()[4:6])


def test_no_secret_of_a_run_reaches_a_log_the_audit_a_reply_or_the_console(
    cluster: Cluster,
) -> None:
    server = cluster.server()
    sites = [cluster.client("flclient1"), cluster.client("flclient2")]
    assert {_core_limit(d.pid) for d in (server, *sites)} == {"0 0"}  # no core dumps, ever
    cluster.prepare_run(1, num_rounds=2, wait_after_min_clients=30)
    feed: list[str] = []
    tokens: list[str] = []

    async def watch_a_run() -> None:
        startup = cluster.kit()
        console = AdminClient(startup, load_kit(startup), ADMIN)
        await console.login()
        tokens.append(console.token)

        async def follow() -> None:
            async for event in console.events():
                feed.append(str(event))

        reader = asyncio.ensure_future(follow())
        try:
            await wait_until_async(lambda: feed, 30, "the snapshot")
            for line in ("start server", "start client"):
                assert (await console.execute(line)).ok
            await asyncio.to_thread(finished, cluster)
            await console.execute("check_status client")
            # A wrong token gets an error that does not echo it.
            wrong = admin_pb2.CommandRequest(token=console.token[::-1], line="help")
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await console._stub.Execute(wrong, timeout=10)
            feed.append(str(refused.value))
        finally:
            reader.cancel()
            await console.close()

    asyncio.run(watch_a_run())
    assert any("snapshot" in event for event in feed)
    replies = [
        fltui(cluster, "--json", "--cmd", "check_status server", "--cmd", "check_status client"),
        fltui(cluster, "--cmd", "check_status server", "--cmd", "check_status client"),
        fltui(cluster, "--json", "--cmd", "check_status client", user=MEMBER),
    ]
    for reply in replies:
        assert reply.returncode == 0, reply.stderr
    with sqlite3.connect(cluster.root / "server" / "state" / "flserverd.sqlite3") as db:
        audit = "\n".join(str(row) for row in db.execute("SELECT * FROM audit"))
    assert "start client" in audit

    places = {
        "the server's log": server.log(),
        **{f"{site.name}'s log": site.log() for site in sites},
        "the audit table": audit,
        "the console's feed": "\n".join(feed),
        **{f"reply {i}": r.stdout + r.stderr for i, r in enumerate(replies)},
    }
    secrets = _secrets(cluster, tokens)
    assert sum(1 for what in secrets if what.startswith("token of")) == 2
    assert any(".key line" in what for what in secrets)
    leaks = [
        f"{what} in {where}"
        for what, secret in secrets.items()
        for where, text in places.items()
        if secret in text
    ]
    assert leaks == []
    assert all("PRIVATE KEY" not in text for text in places.values())
    # What people see instead: the token ids, in the logs and in check_status alike.
    row = json.loads(replies[0].stdout.splitlines()[1])["data"]["clients"]["flclient1"]
    assert re.fullmatch(r"[0-9a-f]{8}", row["token_id"]) and "token" not in row
    assert f"with token {row['token_id']}" in server.log()
    assert f"Got token: {row['token_id']}" in sites[0].log()
