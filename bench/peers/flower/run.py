"""One Flower measurement in deployment mode: flower-superlink (TLS) + N flower-supernode
processes + ``flwr run`` (ServerApp with FedAvg) -> wait -> collect.

    bench/peers/.venvs/flwr/bin/python bench/peers/flower/run.py SIZE N [--rounds 5] [--insecure]

Certificates (``make_certs.sh``: a CA and a server certificate) are cached, timed and not
part of the run. Flower has no mutual TLS: the SuperNodes check the server only.
``flwr run --stream`` returns when the run has finished; ``flwr ls`` confirms its status
(its CPU is taken out of the run's total). Rounds come from ``benchapp/server_app.py``:
start = configure_train (before the global model is sent), end = after aggregate_train.
"""

from __future__ import annotations

import json
import os
import resource
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
    p = H.arguments("Flower", default_port=18000)
    p.add_argument("--node-port-base", type=int, default=19100)
    p.add_argument("--insecure", action="store_true", help="VARIANT: no TLS at all")
    a = p.parse_args()
    run_dir = H.run_dir(a.runs, "flower", a.size, a.clients, a.tag)
    venv_bin = Path(sys.executable).parent
    flwr_home = run_dir / "flwr_home"
    flwr_home.mkdir()
    (run_dir / "home").mkdir()
    os.environ.update(
        {
            "PATH": f"{venv_bin}:{os.environ['PATH']}",
            "HOME": str(run_dir / "home"),
            "FLWR_HOME": str(flwr_home),
            **H.bench_env(),
        }
    )

    certs = a.runs / "flower_certs"
    t = time.time()
    subprocess.run(
        ["bash", str(HERE / "make_certs.sh"), str(certs)], check=True, stdout=subprocess.DEVNULL
    )
    prov_s = time.time() - t
    app_dir = run_dir / "benchapp"  # the Flower App = benchapp/ + workload.py, unchanged
    shutil.copytree(HERE / "benchapp", app_dir)
    shutil.copy(HERE.parent / "workload.py", app_dir / "workload.py")
    round_log = run_dir / "rounds.jsonl"
    addr = f"127.0.0.1:{a.port}"
    conn = f'[superlink]\ndefault = "bench"\n\n[superlink.bench]\naddress = "{addr}"\n'
    conn += "insecure = true\n" if a.insecure else f'root-certificates = "{certs / "ca.crt"}"\n'
    (flwr_home / "config.toml").write_text(conn)
    tls_link = (
        ["--insecure"]
        if a.insecure
        else [
            "--ssl-ca-certfile",
            str(certs / "ca.crt"),
            "--ssl-certfile",
            str(certs / "server.pem"),
            "--ssl-keyfile",
            str(certs / "server.key"),
        ]
    )
    tls_node = ["--insecure"] if a.insecure else ["--root-certificates", str(certs / "ca.crt")]

    h = H.Harness(run_dir)
    t0 = h.mark("t0")
    h.start(
        "superlink",
        [
            "flower-superlink",
            *tls_link,
            "--host",
            "127.0.0.1",
            "--port",
            str(a.port),
            "--disable-runtime-dependency-installation",
        ],
        "server",
        cwd=run_dir,
    )
    for i in range(a.clients):
        h.start(
            f"supernode-{i}",
            [
                "flower-supernode",
                *tls_node,
                "--superlink",
                addr,
                "--port",
                str(a.node_port_base + i),
                "--node-config",
                f"partition-id={i} num-partitions={a.clients}",
            ],
            "client",
            cwd=run_dir,
        )
    H.wait_port(a.port, timeout=60)
    run_cfg = (
        f'size="{a.size}" num-rounds={a.rounds} num-clients={a.clients} round-log="{round_log}"'
    )
    adm = h.start(
        "flwr-run",
        ["flwr", "run", str(app_dir), "bench", "--run-config", run_cfg, "--stream"],
        "admin",
        cwd=run_dir,
    )
    try:
        adm.wait(timeout=3600)
    except subprocess.TimeoutExpired:
        print("flwr run timed out")
    t_done = h.mark("t_done")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ls = subprocess.run(
        ["flwr", "ls", "bench", "--format", "json"], capture_output=True, text=True, cwd=run_dir
    )
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ls_cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    (run_dir / "flwr_ls.json").write_text(ls.stdout + ls.stderr)
    t_end = time.time()
    h.stop_all(grace=20)

    status = None
    try:
        runs = json.loads(ls.stdout).get("runs", [])
        status = runs[-1].get("status") if runs else None
    except (ValueError, AttributeError):
        status = None
    security = "INSECURE" if a.insecure else "TLS (server-auth only)"
    mode = (
        "deployment runtime: flower-superlink + flower-supernode (subprocess "
        f"isolation), {security}, ServerApp FedAvg"
    )
    variant = "VARIANT insecure" if a.insecure else ""
    res = {
        **h.result(a, ("flower", "flwr"), (mode, variant), W.model_of(a.size), prov_s, t_end),
        "total_s": round(t_done - t0, 3),
        "job_status": status,
    }
    res["resources"]["cpu_s_total"] = round(res["resources"]["cpu_s_total"] - ls_cpu, 2)
    res["resources"]["cpu_s_excluded_status_check"] = round(ls_cpu, 2)
    H.finish(run_dir, res)


if __name__ == "__main__":
    main()
