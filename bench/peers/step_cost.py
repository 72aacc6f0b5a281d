"""The workload's own compute, outside any FL framework: the client-side term of the floor.

    .venv/bin/python bench/peers/step_cost.py [--json OUT] [--reps 7]

Per size, with 1 torch thread like every benchmark process: load_state_dict of a global
model, one ``local_step`` (forward, backward, SGD on 32 samples), the state-dict copy a
framework would serialise, and a weighted FedAvg of N state dicts (N = 2, 8).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.peers import workload as W  # noqa: E402


def timed(fn: Callable[[], object], reps: int) -> float:
    """Median seconds of ``reps`` calls after one warm-up call."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return round(statistics.median(ts), 5)


def fedavg(sds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The sample-weighted mean of N state dicts (all 32 samples)."""
    acc = {k: torch.zeros_like(v) for k, v in sds[0].items()}
    for sd in sds:
        for k in acc:
            acc[k].add_(sd[k], alpha=32 / (32 * len(sds)))
    return acc


def timed_fedavg(sd: dict[str, torch.Tensor], n: int, reps: int) -> float:
    """Median seconds of a FedAvg of ``n`` copies of ``sd``."""
    copies = [{k: v.clone() for k, v in sd.items()} for _ in range(n)]
    return timed(lambda: fedavg(copies), reps)


def measure(size: str, reps: int) -> dict[str, float]:
    """The costs of one size."""
    width = W.width_for(size)
    sd = {k: v.clone() for k, v in W.make_model(width).state_dict().items()}
    m = W.BenchMLP(width)
    out = {
        "data_gen_s": timed(lambda: W.client_data(1), 3),
        "load_state_dict_s": timed(lambda: m.load_state_dict(sd), reps),
        "local_step_s": timed(lambda: W.local_step(m, 1, 1), reps),
        "state_dict_clone_s": timed(
            lambda: {k: v.detach().clone() for k, v in m.state_dict().items()}, reps
        ),
    }
    for n in (2, 8):
        out[f"fedavg_{n}_s"] = timed_fedavg(sd, n, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, object] = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for size in ("S", "L"):
        out[size] = measure(size, a.reps)
        print(size, json.dumps(out[size]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
