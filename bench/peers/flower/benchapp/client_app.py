"""Flower ClientApp: receive global model, exactly one SGD step on 32 samples, send back."""

import workload as W
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    W.limit_threads()
    idx = int(context.node_config["partition-id"]) + 1  # same 1-based index as NVFlare's site-N
    rnd = int(msg.content["config"]["server-round"])
    model = W.BenchMLP(W.width_for(str(context.run_config["size"])))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    loss, n = W.local_step(model, idx, rnd)
    content = RecordDict(
        {
            "arrays": ArrayRecord(model.state_dict()),
            "metrics": MetricRecord({"loss": loss, "num-examples": n}),
        }
    )
    return Message(content=content, reply_to=msg)
