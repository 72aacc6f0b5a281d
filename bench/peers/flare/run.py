"""One NVIDIA FLARE measurement: provision (cached) -> server and N clients from their
startup kits (mutual-TLS gRPC, production mode) -> a scripted admin submits the FedAvg job
-> wait -> collect.

    bench/peers/.venvs/nvflare/bin/python bench/peers/flare/run.py SIZE N [--rounds 5]

Provisioning (``nvflare provision``, cached per N and port) is timed but not part of
the run. Server and clients start with the kits' own ``sub_start.sh --once`` (without its
5 s restart loop); ``admin.py`` (flare_api) waits for N clients, submits, monitors every
0.25 s and shuts the system down. Rounds come from ``bench_components.RoundTimer``:
start = ROUND_STARTED (before the global model is sent), end = AFTER_AGGREGATION.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.peers import harness as H  # noqa: E402
from bench.peers import workload as W  # noqa: E402


def main() -> None:
    p = H.arguments("NVIDIA FLARE", default_port=18002)
    p.add_argument("--scheme", default="grpc", help="grpc (default here) or http (NVFlare's)")
    a = p.parse_args()
    run_dir = H.run_dir(a.runs, "nvflare", a.size, a.clients, a.tag)
    venv_bin = Path(sys.executable).parent
    home = a.runs / "nvflare_home"  # keeps ~/.nvflare out of the real home
    home.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {"PATH": f"{venv_bin}:{os.environ['PATH']}", "HOME": str(home), **H.bench_env()}
    )

    kits_root = a.runs / "nvflare_kits" / f"n{a.clients}_p{a.port}_{a.scheme}"
    t = time.time()
    if not (kits_root / "bench" / "prod_00").exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "provision.py"),
                str(a.clients),
                str(kits_root),
                str(a.port),
                a.scheme,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    prov_s = time.time() - t
    ws = run_dir / "ws"  # a fresh copy: workspaces get job folders, logs, checkpoints
    shutil.copytree(kits_root / "bench" / "prod_00", ws)
    round_log = run_dir / "rounds.jsonl"
    job_dir = run_dir / "job"
    subprocess.run(
        [
            sys.executable,
            str(HERE / "make_job.py"),
            "--size",
            a.size,
            "--clients",
            str(a.clients),
            "--rounds",
            str(a.rounds),
            "--round-log",
            str(round_log),
            "--out",
            str(job_dir),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    job_path = next(job_dir.iterdir())

    h = H.Harness(run_dir)
    t0 = h.mark("t0")
    h.start("server", ["bash", str(ws / "server" / "startup" / "sub_start.sh"), "--once"], "server")
    for i in range(1, a.clients + 1):
        site = ws / f"site-{i}" / "startup" / "sub_start.sh"
        h.start(f"site-{i}", ["bash", str(site), "--once"], "client")
    admin_out = run_dir / "admin.json"
    adm = h.start(
        "admin",
        [
            sys.executable,
            str(HERE / "admin.py"),
            "--kit",
            str(ws / "admin@bench.local"),
            "--job",
            str(job_path),
            "--clients",
            str(a.clients),
            "--out",
            str(admin_out),
        ],
        "admin",
    )
    t_end = h.end(adm)

    rec = json.loads(admin_out.read_text()) if admin_out.exists() else {}
    mode = (
        f"production kits (provisioned), {a.scheme} + mTLS, "
        "FedAvgRecipe(FedAvg controller) + Client API in-process"
    )
    res = {
        **h.result(a, ("nvflare", "nvflare"), (mode, ""), W.model_of(a.size), prov_s, t_end),
        "total_s": round(rec["t_done"] - t0, 3) if "t_done" in rec else None,
        "startup_to_submit_s": round(rec["t_submitted"] - t0, 3) if "t_submitted" in rec else None,
        "job_status": rec.get("job_status"),
    }
    H.finish(run_dir, res)


if __name__ == "__main__":
    main()
