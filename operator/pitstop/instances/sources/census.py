"""The status of every InstanceProfile: which instances each describes, which other
profiles overlap it and which of them wins. Pure (pitstop.instances.sources.daemon
writes it)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pitstop import constants, kstatus
from pitstop.conditions import set_condition
from pitstop.instances.sources.matching import match, pair
from pitstop.instances.sources.profiles import (
    InvalidProfile,
    Profile,
    describe_deadline,
    describe_signal,
    describe_tasks,
)
from pitstop.models import InstanceProfileStatus

C = constants


@dataclass
class Census:
    """Which instances each profile describes, over every pod the operator knows."""

    pods: dict[str, int] = field(default_factory=dict)
    """Profile name → instances it wins (describes)."""
    overlaps: dict[str, dict[str, tuple[int, str]]] = field(default_factory=dict)
    """Profile name → other profile → (pods both match, one of them)."""


def census(
    profiles: Iterable[Profile],
    pods: Iterable[tuple[str, Mapping[str, str], str]],
    namespace_labels: Mapping[str, Mapping[str, str]],
) -> Census:
    """`pods`: (namespace/name, labels, namespace) of every instance."""
    profiles = list(profiles)
    c = Census(pods={p.name: 0 for p in profiles}, overlaps={p.name: {} for p in profiles})
    for key, labels, ns in pods:
        m = match(profiles, labels, namespace_labels.get(ns))
        if m.profile is None:
            continue
        c.pods[m.profile.name] += 1
        names = (m.profile.name, *m.others)
        for a in names:
            for b in names:
                if a != b:
                    n, example = c.overlaps[a].get(b, (0, key))
                    c.overlaps[a][b] = (n + 1, example)
    return c


def profile_status(
    item: Profile | InvalidProfile,
    found: Census,
    winners: Mapping[tuple[str, str], str],
    old: InstanceProfileStatus,
    now: datetime,
) -> InstanceProfileStatus:
    """The status of one profile; `winners` maps each overlapping pair (sorted) to
    the profile that wins it. lastUpdateTime moves only when something changed."""
    status = old.model_copy(deep=True)
    generation = item.generation if isinstance(item, Profile) else None
    if isinstance(item, InvalidProfile):
        status.tasks, status.drain_signal, status.pods, status.conflicts = None, None, 0, []
        status.task_deadline = None
        status.conditions = kstatus.apply(
            status.conditions,
            kstatus.of_profile(False, f"{item.message}: the profile describes no pod"),
            now,
            generation,
        )
        status.conditions = [c for c in status.conditions if c.type != C.COND_PROFILE_CONFLICT]
    else:
        status.tasks = describe_tasks(item.spec)
        status.drain_signal = describe_signal(item.spec)
        status.task_deadline = describe_deadline(item.spec)
        status.pods = found.pods.get(item.name, 0)
        overlaps = found.overlaps.get(item.name, {})
        status.conflicts = sorted(overlaps)[:64]
        status.conditions = kstatus.apply(
            status.conditions,
            kstatus.of_profile(True, f"describes {status.pods} instances"),
            now,
            generation,
        )
        if overlaps:
            parts = []
            for other in sorted(overlaps):
                n, example = overlaps[other]
                winner = winners.get(pair(item.name, other), "?")
                parts.append(
                    f"{n} instances (e.g. {example}) also match {other}; {winner}, the older,"
                    " describes them"
                )
            status.conditions = set_condition(
                status.conditions,
                C.COND_PROFILE_CONFLICT,
                True,
                C.REASON_OVERLAPPING_PROFILES,
                "; ".join(parts),
                now,
                generation,
            )
        else:
            status.conditions = set_condition(
                status.conditions,
                C.COND_PROFILE_CONFLICT,
                False,
                C.REASON_NO_OVERLAP,
                "no other profile matches its instances",
                now,
                generation,
            )
    status.observed_generation = generation
    status.last_update_time = old.last_update_time
    if status != old or old.last_update_time is None:
        status.last_update_time = now
    return status
