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


def drain_table(d: dict[str, Any], target_ratio: float) -> list[str]:
    """The rounds of the drain, their medians, and where each tool's seconds went."""
    lines = [f"   {'round':<6}{'first':<9}{'pitstop':>10}{'kubectl':>10}{'ratio':>9}"]
    for r in d["rounds"]:
        lines.append(
            f"   {r['round']:<6}{r['first']:<9}{r['pitstop']['drain_s']:>9.2f}s"
            f"{r['kubectl']['drain_s']:>9.2f}s{r['ratio']:>8.1f}x"
        )
    if not d["rounds"]:
        return lines
    lines.append(
        f"   {'median':<15}{d['pitstop_median_s']:>9.2f}s{d['kubectl_median_s']:>9.2f}s"
        f"{d['ratio']:>8.1f}x   target >= {target_ratio:.0f}x: {verdict(d['ratio_met'])}"
    )
    heads = ("cordon", "1st evict", "last evict", "last gone", "done")
    lines.append("   medians, s from the start " + "".join(f"{h:>11}" for h in heads))
    for tool in ("pitstop", "kubectl"):
        t = d["timeline_medians"][tool]
        cells = [t.get(k) for k in TIMELINE] + [d[tool + "_median_s"]]
        text = "".join(f"{c:>11.2f}" if c is not None else f"{'-':>11}" for c in cells)
        lines.append(f"     {tool:<23}{text}")
    requests: dict[str, float] = {}
    for r in d["rounds"]:
        for k, v in r["pitstop"].get("eviction_requests", {}).items():
            requests[k] = requests.get(k, 0) + v
    lines.append(
        "   pitstop eviction requests: "
        + (", ".join(f"{k} {v:.0f}" for k, v in sorted(requests.items())) or "-")
    )
    retries = sum(r["kubectl"].get("retries_after_429", 0) for r in d["rounds"])
    throttled = sum(r["kubectl"].get("client_side_throttling_notes", 0) for r in d["rounds"])
    lines.append(
        f"   kubectl: eviction retries after 429: {retries};"
        f" 'client-side throttling' notes in its stderr: {throttled}"
    )
    return lines
