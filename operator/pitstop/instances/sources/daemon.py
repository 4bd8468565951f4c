"""InstanceProfiles in the operator: the indexes (profiles by name, namespace labels),
the shared task poller, and the writer of every profile's status (Ready, Conflict,
the instances it describes). The rules themselves are pure, in the package's other
modules (pitstop.instances.sources).

Profiles get no daemon and no finalizer: a platform installs and removes them like
any configuration, whether or not the operator runs. One background task writes
all their statuses: after a profile changes, after a pod that a profile's
podSelector matches comes, changes or goes (passes at least STATUS_MIN_INTERVAL
apart: each one matches every pod), and every STATUS_PERIOD otherwise (a pod whose
labels stop matching, a namespace's labels)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from pitstop import constants, metrics, selectors
from pitstop.cluster.indexes import on_the_loop, wakeups
from pitstop.cluster.kube import ApiError, Kube, merge_patch
from pitstop.instances import contract as instances
from pitstop.instances.sources import census, matching
from pitstop.instances.sources.poller import TaskPoller
from pitstop.instances.sources.profiles import InvalidProfile, Profile, parse_profile
from pitstop.models import InstanceProfileStatus

C = constants
STATUS_PERIOD = 15.0
"""Seconds between two status passes when no profile changed."""
STATUS_DEBOUNCE = 0.5
"""A burst of profile events makes one pass."""
STATUS_MIN_INTERVAL = 2.0
"""Seconds between the starts of two passes at least: pods churn, and a pass matches
every pod of the cluster against every profile (some 0.1 s at 20,000 pods)."""
MEMO_POLLER = "taskpoller"


@dataclass(frozen=True)
class Indexed:
    """A profile as kept in the index: parsed, with the status it carries."""

    item: Profile | InvalidProfile
    status: Mapping[str, Any] = field(default_factory=dict)


@on_the_loop(kopf.index(C.GROUP, C.VERSION, C.INSTANCEPROFILE_PLURAL))
def profiles_by_name(body: kopf.Body, name: str, **_: Any) -> dict[str, Indexed]:
    return {name: Indexed(parse_profile(body), dict(body.get("status") or {}))}


@on_the_loop(kopf.index("namespaces"))
def namespace_labels(name: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, str]]:
    """namespace → its labels (what namespaceSelectors match), nothing else."""
    return {name: dict(body.get("metadata", {}).get("labels") or {})}


@on_the_loop(kopf.on.event(C.GROUP, C.VERSION, C.INSTANCEPROFILE_PLURAL))
def wake_on_profile(memo: kopf.Memo, **_: Any) -> None:
    """A profile changed: its status, and every node being drained, are decided again
    (a profile changed mid-drain applies at once, its old readings dropped)."""
    w = wakeups(memo)
    w.profiles.wake()
    poller = memo.get(MEMO_POLLER)
    for node in set(w.under_repair) | set(poller.nodes() if poller else ()):
        w.nodes.wake(node)


def wake_on_pod(
    body: kopf.Body, memo: kopf.Memo, profiles_by_name: kopf.Index[str, Any], **_: Any
) -> None:
    """A pod a profile's podSelector matches came, changed or went: the profiles'
    status (the instances each describes) follows it in the next pass. Called for
    every pod event by pitstop.handlers.on_pod_event."""
    labels = body.get("metadata", {}).get("labels") or {}
    if any(selectors.matches(p.pod_selector, labels) for p in usable(profiles_by_name)):
        wakeups(memo).profiles.wake()


def usable(profiles: kopf.Index[str, Any] | None) -> list[Profile]:
    """The valid profiles of the index."""
    found = []
    for store in profiles.values() if profiles is not None else ():
        for indexed in store:
            if isinstance(indexed.item, Profile):
                found.append(indexed.item)
    return found


def namespace_of(namespaces: kopf.Index[str, Any] | None, name: str) -> Mapping[str, str] | None:
    if namespaces is None:
        return None
    for labels in namespaces.get(name, ()):
        return labels  # type: ignore[no-any-return]
    return None


def match_pod(
    pod: Mapping[str, Any],
    profiles: list[Profile],
    namespaces: kopf.Index[str, Any] | None,
) -> matching.Match:
    meta = pod.get("metadata", {})
    return matching.match(
        profiles, meta.get("labels") or {}, namespace_of(namespaces, meta.get("namespace", ""))
    )


# --- the poller's lifetime, and the status writer ---


@kopf.on.startup()  # type: ignore[arg-type]  # kopf's protocols omit index kwargs
async def start_task_sources(
    memo: kopf.Memo,
    logger: kopf.Logger,
    profiles_by_name: kopf.Index[str, Any],
    pods_by_node: kopf.Index[str, Any],
    namespace_labels: kopf.Index[str, Any],
    **_: Any,
) -> None:
    """The poller every repair shares, and the status writer. kopf hands startup
    handlers its indexes empty; they are live views and fill as the watches list."""
    memo[MEMO_POLLER] = poller = TaskPoller(on_change=wakeups(memo).nodes.wake)
    metrics.SOURCE_FAILING.read = poller.failing
    writer = StatusWriter(memo, logger)
    memo["profile_status_task"] = asyncio.create_task(
        writer.run(profiles_by_name, pods_by_node, namespace_labels), name="profile-status"
    )


@kopf.on.cleanup()
async def stop_task_sources(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("profile_status_task")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    poller = memo.get(MEMO_POLLER)
    if poller is not None:
        metrics.SOURCE_FAILING.read = dict  # nothing polled any more
        await poller.close()


class StatusWriter:
    def __init__(self, memo: kopf.Memo, logger: kopf.Logger):
        self.memo = memo
        self.logger = logger

    @property
    def kube(self) -> Kube:
        """Set by the configure startup handler (startup handlers run in any order)."""
        return self.memo["kube"]  # type: ignore[no-any-return]

    async def run(
        self,
        profiles: kopf.Index[str, Any],
        pods_by_node: kopf.Index[str, Any],
        namespaces: kopf.Index[str, Any],
    ) -> None:
        writers = wakeups(self.memo).profiles
        waker = writers.register()
        loop = asyncio.get_running_loop()
        try:
            while True:
                waker.clear()
                started = loop.time()
                try:
                    await self.step(profiles, pods_by_node, namespaces, datetime.now(UTC))
                except (ApiError, OSError, TimeoutError) as e:
                    self.logger.warning(f"InstanceProfile status not written: {e}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), timeout=STATUS_PERIOD)
                spent = loop.time() - started
                await asyncio.sleep(max(STATUS_DEBOUNCE, STATUS_MIN_INTERVAL - spent))
        finally:
            writers.unregister(waker)

    async def step(
        self,
        profiles: kopf.Index[str, Any],
        pods_by_node: kopf.Index[str, Any],
        namespaces: kopf.Index[str, Any],
        now: datetime,
    ) -> None:
        indexed: list[Indexed] = [i for store in profiles.values() for i in store]
        if not indexed:
            return
        valid = [i.item for i in indexed if isinstance(i.item, Profile)]
        pods = [
            (instances.key(p), p["metadata"].get("labels") or {}, p["metadata"]["namespace"])
            for store in pods_by_node.values()
            for p in store
            if instances.is_instance(p)
        ]
        labels = {name: labels for name, store in namespaces.items() for labels in store}
        found = census.census(valid, pods, labels)
        win = matching.winners(valid)
        for i in indexed:
            try:
                old = InstanceProfileStatus.model_validate(dict(i.status))
            except ValidationError:
                old = InstanceProfileStatus()
            new = census.profile_status(i.item, found, win, old, now)
            wire, before = new.wire(), old.wire()
            if wire == before:
                continue
            try:
                await self.kube.patch_status(
                    C.INSTANCEPROFILE_PLURAL, i.item.name, merge_patch(dict(i.status), wire)
                )
            except ApiError as e:
                if e.status != 404:  # deleted meanwhile
                    raise
