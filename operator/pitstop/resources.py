"""Kubernetes resource quantities ("100m", "1.5", "512Mi", "1e3") and what a pod
asks of a node's allocatable: cpu (in millicores), memory (in bytes) and one pod
slot. Pure; the pod index keeps a pod's requests in this form, and the room check
(pitstop.pool.room) adds them up."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

RESOURCES: Final = ("cpu", "memory", "pods")
"""What the room check weighs; every other resource (ephemeral-storage, GPUs,
hugepages) is not modelled (docs/policies.md)."""

_QUANTITY: Final = re.compile(r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
_SUFFIX: Final = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
}


def parse_quantity(value: Any) -> Decimal:
    """A resource quantity's value ("250m" → 0.25, "1Gi" → 1073741824); ValueError
    for anything the API server would not have stored."""
    text = str(value).strip()
    found = _QUANTITY.match(text)
    if not found:
        raise ValueError(f"invalid quantity {value!r}")
    number, suffix = found.group(1), found.group(2) or ""
    try:
        if suffix[:1] in ("e", "E"):
            return Decimal(number + suffix)
        return Decimal(number) * _SUFFIX[suffix]
    except InvalidOperation as e:
        raise ValueError(f"invalid quantity {value!r}") from e


def amount(resource: str, value: Any) -> int:
    """A quantity in the unit the room check counts: millicores for cpu, whole units
    (bytes, pods) otherwise; rounded up, as the scheduler rounds a request."""
    scale = 1000 if resource == "cpu" else 1
    return math.ceil(parse_quantity(value) * scale)


def amounts(quantities: Mapping[str, Any] | None) -> dict[str, int]:
    """cpu and memory (and pods, in allocatable) of a resource list, in counted units;
    a value that does not parse counts as absent."""
    found = {}
    for resource in RESOURCES:
        if quantities and resource in quantities:
            try:
                found[resource] = amount(resource, quantities[resource])
            except ValueError:
                continue
    return found


def _add(total: dict[str, int], more: Mapping[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + v


def _at_least(total: dict[str, int], floor: Mapping[str, int]) -> None:
    for k, v in floor.items():
        total[k] = max(total.get(k, 0), v)


def pod_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    """cpu and memory a pod asks of its node, as the scheduler counts them: its
    containers' requests added up; at least what each init container needs while it
    runs (beside the sidecars started before it, which then keep running); plus the
    pod's overhead. Resources nobody requests are absent (0)."""

    def requests(c: Mapping[str, Any]) -> dict[str, int]:
        return amounts((c.get("resources") or {}).get("requests"))

    total: dict[str, int] = {}
    for c in spec.get("containers") or []:
        _add(total, requests(c))
    sidecars: dict[str, int] = {}
    floor: dict[str, int] = {}
    for c in spec.get("initContainers") or []:
        own = requests(c)
        if c.get("restartPolicy") == "Always":  # a sidecar: it runs beside the rest
            _add(sidecars, own)
            _at_least(floor, sidecars)
        else:
            running = dict(sidecars)
            _add(running, own)
            _at_least(floor, running)
    _add(total, sidecars)
    _at_least(total, floor)
    _add(total, amounts(spec.get("overhead")))
    total.pop("pods", None)
    return {k: v for k, v in total.items() if v}


def describe(need: Mapping[str, int]) -> str:
    """e.g. "1500m cpu, 3Gi memory, 2 pods" (what is absent or 0 is left out)."""
    parts = []
    if need.get("cpu"):
        parts.append(f"{need['cpu']}m cpu")
    if need.get("memory"):
        parts.append(f"{_bytes(need['memory'])} memory")
    if need.get("pods"):
        parts.append(f"{need['pods']} pod{'s' if need['pods'] != 1 else ''}")
    return ", ".join(parts) or "nothing"


def _bytes(n: int) -> str:
    for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if n >= size:
            value = n / size
            return f"{value:.1f}".rstrip("0").rstrip(".") + unit
    return str(n)


def total(needs: Iterable[Mapping[str, int]]) -> dict[str, int]:
    found: dict[str, int] = {}
    for need in needs:
        _add(found, need)
    return found
