"""Figures: percentiles, medians, the machine and source measured, and the tables
the benchmarks print."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from typing import Any

from bench.cluster import REPO

TIMELINE = ("cordon_s", "first_eviction_s", "last_eviction_s", "last_pod_gone_s")
"""Per-drain marks, in seconds from the start, taken from the watches."""


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with 50 or 60 samples, p99 is the largest."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def series(values: list[float]) -> dict[str, Any]:
    """A latency series in milliseconds: n, p50, p99, min, max and the samples."""
    if not values:
        return {"n": 0}
    ms = [v * 1000 for v in values]
    return {
        "n": len(ms),
        "p50_ms": round(pct(ms, 50), 1),
        "p99_ms": round(pct(ms, 99), 1),
        "min_ms": round(min(ms), 1),
        "max_ms": round(max(ms), 1),
        "samples_ms": [round(v, 1) for v in ms],
    }


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median_of(rounds: list[dict[str, Any]], tool: str, key: str) -> float | None:
    """The median of `key` over the rounds in which `tool` has it."""
    values = [r[tool][key] for r in rounds if r.get(tool, {}).get(key) is not None]
    return statistics.median(values) if values else None


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def machine(load_start: str, kubernetes: str) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": load(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kubernetes": kubernetes,
    }


def source() -> dict[str, Any]:
    """The commit measured, and whether operator/ differed from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return proc.stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "operator_modified": bool(git("status", "--porcelain", "--", "operator")),
    }


def header(title: str, results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    return [
        f"{title}, {results['date']} (wall time {results['wall_s']:.0f} s)",
        f"machine: {m['cpus']} CPUs, load average {m['load_start']} at start,"
        f" {m['load_end']} at end; Kubernetes {m['kubernetes']}, local control plane + kwok",
        f"pitstop at {results['source']['commit']}"
        + (" + uncommitted operator/ changes" if results["source"]["operator_modified"] else ""),
        "note: the machine is shared and noisy; read the figures as orders of magnitude.",
    ]


def latency_rows(rows: list[tuple[str, dict[str, Any], float | None]]) -> list[str]:
    """One line per series: label, n, p50, p99 and the p50 target's verdict."""
    lines = [f"   {'latency':<36}{'n':>4}{'p50':>10}{'p99':>10}   target"]
    for label, s, target in rows:
        if not s["n"]:
            lines.append(f"{label:<39}{0:>4}   (no samples)")
            continue
        goal = ""
        if target is not None:
            goal = f"p50 <= {target:.0f} ms: {verdict(s['p50_ms'] <= target)}"
        lines.append(f"{label:<39}{s['n']:>4}{s['p50_ms']:>8.1f}ms{s['p99_ms']:>8.1f}ms   {goal}")
    return lines


def drain_table(
    d: dict[str, Any],
    tools: list[str],
    target: float,
    tuned: float,
    bound: float,
    tuned_tools: tuple[str, ...] = ("kubectl-qps",),
) -> list[str]:
    """The rounds of one PDB layout, their medians, the ratios to pitstop, the
    budget's lower bound and the bare evictor's floor, and where each tool's seconds
    went."""
    width = max(11, *(len(t) + 2 for t in tools))
    lines = [f"   {'round':<6}{'first':<13}" + "".join(f"{t:>{width}}" for t in tools)]
    for r in d["rounds"]:
        cells = "".join(f"{r[t]['drain_s']:>{width - 1}.2f}s" for t in tools)
        lines.append(f"   {r['round']:<6}{r['first']:<13}{cells}")
    if not d["rounds"]:
        return lines
    medians = "".join(f"{d['median_s'][t]:>{width - 1}.2f}s" for t in tools)
    lines.append(f"   {'median':<19}{medians}")
    ratios = "".join(
        f"{'':>{width}}" if t == "pitstop" else f"{d['ratio'][t]:>{width - 1}.1f}x" for t in tools
    )
    lines.append(f"   {'peer / pitstop':<19}{ratios}")
    goals = []
    if "kubectl" in d["ratio"]:
        goals.append(f">= {target:g}x kubectl: {verdict(d['ratio']['kubectl'] >= target)}")
    tuned_peers = [t for t in d["ratio"] if t in tuned_tools]
    if tuned_peers:
        best = min(tuned_peers, key=lambda t: d["ratio"][t])
        goals.append(f">= {tuned:g}x best tuned ({best}): {verdict(d['ratio'][best] >= tuned)}")
    if goals:
        lines.append("   targets: " + "; ".join(goals))
    if "bound" in d:
        b = d["bound"]
        lines += [
            f"   budget: {b['allowed']} disruptions at once, {b['waves']} waves; one eviction:"
            f" pod gone {b['pod_gone_s']:.2f}s, budget back {b['budget_back_s']:.2f}s (medians)",
            f"   lower bound {b['waves']} x {b['budget_back_s']:.2f}s = {b['lower_bound_s']:.2f}s"
            f" (deletion alone: {b['lower_bound_deletion_only_s']:.2f}s); pitstop"
            f" {b['pitstop_over_bound']:.2f}x of it",
        ]
    if "floor" in d:
        f = d["floor"]
        goal = ""
        if "bound" in d:  # the target is set under a PDB
            goal = f", target <= {bound:.2f}x: {verdict(f['pitstop_over_floor'] <= bound)}"
        lines.append(
            f"   evictor's floor: {f['floor_s']:.2f}s of accepted evictions (one:"
            f" {f['eviction_p50_s'] * 1000:.0f} ms median; {f['refused']} refused, sent"
            f" again); pitstop {f['pitstop_over_floor']:.2f}x of it{goal}"
        )
    heads = ("cordon", "1st evict", "last evict", "last gone", "done")
    lines.append("   medians, s from the start " + "".join(f"{h:>11}" for h in heads))
    for tool in tools:
        t = d["timeline_medians"][tool]
        marks = [t.get(k) for k in TIMELINE] + [d["median_s"][tool]]
        text = "".join(f"{c:>11.2f}" if c is not None else f"{'-':>11}" for c in marks)
        lines.append(f"     {tool:<23}{text}")
    requests: dict[str, float] = {}
    for r in d["rounds"]:
        for k, v in r["pitstop"].get("eviction_requests", {}).items():
            requests[k] = requests.get(k, 0) + v
    lines.append(
        "   pitstop eviction requests: "
        + (", ".join(f"{k} {v:.0f}" for k, v in sorted(requests.items())) or "-")
    )
    for tool in (t for t in tools[1:] if t.startswith("kubectl")):
        retries = sum(r[tool].get("retries_after_429", 0) for r in d["rounds"])
        throttled = sum(r[tool].get("client_side_throttling_notes", 0) for r in d["rounds"])
        failed = sum(r[tool].get("failed_runs", 0) for r in d["rounds"])
        lines.append(
            f"   {tool}: eviction retries after 429: {retries};"
            f" 'client-side throttling' notes in its stderr: {throttled};"
            f" failed runs, run again: {failed}"
        )
    return lines
