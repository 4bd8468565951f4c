"""kopf's start-up into a large cluster: linear in time, small in memory.

Until every indexed object has been indexed once, kopf runs no handler and no
daemon: its watchers make a toggle per new object in one operator-wide
`ToggleSet(all)`; each object's worker indexes its first event, drops its toggle
and waits on the set, holding that event. Measured on 1,000 nodes and 20,000 pods
(bench/README.md), kopf 1.45 as it is did not act within 240 s, and the events
held at the gate took the process to 825 MB (over the 512 MiB limit the Deployment had).

Two changes, installed before kopf starts (`install`):

- **The gate wakes its waiters only when it flips.** kopf notifies every waiter
  on every toggle made or dropped, and each waiter re-checks the whole set: about
  N² wake-ups for N objects. A waiter of a set waits for the set's state, and a
  toggle's own waiters for that toggle's, which adding or dropping another
  toggle never changes; so `FlipToggleSet` notifies on flips only.
- **Watch events are slimmed as they arrive**, before kopf queues them: no object
  keeps `metadata.managedFields` (neither kopf nor pitstop reads them), and the
  resources given a slimmer (pods: what the pod index and the serving gate read,
  `pitstop.cluster.indexes.watched_pod`) keep only what their handlers read.

Both reach into kopf's private modules; each stands down (kopf stays as it is)
if a kopf release no longer has the shape they expect.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.clients import watching

logger = logging.getLogger(__name__)

Slimmer = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A watched object (one of its kind) → what pitstop's handlers and kopf read of it."""

_ORIGINAL = aiotoggles.ToggleSet
_ORIGINAL_WATCH = watching.infinite_watch
OBJECT_EVENTS = frozenset({None, "ADDED", "MODIFIED", "DELETED"})
"""Events that carry an object: None is kopf's type for an object of the initial listing."""


class FlipToggleSet(_ORIGINAL):
    """A `ToggleSet` that wakes its waiters only when its state flips."""

    async def make_toggle(
        self, __val: bool = False, *, name: str | None = None
    ) -> aiotoggles.Toggle:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            self._notify_if_flipped(before)
        return toggle

    async def drop_toggle(self, toggle: aiotoggles.Toggle) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            self._notify_if_flipped(before)

    async def drop_toggles(self, toggles: Iterable[aiotoggles.Toggle]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            self._notify_if_flipped(before)

    def _notify_if_flipped(self, before: bool) -> None:
        if self.is_on() != before:
            self._condition.notify_all()


def slim_event(event: Any, slimmer: Slimmer | None) -> Any:
    """A raw watch event as kopf will keep it: without managedFields, and slimmed
    where its kind has a slimmer. kopf's own bookmarks and anything not an object
    event pass as they are."""
    if not isinstance(event, dict) or event.get("type") not in OBJECT_EVENTS:
        return event
    obj = event.get("object")
    if not isinstance(obj, dict):
        return event
    if slimmer is not None:
        return {**event, "object": slimmer(obj)}
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)  # freshly parsed, ours alone
    return event


def slimming_watch(slimmers: Mapping[str, Slimmer]) -> Callable[..., AsyncIterator[Any]]:
    """kopf's infinite_watch, each event slimmed (slimmers by "group/version/plural",
    the core group empty: "/v1/pods")."""

    async def infinite_watch(*, resource: Any, **kwargs: Any) -> AsyncIterator[Any]:
        slimmer = slimmers.get(f"{resource.group}/{resource.version}/{resource.plural}")
        async for event in _ORIGINAL_WATCH(resource=resource, **kwargs):
            yield slim_event(event, slimmer)

    return infinite_watch


def install(slimmers: Mapping[str, Slimmer]) -> tuple[bool, bool]:
    """Put both in place where kopf looks them up at call time. Returns which took."""
    probe = _ORIGINAL(all)
    gate = all(hasattr(probe, a) for a in ("_condition", "_toggles"))
    if gate:
        aiotoggles.ToggleSet = FlipToggleSet  # type: ignore[misc]
    else:
        logger.warning("kopf's ToggleSet changed shape: its start-up gate stays as kopf has it.")
    params = inspect.signature(_ORIGINAL_WATCH).parameters
    watch = inspect.isasyncgenfunction(_ORIGINAL_WATCH) and "resource" in params
    if watch:
        watching.infinite_watch = slimming_watch(slimmers)
    else:
        logger.warning("kopf's infinite_watch changed shape: watch events are kept whole.")
    return gate, watch
