"""What this machine allows, for the floor beside the FL benchmarks.

    .venv/bin/python bench/peers/limits.py [--json OUT] [--reps 5]

(a) memory copy bandwidth, a 100 MB float32 buffer (numpy.copyto);
(b) FedAvg arithmetic: weighted sum of eight 25 M-float32 arrays (numpy, and torch with 1
    and 2 threads);
(c) loopback throughput of 100 MB between two Python processes, TLS 1.3 (ssl module,
    the suite negotiated) and plain TCP: the floor's transfer term uses the TLS rate;
(d) starting a fresh Python process that imports torch (what a runtime pays that spawns a
    process per task).

Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

import numpy as np

N_FLOATS = 25_000_000  # 100 MB float32: the L model
PAYLOAD = 100 * 1000 * 1000  # 100 MB on the wire
CHUNK = 1 << 20


def timeit(fn: Callable[[], object], reps: int) -> list[float]:
    """Seconds of each of ``reps`` calls."""
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def summary(ts: list[float], nbytes: int | None = None) -> dict[str, Any]:
    """Best and median seconds (and GB/s when ``nbytes`` moved each time)."""
    d: dict[str, Any] = {
        "best_s": round(min(ts), 5),
        "median_s": round(statistics.median(ts), 5),
        "reps": len(ts),
    }
    if nbytes:
        d["best_GBps"] = round(nbytes / min(ts) / 1e9, 2)
        d["median_GBps"] = round(nbytes / statistics.median(ts) / 1e9, 2)
    return d


def bench_memcpy(reps: int) -> dict[str, Any]:
    """(a)"""
    src = np.random.default_rng(0).standard_normal(N_FLOATS, dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # fault the pages in
    return {
        "what": "np.copyto 100 MB float32 -> preallocated 100 MB (GB/s = bytes copied / s)",
        **summary(timeit(lambda: np.copyto(dst, src), reps), src.nbytes),
    }


def bench_aggregate(reps: int) -> dict[str, Any]:
    """(b)"""
    rng = np.random.default_rng(1)
    arrs = [rng.standard_normal(N_FLOATS, dtype=np.float32) for _ in range(8)]
    w = np.full(8, 1 / 8, dtype=np.float32)
    acc = np.empty_like(arrs[0])
    tmp = np.empty_like(arrs[0])

    def wsum() -> None:
        np.multiply(arrs[0], w[0], out=acc)
        for i in range(1, 8):
            np.multiply(arrs[i], w[i], out=tmp)
            np.add(acc, tmp, out=acc)

    wsum()
    nbytes = 8 * arrs[0].nbytes
    out: dict[str, Any] = {
        "what": "weighted sum of 8 x 25M float32 (800 MB read), in place, 1 thread",
        "numpy_weighted": summary(timeit(wsum, reps), nbytes),
    }
    import torch

    ta = [torch.from_numpy(a) for a in arrs]
    tacc = torch.empty_like(ta[0])

    def t_wsum() -> None:
        torch.mul(ta[0], 0.125, out=tacc)
        for i in range(1, 8):
            tacc.add_(ta[i], alpha=0.125)

    for threads in (1, 2):
        torch.set_num_threads(threads)
        t_wsum()
        out[f"torch_weighted_{threads}thread"] = summary(timeit(t_wsum, reps), nbytes)
    return out


def make_cert(d: str) -> tuple[str, str]:
    """A self-signed certificate for localhost: (certificate, key) paths."""
    key, crt = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            crt,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return crt, key


def _sender(port: int, cafile: str | None, reps: int, q: Queue[Any]) -> None:
    """Send PAYLOAD ``reps`` times, each on a new connection; put the timings on ``q``."""
    buf = memoryview(os.urandom(1) * PAYLOAD)
    res = []
    for _ in range(reps):
        t_conn = time.perf_counter()
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s: socket.socket = raw
        cipher = None
        if cafile:
            ctx = ssl.create_default_context(cafile=cafile)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            cipher = s.cipher()
        t_hs = time.perf_counter() - t_conn
        t0 = time.perf_counter()
        for off in range(0, PAYLOAD, CHUNK):
            s.sendall(buf[off : off + CHUNK])
        ack = s.recv(1)
        res.append((time.perf_counter() - t0, t_hs, cipher))
        if ack != b"k":
            raise RuntimeError("no acknowledgement from the receiver")
        s.close()
    q.put(res)


def _receive_all(s: socket.socket, n: int) -> None:
    buf = bytearray(CHUNK)
    got = 0
    while got < n:
        k = s.recv_into(buf, min(CHUNK, n - got))
        if k == 0:
            raise RuntimeError("short read")
        got += k


def bench_loopback(use_tls: bool, reps: int) -> dict[str, Any]:
    """(c)"""
    with tempfile.TemporaryDirectory() as d:
        crt, key = make_cert(d) if use_tls else (None, None)
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        port = ls.getsockname()[1]
        sctx = None
        if crt and key:
            sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            sctx.minimum_version = ssl.TLSVersion.TLSv1_3
            sctx.load_cert_chain(crt, key)
        spawn = mp.get_context("spawn")
        q: Queue[Any] = spawn.Queue()
        p = spawn.Process(target=_sender, args=(port, crt, reps, q))
        p.start()
        for _ in range(reps):
            c, _ = ls.accept()
            if sctx:
                c = sctx.wrap_socket(c, server_side=True)
            _receive_all(c, PAYLOAD)
            c.sendall(b"k")
            c.close()
        res = q.get()
        p.join()
        ls.close()
    out = {
        "what": ("TLS 1.3" if use_tls else "plain TCP")
        + " loopback, 100 MB one way, 1 MB sendall chunks, first byte to the receiver's ack",
        **summary([r[0] for r in res], PAYLOAD),
        "connect_handshake_ms_median": round(statistics.median(r[1] for r in res) * 1000, 2),
    }
    if use_tls:
        out["cipher"] = res[0][2]
        out["openssl"] = ssl.OPENSSL_VERSION
    return out


def bench_spawn(reps: int) -> dict[str, Any]:
    """(d)"""

    def run(code: str) -> None:
        subprocess.run([sys.executable, "-c", code], check=True)

    return {
        "what": "fresh `python -c 'import torch'` (warm page cache)",
        "import_torch": summary(timeit(lambda: run("import torch"), reps)),
        "bare_python": summary(timeit(lambda: run("pass"), reps)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    out: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
        }
    }
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            out["machine"]["cpu_model"] = line.split(":", 1)[1].strip()
            break
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("memcpy_100MB", lambda: bench_memcpy(a.reps)),
        ("aggregate_8x25M", lambda: bench_aggregate(a.reps)),
        ("tcp_loopback_100MB", lambda: bench_loopback(False, a.reps)),
        ("tls13_loopback_100MB", lambda: bench_loopback(True, a.reps)),
        ("spawn_import_torch", lambda: bench_spawn(a.reps)),
    ]
    for key, fn in parts:
        out[key] = fn()
        print(key, json.dumps(out[key]), flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
