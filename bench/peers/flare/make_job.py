"""Build and export the NVFlare job: the standard PyTorch FedAvgRecipe (FedAvg controller,
in-time weighted aggregation, PT persistor) + a Client API script + RoundTimer.

Runs in the nvflare venv. ``workload`` is imported as a top-level module, as the job's
processes import the copy shipped in custom/ (the recipe records the model's class path).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # bench/peers: workload.py
sys.path.insert(0, str(HERE))  # bench_components.py

import workload as W  # noqa: E402
from bench_components import RoundTimer  # noqa: E402
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="S")
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--round-log", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    width = W.width_for(a.size)
    out = Path(a.out).resolve()
    os.chdir(HERE)  # train_script is found relative to the job's custom/ folder
    recipe = FedAvgRecipe(
        name=f"bench_{a.size}_{a.clients}",
        model=W.BenchMLP(width),
        min_clients=a.clients,
        num_rounds=a.rounds,
        train_script="client_train.py",
        train_args=f"--width {width}",
    )
    recipe._job.to_server(RoundTimer(path=a.round_log), id="round_timer")
    # workload.py must be importable by the client script (and the model class by the server)
    recipe.add_client_file(str(HERE.parent / "workload.py"))
    recipe.add_server_file(str(HERE.parent / "workload.py"))
    if out.exists():
        shutil.rmtree(out)
    recipe.export(str(out))
    print("exported", out, json.dumps({"width": width}))


if __name__ == "__main__":
    main()
