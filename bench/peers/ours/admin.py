"""Scripted flstack admin, as ``flare/admin.py`` drives NVFlare with its admin library:
log in (retrying until the server answers), wait for N clients, run the Clara command
sequence, poll until the run has stopped, record the times, shut the daemons down.

Runs as its own process (role "admin", counted in the run's CPU) with one login of
:class:`fladmin.AdminClient`. It polls ``check_status server`` every 0.25 s, NVFlare's
admin's interval, so both see the end of a run equally late.

Writes --out: ``{"t_admin_start", "t_login", "t_clients_ready", "t_submitted", "t_done",
"job_status", "polls", "start_replies"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from fladmin import AdminClient, AdminError, load_kit  # noqa: E402
from flcore import status as st  # noqa: E402


async def drive(a: argparse.Namespace) -> dict[str, Any]:
    """The whole admin session; the record written to --out."""
    rec: dict[str, Any] = {"t_admin_start": time.time(), "polls": 0}
    startup = a.kit / "startup"
    admin = AdminClient(startup, load_kit(startup), a.user)
    admin.timeout = 120
    while True:
        try:
            await admin.login()
            break
        except AdminError:
            await asyncio.sleep(0.25)  # the server is still starting
    rec["t_login"] = time.time()

    async def server_status() -> dict[str, Any]:
        reply = await admin.execute("check_status server")
        rec["polls"] += 1
        if not reply.ok:
            raise RuntimeError(f"check_status server failed: {reply.text}")
        return reply.data

    try:
        while (await server_status())["registered"] < a.clients:
            await asyncio.sleep(a.poll)
        rec["t_clients_ready"] = time.time()
        replies = []
        for line in (
            "set_run_number 1",
            f"upload_folder {a.app}",
            f"deploy {a.app} server",
            f"deploy {a.app} client",
            "start server",
            "start client",
        ):
            reply = await admin.execute(line)
            replies.append({"command": line, "ok": reply.ok, "text": reply.text[-500:]})
            if not reply.ok:
                break
        rec["t_submitted"] = time.time()
        rec["start_replies"] = replies
        run: dict[str, Any] = {}
        if all(r["ok"] for r in replies):
            deadline = time.monotonic() + a.timeout
            while time.monotonic() < deadline:
                run = (await server_status())["run"]
                if run["server_status"] == st.STOPPED:
                    break
                await asyncio.sleep(a.poll)
        rec["t_done"] = time.time()
        rec["job_status"] = run.get("reason") or run.get("server_status", "not started")
        a.out.write_text(json.dumps(rec, indent=2))
        for line in ("shutdown client", "shutdown server"):  # clients first, as the docs say
            reply = await admin.execute(line, confirmed=True)
            print(line, "->", reply.text.strip(), flush=True)
    finally:
        await admin.close()
    return rec


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kit", type=Path, required=True, help="the admin's workspace (startup/)")
    p.add_argument("--user", required=True)
    p.add_argument("--app", required=True)
    p.add_argument("--clients", type=int, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--poll", type=float, default=0.25)
    rec = asyncio.run(drive(p.parse_args()))
    print("done", rec.get("job_status"), flush=True)


if __name__ == "__main__":
    main()
