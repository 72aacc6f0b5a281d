"""Flower ServerApp: standard FedAvg strategy (sample-weighted by 'num-examples'),
no federated evaluation; a thin subclass only timestamps rounds."""

import json
import time

import workload as W
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

app = ServerApp()


class TimedFedAvg(FedAvg):
    def __init__(self, round_log: str, **kw):
        super().__init__(**kw)
        self.round_log = round_log

    def _w(self, ev, rnd):
        with open(self.round_log, "a") as f:
            f.write(json.dumps({"ev": ev, "round": rnd, "t": time.time()}) + "\n")

    def configure_train(self, server_round, arrays, config, grid):
        self._w("start", server_round)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        out = super().aggregate_train(server_round, replies)
        self._w("end", server_round)
        return out


@app.main()
def main(grid: Grid, context: Context) -> None:
    W.limit_threads()
    cfg = context.run_config
    n = int(cfg["num-clients"])
    model = W.make_model(W.width_for(str(cfg["size"])))
    strategy = TimedFedAvg(
        round_log=str(cfg["round-log"]),
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=n,
        min_available_nodes=n,
    )
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        train_config=ConfigRecord({}),
        num_rounds=int(cfg["num-rounds"]),
    )
    strategy._w("end_run", -1)
