"""Scripted NVFlare admin: wait for N clients, submit the job, wait for it to finish,
record timestamps, shut the system down.  Runs as its own process (counted in CPU)."""

import argparse
import json
import time

from nvflare.fuel.flare_api.flare_api import new_secure_session

p = argparse.ArgumentParser()
p.add_argument("--kit", required=True)
p.add_argument("--user", default="admin@bench.local")
p.add_argument("--job", required=True)
p.add_argument("--clients", type=int, required=True)
p.add_argument("--out", required=True)
p.add_argument("--timeout", type=float, default=1800)
a = p.parse_args()

rec = {"t_admin_start": time.time()}
sess = None
while sess is None:
    try:
        sess = new_secure_session(a.user, a.kit, timeout=5)
    except Exception as e:  # server not up yet
        print("login retry:", e, flush=True)
        time.sleep(0.5)
rec["t_login"] = time.time()
while True:
    info = sess.get_system_info()
    if len(info.client_info) >= a.clients:
        break
    time.sleep(0.25)
rec["t_clients_ready"] = time.time()
job_id = sess.submit_job(a.job)
rec["t_submitted"] = time.time()
rec["job_id"] = job_id
print("submitted", job_id, flush=True)
rc, meta = sess.monitor_job_and_return_job_meta(job_id, timeout=a.timeout, poll_interval=0.25)
rec["t_done"] = time.time()
rec["monitor_rc"] = str(rc)
rec["job_status"] = (meta or {}).get("status")
print("done", rc, rec["job_status"], flush=True)
with open(a.out, "w") as f:
    json.dump(rec, f, indent=2)
try:
    sess.api.do_command("shutdown client")
    sess.api.do_command("shutdown server")
except Exception as e:
    print("shutdown:", e, flush=True)
sess.close()
