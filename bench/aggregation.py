"""What each aggregator costs the server: time to add N updates, time to write the model, peak
memory, without daemons.

Writes the round's input model and ``--updates`` random updates of the
benchmark model's size (``fldev/mlpapp.py``: small = 4 MB, large = 100 MB)
into a folder, then, for each rule (``fedavg``, ``fedavg`` with
``clip_update_norm``, ``median``, ``trimmed_mean``), runs the server's own
aggregator (``flserverd.aggregator.make_aggregator``) in a fresh child
process: ``add`` of every update (the time the server spends per accepted
update, in a worker thread), then ``write`` of the next global model. The
child reports both times and its peak RSS (VmHWM), and the same for a child
that only imports numpy and the aggregator (the baseline). What matters for
the memory bound: FedAvg holds one accumulator (the model in float32), the
robust rules a window of ``WINDOW_BYTES`` over all updates, never N models.

    .venv/bin/python bench/aggregation.py                           # large model, 8 updates
    .venv/bin/python bench/aggregation.py --model small --updates 100
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import table  # noqa: E402
from fldev.mlpapp import MODELS, ModelSize  # noqa: E402

RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavg + clip_update_norm": {"clip_update_norm": 1.0},
    "median": {"aggregator": "median"},
    "trimmed_mean (0.2)": {"aggregator": "trimmed_mean", "trim_fraction": 0.2},
}


def write_models(folder: Path, model: ModelSize, updates: int) -> None:
    """The input model and the updates: the MLP's tensors, random, float32."""
    import numpy as np
    from safetensors.numpy import save_file

    widths = [model.in_features, *([model.hidden] * (model.layers - 1)), model.out_features]
    rng = np.random.default_rng(0)
    base = {}
    for index, (a, b) in enumerate(itertools.pairwise(widths)):
        base[f"layers.{index}.weight"] = rng.normal(size=(b, a)).astype(np.float32)
        base[f"layers.{index}.bias"] = rng.normal(size=(b,)).astype(np.float32)
    save_file(base, folder / "input.safetensors")
    for number in range(updates):
        step = {
            k: v + rng.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in base.items()
        }
        save_file(step, folder / f"update_{number}.safetensors")


def child(folder: Path, updates: int, config: dict[str, Any]) -> dict[str, float]:
    """In a fresh process: add every update, write the model, report times and peak RSS."""
    from flcore.appconfig import ServerAppConfig
    from flcore.tensorfile import TensorFile
    from flserverd.aggregator import make_aggregator

    reference = folder / "input.safetensors"
    manifest = TensorFile(reference).manifest
    aggregator = make_aggregator(
        ServerAppConfig(max_num_clients=max(updates, 5), **config),
        manifest,
        reference,
        folder / "kept",
    )
    spools = []
    for number in range(updates):
        spool = folder / f"spool_{number}.safetensors"
        shutil.copyfile(folder / f"update_{number}.safetensors", spool)  # a robust rule moves it
        spools.append(TensorFile(spool))
    started = time.perf_counter()
    for number, update in enumerate(spools):
        aggregator.add(f"site{number}", update, 1.0)
    added = time.perf_counter() - started
    started = time.perf_counter()
    aggregator.write(folder / "out.safetensors")
    written = time.perf_counter() - started
    aggregator.discard()
    for update in spools:
        update.path.unlink(missing_ok=True)
    return {"add_s": added, "write_s": written, "peak_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """VmHWM of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_child(folder: Path, updates: int, rule: str) -> dict[str, float]:
    """Run one rule in a fresh interpreter and read its JSON line."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(folder), str(updates), rule],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out.splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    """Write the models, run every rule, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="large", help="(large)")
    parser.add_argument("--updates", type=int, default=8, help="updates in the round (8)")
    parser.add_argument("--dir", type=Path, help="where to write the models (default: temp)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        folder, updates, rule = Path(args.child[0]), int(args.child[1]), args.child[2]
        if rule == "baseline":
            import numpy  # noqa: F401

            import flserverd.aggregator  # noqa: F401

            print(json.dumps({"add_s": 0.0, "write_s": 0.0, "peak_mb": peak_rss_mb()}))
        else:
            print(json.dumps(child(folder, updates, RULES[rule])))
        return 0
    model = MODELS[args.model]
    rows = []
    with tempfile.TemporaryDirectory(prefix="flbench-agg-", dir=args.dir) as tmp:
        folder = Path(tmp)
        print(f"writing the input and {args.updates} updates ({model.megabytes:.0f} MB each) ...")
        write_models(folder, model, args.updates)
        baseline = run_child(folder, args.updates, "baseline")["peak_mb"]
        for rule in RULES:
            result = run_child(folder, args.updates, rule)
            rows.append(
                [
                    rule,
                    f"{1000 * result['add_s'] / args.updates:.0f}",
                    f"{result['write_s']:.2f}",
                    f"{result['peak_mb']:.0f} ({result['peak_mb'] - baseline:+.0f})",
                ]
            )
    print()
    print(f"{args.updates} updates of {model.parameters:,} parameters ({model.megabytes:.0f} MB)")
    print(f"baseline peak RSS (python, numpy, the aggregator imported): {baseline:.0f} MB")
    headers = ["rule", "add ms/update", "write s", "peak RSS MB (over baseline)"]
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
