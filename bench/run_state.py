"""What a run-state event costs the server's loop with many clients registered.

Every accepted update, every site's status change and every offer taken up
publishes the run's state (``FLServer.run_changed``): the feed's ``RunInfo``
with who the round waits for (``FLServer.awaited``) and why it cannot
progress (``FLServer.blocked``). Both read every registered client's status.
This script registers ``--clients`` clients on a real ``FLServer`` (no
gRPC, no daemon), ``--training`` of them training run 1 and in its round,
the others idle, and times, ``--repeats`` times each: ``blocked``,
``awaited``, ``run_view`` (the whole event's state) and ``run_changed``
(the event, published to a feed with no console), median, p90 and max.

    .venv/bin/python bench/run_state.py              # 1,000 clients: 8, then 1,000 training
    .venv/bin/python bench/run_state.py --clients 2000 --training 16,2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import safetensors.numpy  # noqa: E402

from bench.common import median, percentile, table  # noqa: E402
from flcore import status as st  # noqa: E402
from flcore.appconfig import ServerAppConfig  # noqa: E402
from flcore.federation import MachineInfo  # noqa: E402
from flcore.identity import KIND_CLIENT, Identity  # noqa: E402
from flcore.startup import ServerStartup  # noqa: E402
from flcore.status import ClientStatus  # noqa: E402
from flcore.tensorfile import TensorFile  # noqa: E402
from flserverd.server import FLServer  # noqa: E402
from flserverd.statedb import RunRecord  # noqa: E402
from flserverd.training import PHASE_TRAINING, Training  # noqa: E402

RUN = 1
STARTUP = ServerStartup(
    project="bench",
    name="server",
    host="localhost",
    fed_port=1,
    admin_port=2,
    listen_host="localhost",
    heart_beat_timeout=60,
    heartbeat_interval=5,
)


def server_with(root: Path, clients: int, training: int) -> tuple[FLServer, Training]:
    """A server holding run 1 in training, ``clients`` registered (one kit each), the first
    ``training`` of them training it: half of those have sent this round's update."""
    server = FLServer(root, STARTUP, "bench")
    server.store.create_run(RUN)
    server.db.set_meta("run_number", str(RUN))
    server.set_run_number(RUN)
    model = server.store.round_model(RUN, 0)
    model.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file({"w": np.zeros(16, dtype=np.float32)}, model)
    config = ServerAppConfig(num_rounds=10, min_num_clients=2, max_num_clients=100_000)
    record = RunRecord(RUN, st.STARTED, PHASE_TRAINING, "bench", 0, config.num_rounds, 0)
    run = Training(record, config, TensorFile(model).manifest, server.store, server.db, server)
    server.training = run
    for number in range(clients):
        identity = Identity(f"site-{number:05d}", f"org-{number}", KIND_CLIENT)
        client = server.registry.login(identity, "", MachineInfo()).client
        if number < training:
            client.status = ClientStatus(status=st.STARTED, run_number=RUN, round=0)
            run.ready.add(client.instance)
            run.round.participants.add(client.instance)
            if number % 2:
                run.round.contributed[client.instance] = 10
    return server, run


def timed(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds of each call."""
    seconds = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - began)
    return seconds


async def measure(clients: int, training: int, repeats: int) -> list[list[str]]:
    with tempfile.TemporaryDirectory() as folder:
        server, run = server_with(Path(folder), clients, training)
        try:
            calls: list[tuple[str, Callable[[], object]]] = [
                ("blocked", lambda: server.blocked(run)),
                ("awaited", lambda: server.awaited(run)),
                ("run_view", server.run_view),
                ("run_changed", server.run_changed),
            ]
            rows = []
            for name, call in calls:
                xs = timed(call, repeats)
                rows.append(
                    [
                        f"{clients}/{training}",
                        name,
                        f"{median(xs) * 1e6:.0f}",
                        f"{percentile(xs, 90) * 1e6:.0f}",
                        f"{max(xs) * 1e6:.0f}",
                    ]
                )
            return rows
        finally:
            server.db.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000, help="clients registered")
    parser.add_argument(
        "--training", default="8,1000", help="how many of them train (comma-separated sweep)"
    )
    parser.add_argument("--repeats", type=int, default=200, help="calls timed per measure")
    args = parser.parse_args(argv)
    rows = []
    for training in (int(n) for n in args.training.split(",")):
        rows += asyncio.run(measure(args.clients, min(training, args.clients), args.repeats))
    print(table(["registered/training", "call", "median µs", "p90 µs", "max µs"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
