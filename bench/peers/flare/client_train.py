"""NVFlare Client API training script (runs in-process in each client's job process)."""

import argparse

import nvflare.client as flare
import workload as W  # shipped in the job's custom/ folder

parser = argparse.ArgumentParser()
parser.add_argument("--width", type=int, required=True)
args = parser.parse_args()

W.limit_threads()
flare.init()
site = flare.get_site_name()  # "site-3"
idx = W.client_index(site)  # 3 (1-based)
model = W.BenchMLP(args.width)

while flare.is_running():
    inp = flare.receive()
    model.load_state_dict(inp.params)
    rnd = (inp.current_round or 0) + 1  # NVFlare rounds are 0-based
    loss, n = W.local_step(model, idx, rnd)
    flare.send(
        flare.FLModel(
            params=model.state_dict(), metrics={"loss": loss}, meta={"NUM_STEPS_CURRENT_ROUND": n}
        )
    )
