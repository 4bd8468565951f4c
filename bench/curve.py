"""The cost curve at scale (`python -m bench curve`, `make bench-curve`): the scale
benchmark (bench/policy.py) at several sizes, 20 pods a node, the operator in leader
election and confined to the Deployment's limits (1 CPU, 1 GiB, where cgroups
allow), each size on a fresh cluster of its own, one after the other.

Each figure is fitted against the size by linear least squares, y = a + b x nodes
(pods are 20 x nodes throughout), and extrapolated to 5,000 nodes / 100,000 pods
(issue 11's size, beyond this machine): the memory limit that size needs (its
start-up peak RSS), its start-up time, and the size at which the 1 GiB limit is
reached. `--fit-only` fits the per-size results of an earlier run again
(bench/results/policy-<nodes>.json) without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from bench import policy, report
from bench.cluster import DEPLOYMENT_LIMITS, RESULTS, BenchError, log
from bench.main import entry

SIZES = (250, 500, 1000, 2000)
TARGET_NODES = 5000
LIMIT_MB = DEPLOYMENT_LIMITS[1] / 2**20
"""The Deployment's memory limit in the unit of the RSS figures (MiB, from /proc)."""
HEADROOM = 1.25
"""A memory limit for a size: its extrapolated start-up peak and a quarter more."""

FIGURES: tuple[tuple[str, str, str], ...] = (
    ("startup_acting_s", "start -> acting", "s"),
    ("startup_cpu_s", "its CPU until acting", "s"),
    ("rss_mb", "RSS after start-up", "MB"),
    ("rss_peak_mb", "RSS peak (start-up)", "MB"),
    ("idle_cpu_percent", "idle CPU", "%"),
    ("requests_per_repair", "API requests per repair", ""),
    ("detection_p99_s", "detection p99", "s"),
)


def requests_per_repair(r: dict[str, Any]) -> float | None:
    if r.get("identity") != "sa":
        return None
    mine = r["burst_requests"]["operator"]
    return float(sum(v for k, v in mine.items() if " " not in k) / r["burst"])


def fit(points: list[tuple[float, float]]) -> dict[str, float] | None:
    """y = a + b x by least squares, with r²; None under two distinct x."""
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    b = sxy / sxx
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for _, y in points)
    ss_res = sum((y - (a + b * x)) ** 2 for x, y in points)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def analyse(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fits over the sizes measured, the extrapolation to TARGET_NODES and the
    size at which the start-up peak reaches the memory limit."""
    done = [r for r in runs if "error" not in r]
    fits: dict[str, Any] = {}
    for key, _, _ in FIGURES:
        points = [
            (float(r["nodes"]), float(v))
            for r in done
            if (v := requests_per_repair(r) if key == "requests_per_repair" else r.get(key))
            is not None
        ]
        f = fit(points)
        if f is not None:
            f["at_target"] = f["a"] + f["b"] * TARGET_NODES
        fits[key] = f
    peak = fits.get("rss_peak_mb")
    limit_nodes = None
    if peak is not None and peak["b"] > 0:
        limit_nodes = (LIMIT_MB - peak["a"]) / peak["b"]
    return {
        "fits": fits,
        "target_nodes": TARGET_NODES,
        "target_pods": TARGET_NODES * 20,
        "memory_limit_at_target_mb": peak["at_target"] * HEADROOM if peak else None,
        "limit_mb": LIMIT_MB,
        "limit_reached_at_nodes": limit_nodes,
    }


def size_args(args: argparse.Namespace, nodes: int) -> argparse.Namespace:
    """The scale benchmark's options for one size."""
    argv = [
        *("--nodes", str(nodes), "--pods", str(nodes * args.pods_per_node)),
        *("--samples", str(args.samples), "--settle", str(args.settle)),
        *("--idle-window", str(args.idle_window), "--burst", str(args.burst), "--election"),
        *("--output", str(RESULTS / f"policy-{nodes}.json")),
        *(["--no-limits"] if args.no_limits else []),
        *(["--pods-made"] if args.pods_made else []),
    ]
    return policy.parser().parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    load_start = report.load()
    runs: list[dict[str, Any]] = []
    for nodes in args.sizes:
        path = RESULTS / f"policy-{nodes}.json"
        if args.fit_only:
            if path.exists():
                runs.append(json.loads(path.read_text()))
            continue
        log(f"curve: {nodes} nodes, {nodes * args.pods_per_node} pods")
        sized = size_args(args, nodes)
        t0 = time.monotonic()
        try:
            result = policy.run(sized)
        except BenchError as e:  # an OOM kill at the limit is a finding, not a crash
            log(f"curve: {nodes} nodes failed: {e}")
            runs.append({"nodes": nodes, "error": str(e), "wall_s": time.monotonic() - t0})
            break  # a larger size fares no better
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(policy.render(result), flush=True)
        runs.append(result)
    return {
        "date": report.today(),
        "wall_s": round(time.monotonic() - started, 1),
        "load_start": load_start,
        "load_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "runs": runs,
        **analyse(runs),
    }


def render(r: dict[str, Any]) -> str:
    runs = r["runs"]
    done = [x for x in runs if "error" not in x]
    lines = [
        f"pitstop cost curve, {r['date']} (wall time {r['wall_s']:.0f} s; load {r['load_start']}"
        f" at start, {r['load_end']} at end)",
        "  the scale benchmark per size, 20 pods a node, leader election on, "
        + (done[0].get("limits", "limits not recorded") if done else "-"),
        f"  {'':<26}" + "".join(f"{x['nodes']:>10}" for x in done) + "   fit a + b x nodes (r²)",
    ]
    for key, label, unit in FIGURES:
        cells = []
        for x in done:
            v = requests_per_repair(x) if key == "requests_per_repair" else x.get(key)
            cells.append(f"{v:>10.2f}" if v is not None else f"{'-':>10}")
        f = r["fits"].get(key)
        fitted = (
            f"   {f['a']:.3g} + {f['b'] * 1000:.3g}/1,000 nodes (r² {f['r2']:.2f});"
            f" at {r['target_nodes']:,}: {f['at_target']:.3g} {unit}"
            if f
            else ""
        )
        lines.append(f"  {label + (f' ({unit})' if unit else ''):<26}" + "".join(cells) + fitted)
    lines.append(
        f"  {'load at end (1 min)':<26}"
        + "".join(f"{float(x['machine']['load'][0]):>10.2f}" for x in done)
    )
    for x in runs:
        if "error" in x:
            lines.append(f"  {x['nodes']} nodes: not measured ({x['error']})")
    peak = r["fits"].get("rss_peak_mb")
    acting = r["fits"].get("startup_acting_s")
    cpu = r["fits"].get("startup_cpu_s")
    if peak and acting:
        lines.append(
            f"  at {r['target_nodes']:,} nodes / {r['target_pods']:,} pods: start-up peak"
            f" {peak['at_target']:.0f} MB (a memory limit of {r['memory_limit_at_target_mb']:.0f}"
            f" MB with {HEADROOM - 1:.0%} headroom), start -> acting {acting['at_target']:.0f} s"
            + (f" ({cpu['at_target']:.0f} s of CPU)" if cpu else "")
        )
    if r["limit_reached_at_nodes"] is not None:
        nodes = r["limit_reached_at_nodes"]
        lines.append(
            f"  the start-up peak reaches the {r['limit_mb']:.0f} MB limit at ~{nodes:,.0f} nodes"
            f" / {nodes * 20:,.0f} pods"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench curve", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(SIZES),
        help="nodes per run, comma-separated (default 250,500,1000,2000)",
    )
    p.add_argument("--pods-per-node", type=int, default=20)
    p.add_argument("--samples", type=int, default=30, help="detection samples per size")
    p.add_argument("--settle", type=float, default=30.0)
    p.add_argument("--burst", type=int, default=50, help="nodes failing at once per size")
    p.add_argument("--idle-window", type=float, default=60.0)
    p.add_argument("--no-limits", action="store_true", help="without the Deployment's limits")
    p.add_argument("--pods-made", action="store_true", help="each size: bench policy --pods-made")
    p.add_argument(
        "--fit-only",
        action="store_true",
        help="run nothing: fit bench/results/policy-<nodes>.json of the sizes again",
    )
    p.add_argument("--quick", action="store_true", help="50, 100 and 200 nodes, 10 samples")
    p.add_argument("--output", type=Path, default=RESULTS / "curve.json")
    return p


def quick(args: argparse.Namespace) -> None:
    args.sizes, args.samples, args.settle, args.idle_window = [50, 100, 200], 10, 10, 20


def main(argv: list[str] | None = None) -> int:
    return entry(parser(), quick, run, render, argv)
