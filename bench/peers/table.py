"""The table of a sitting: per config and system the median over its runs, beside the floor.

    .venv/bin/python bench/peers/table.py SITTING_DIR

Reads SITTING_DIR/*/result.json (runs with a variant are left out) and, for the floor,
SITTING_DIR/limits.json and step_cost.json. floor(size, N) = 2·N·M / TLS rate +
N·(load + step + copy-out) / 2 cores + FedAvg(N), M the model's bytes: the model moved
down to N clients and back through TLS, the clients' compute spread over the 2 cores, the
average. It is an estimate, not a proof: see docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

SYSTEMS = {"ours": "flstack", "nvflare": "NVIDIA FLARE", "flower": "Flower"}
DONE = {"ours": "finished", "nvflare": "FINISHED:COMPLETED", "flower": "finished:completed"}
"""The job status of a run that trained all its rounds, as each system words it."""


def floors(sitting: Path) -> tuple[dict[tuple[str, int], float], str]:
    """floor per (size, N), and a line saying what it was computed from ({} if not measured)."""
    try:
        lim = json.loads((sitting / "limits.json").read_text())
        sc = json.loads((sitting / "step_cost.json").read_text())
    except FileNotFoundError:
        return {}, "floor: not measured in this sitting (limits.json / step_cost.json missing)"
    tls = lim["tls13_loopback_100MB"]["median_GBps"] * 1e9
    width = {"S": 608, "L": 4509}
    out = {}
    for size, w in width.items():
        c = (
            sc[size]["load_state_dict_s"]
            + sc[size]["local_step_s"]
            + sc[size]["state_dict_clone_s"]
        )
        model_bytes = 4 * (w * w + 1036 * w + 10)
        for n in (2, 8):
            out[(size, n)] = 2 * n * model_bytes / tls + n * c / 2 + sc[size][f"fedavg_{n}_s"]
    line = (
        f"floor from TLS 1.3 loopback {tls / 1e9:.2f} GB/s; local step "
        f"{sc['S']['local_step_s'] * 1e3:.1f} ms (S), {sc['L']['local_step_s'] * 1e3:.0f} ms (L)"
    )
    load_file = sitting / "floor_load.json"
    if load_file.exists():
        other = json.loads(load_file.read_text())["other_load_cores"]
        line += f" (other load while measuring it: {other:.3f} cores)"
    return out, line


def load_runs(sitting: Path) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    """Every default-config run of the sitting, by (size, N, system)."""
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for f in sorted(sitting.glob("*/result.json")):
        r = json.loads(f.read_text())
        if not r.get("variant"):
            runs.setdefault((r["size"], r["clients"], r["peer"]), []).append(r)
    return runs


def _field(name: str) -> Callable[[dict[str, Any]], Any]:
    return lambda r: r.get(name)


def _cpu(r: dict[str, Any]) -> float:
    return float(r["resources"]["cpu_s_total"])


def _med(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any]) -> float | None:
    values = [v for v in (get(r) for r in rs) if v is not None]
    return statistics.median(values) if values else None


def _cell(rs: list[dict[str, Any]], get: Callable[[dict[str, Any]], Any], digits: int) -> str:
    """The median, and every run's value after it when there are several."""
    m = _med(rs, get)
    if m is None:
        return "—"
    text = f"{m:.{digits}f}"
    if len(rs) > 1:
        each = ["—" if get(r) is None else f"{get(r):.{digits}f}" for r in rs]
        text += f" ({'/'.join(each)})"
    return text


def render(sitting: Path) -> str:
    """The markdown table of a sitting (and the ratios of ours to each peer)."""
    floor, floor_line = floors(sitting)
    runs = load_runs(sitting)
    versions = sorted(
        {
            f"{SYSTEMS.get(p, p)} {r['version']}"
            for rs in runs.values()
            for r in rs
            for p in [r["peer"]]
        }
    )
    lines = [
        f"Sitting {sitting.name}: {', '.join(versions)}; {floor_line}.",
        "",
        "| config | system | runs | s/round (r2–5) | × floor | start→done s | server peak RSS MB "
        "| flserverd alone MB | CPU s | other load / steal (cores, max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = []
    configs = sorted({(s, n) for s, n, _ in runs}, key=lambda c: ({"S": 0, "L": 1}.get(c[0], 2), c))
    for size, n in configs:
        medians: dict[str, dict[str, float | None]] = {}
        for system in SYSTEMS:
            rs = runs.get((size, n, system), [])
            if not rs:
                continue
            bad = [
                r
                for r in rs
                if r.get("job_status") != DONE[system] or r.get("median_round_s") is None
            ]
            good = [r for r in rs if r not in bad]
            name = SYSTEMS[system] + (f" ({len(bad)} failed)" if bad else "")
            if not good:
                lines.append(f"| {size}/{n} | {name} | 0 | | | | | | | |")
                continue
            m = {
                "round": _med(good, _field("median_round_s")),
                "total": _med(good, _field("total_s")),
                "rss": _med(good, _field("server_peak_rss_mb")),
                "cpu": _med(good, _cpu),
            }
            medians[system] = m
            f = floor.get((size, n))
            x_floor = f"{m['round'] / f:.1f}×" if f and m["round"] else ""
            other = max(r["resources"]["other_load_cores"] for r in rs)
            steal = max(r["resources"]["steal_cores"] for r in rs)
            cells = [
                f"{size}/{n}",
                name,
                len(good),
                _cell(good, _field("median_round_s"), 3),
                x_floor,
                _cell(good, _field("total_s"), 1),
                _cell(good, _field("server_peak_rss_mb"), 0),
                _cell(good, _field("server_daemon_peak_rss_mb"), 0) if system == "ours" else "",
                _cell(good, _cpu, 1),
                f"{other:.3f} / {steal:.3f}",
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if (size, n) in floor:
            lines.append(f"| {size}/{n} | floor | | {floor[(size, n)]:.3f} | 1× | | | | | |")
        for peer in ("nvflare", "flower"):
            if peer in medians and "ours" in medians:
                ratios.append((f"{size}/{n}", peer, medians["ours"], medians[peer]))
    if ratios:
        lines += [
            "",
            "| config | flstack ÷ peer | s/round | start→done | server peak RSS | CPU s |",
            "|---|---|---|---|---|---|",
        ]
        for config, peer, ours, theirs in ratios:
            quotients: list[str] = []
            for key in ("round", "total", "rss", "cpu"):
                a, b = ours[key], theirs[key]
                quotients.append(f"{a / b:.3f}" if a is not None and b else "—")
            lines.append(f"| {config} | {SYSTEMS[peer]} | {' | '.join(quotients)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sitting", type=Path)
    print(render(ap.parse_args().sitting), end="")


if __name__ == "__main__":
    main()
