"""One flstack measurement, through the same harness and metrics as the peers.

    .venv/bin/python bench/peers/ours/run.py SIZE N [--rounds 5] [--validate]

It runs from the interpreter that starts it: the repository's ``.venv`` (``make install``,
an editable install of this checkout), so the sitting measures the code in the work tree.

1. Provisioning (cached per N and port; timed, not part of the run): the project's own
   provisioning (server on localhost, site-1..site-N, admin@bench.local as super admin,
   default settings: ECDSA P-256 keys, mutual TLS), every kit extracted.
2. A fresh copy of the kits per run; the app written into the admin's transfer/ folder and
   approved by every site's IT (``flclientd approve``: its trainer is custom code).
3. Server and clients start with the kits' own ``startup/start.sh`` (``FLSTACK_BIN`` = this
   venv); every training and model-init child stays in its daemon's process tree.
4. ``admin.py`` (fladmin): wait for N clients, set_run_number / upload_folder / deploy /
   start, poll until the run stopped, shut down.
5. Rounds from the server's ``run_1/metrics.jsonl``: end = the record's ``time`` (aggregate
   written), start = ``time - duration_s`` (taken before the round is offered).

The app: ``flapp.models.MLP(1024, W, 10, layers=3)``, the same layers and parameter count as
``workload.BenchMLP`` (plus a no-op Flatten); ``flapp.datasets.SyntheticClassification`` of
32 samples, batch 32, one local epoch (exactly one SGD step, lr 0.01, no momentum,
cross-entropy); FedAvg weighted by the 32 samples; ``min_num_clients = max_num_clients = N``
and an hour's wait, so a round closes when all N reported. The workload evaluates nothing,
so the trainer is the built-in one with a ``validate`` that computes nothing
(``bench_noeval.py``); ``--validate`` keeps flstack's per-round validation (a variant).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import harness as H  # noqa: E402
from bench.peers import workload as W  # noqa: E402
from flcore.appreview import review_app  # noqa: E402
from fldev.mlpapp import APP_NAME as APP  # noqa: E402
from fldev.mlpapp import ModelSize, write_app  # noqa: E402
from provision import extract_kit, parse_project, provision_workspace  # noqa: E402

ADMIN = "admin@bench.local"
BIN = Path(sys.executable).parent


def provision(kits: Path, clients: int, port: int) -> None:
    """Kits for a server, ``clients`` sites and one admin, extracted under kits/kits/."""
    shutil.rmtree(kits, ignore_errors=True)
    kits.mkdir(parents=True)
    project = parse_project(
        {
            "api_version": 1,
            "name": "bench",
            "server": {
                "name": "server",
                "host": "localhost",
                "fed_port": port,
                "admin_port": port + 1,
                "org": "bench",
            },
            "clients": [{"name": f"site-{i}", "org": f"org{i}"} for i in range(1, clients + 1)],
            "admins": [{"email": ADMIN, "org": "bench", "role": "super"}],
        }
    )
    for kit in provision_workspace(project, kits / "provision").written:
        assert kit.password is not None  # every key is made here
        extract_kit(kit.zip_path, kit.password, kits / "kits" / kit.name)


def server_rounds(metrics_path: Path, round_log: Path) -> list[dict[str, Any]]:
    """The training records of metrics.jsonl, rewritten as the harness's round events."""
    lines = metrics_path.read_text().splitlines() if metrics_path.exists() else []
    records = [json.loads(x) for x in lines if x.strip()]
    train = [r for r in records if not r.get("final")]
    with open(round_log, "w") as f:
        for r in train:
            start = r["time"] - r["duration_s"]
            f.write(json.dumps({"ev": "start", "round": r["round"] + 1, "t": start}) + "\n")
            f.write(json.dumps({"ev": "end", "round": r["round"] + 1, "t": r["time"]}) + "\n")
    return records


def main() -> None:
    p = H.arguments("flstack", default_port=18102)
    p.add_argument(
        "--validate",
        action="store_true",
        help="VARIANT: keep flstack's per-round validation of the global model",
    )
    a = p.parse_args()
    tag = a.tag or ("_val" if a.validate else "")
    run_dir = H.run_dir(a.runs, "ours", a.size, a.clients, tag)
    os.environ.update({"PATH": f"{BIN}:{os.environ['PATH']}", "FLSTACK_BIN": str(BIN)})
    os.environ.update(H.bench_env())
    os.environ.pop("DATA_ROOT", None)

    kits = a.runs / "ours_kits" / f"n{a.clients}_p{a.port}"
    t = time.time()
    if not (kits / "kits" / ADMIN / "startup").exists():
        provision(kits, a.clients, a.port)
    prov_s = time.time() - t
    ws = run_dir / "ws"
    shutil.copytree(kits / "kits", ws)
    model = ModelSize(a.size, W.IN_DIM, W.width_for(a.size), W.OUT_DIM, layers=3)
    trainer = None if a.validate else (HERE / "bench_noeval.py", "NoEvalTrainer")
    app = write_app(
        ws / ADMIN / "transfer",
        model,
        clients=a.clients,
        num_rounds=a.rounds,
        batch_size=W.BATCH,
        trainer=trainer,
    )
    digest = review_app(app, APP).digest
    for i in range(1, a.clients + 1):
        subprocess.run(
            [str(BIN / "flclientd"), "approve", "--workspace", str(ws / f"site-{i}"), digest],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    round_log = run_dir / "rounds.jsonl"
    admin_out = run_dir / "admin.json"
    h = H.Harness(run_dir)
    t0 = h.mark("t0")
    server = h.start("server", ["bash", str(ws / "server" / "startup" / "start.sh")], "server")
    for i in range(1, a.clients + 1):
        h.start(f"site-{i}", ["bash", str(ws / f"site-{i}" / "startup" / "start.sh")], "client")
    adm = h.start(
        "admin",
        [
            sys.executable,
            str(HERE / "admin.py"),
            "--kit",
            str(ws / ADMIN),
            "--user",
            ADMIN,
            "--app",
            APP,
            "--clients",
            str(a.clients),
            "--out",
            str(admin_out),
        ],
        "admin",
    )
    t_end = h.end(adm)

    rec = json.loads(admin_out.read_text()) if admin_out.exists() else {}
    records = server_rounds(ws / "server" / "run_1" / "metrics.jsonl", round_log)
    train = [r for r in records if not r.get("final")]
    per_round = {str(r["round"] + 1): len(r.get("clients", [])) for r in train}
    mode = (
        "production kits (flprovision), gRPC + mTLS, flserverd/flclientd from "
        "startup/start.sh, fladmin-scripted admin, built-in MLP + SyntheticClassification, "
        + ("built-in validation each round" if a.validate else "no per-round evaluation")
    )
    variant = "VARIANT built-in validation every round" if a.validate else ""
    common = h.result(a, ("ours", "flstack"), (mode, variant), W.model_of(a.size), prov_s, t_end)
    res = {
        **common,
        "total_s": round(rec["t_done"] - t0, 3) if "t_done" in rec else None,
        "startup_to_submit_s": round(rec["t_submitted"] - t0, 3) if "t_submitted" in rec else None,
        "job_status": rec.get("job_status"),
        "check": {
            "rounds_ok": [r["round"] for r in train] == list(range(a.rounds)),
            "all_clients_every_round": bool(per_round)
            and all(v == a.clients for v in per_round.values()),
            "clients_per_round": per_round,
        },
        # flserverd alone (start.sh execs it): its kernel high-water mark
        "server_daemon_peak_rss_mb": common["resources"]["procs"]
        .get(str(server.pid), {})
        .get("hwm_mb"),
        "admin": rec,
    }
    H.finish(run_dir, res)


if __name__ == "__main__":
    main()
