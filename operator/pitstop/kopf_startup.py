"""kopf's start-up into a large cluster: linear in time, small in memory.

Until every indexed object has been indexed once, kopf runs no handler and no
daemon: its watchers make a toggle per new object in one operator-wide
`ToggleSet(all)`; each object's worker indexes its first event, drops its toggle
and waits on the set, holding that event. Measured on 1,000 nodes and 20,000 pods
(bench/README.md), kopf 1.45 as it is did not act within 240 s, and the events
held at the gate took the process to 825 MB (over the 512 MiB limit the Deployment had).

Three changes, installed before kopf starts (`install`):

- **The gate wakes its waiters only when it flips.** kopf notifies every waiter
  on every toggle made or dropped, and each waiter re-checks the whole set: about
  N² wake-ups for N objects. A waiter of a set waits for the set's state, and a
  toggle's own waiters for that toggle's, which adding or dropping another
  toggle never changes; so `FlipToggleSet` notifies on flips only.
- **The gate tells when it opens** (`on_open`): the events it held are freed
  then, and pitstop.heap gives the heap's peak back to the kernel.
- **Watch events are slimmed as they arrive**, before kopf queues them: no object
  keeps `metadata.managedFields` (neither kopf nor pitstop reads them), and the
  resources given a slimmer (pods: what the pod index and the serving gate read,
  `pitstop.cluster.indexes.watched_pod`) keep only what their handlers read.

Both reach into kopf's private modules (pyproject.toml pins kopf to the minor they
were written for, 1.45); each stands down with a warning (kopf stays as it is) if a
kopf release no longer has the modules or the shape they expect: a moved module
costs the start-up its speed, never `pitstop run` itself.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

Slimmer = Callable[[Mapping[str, Any]], dict[str, Any]]
"""A watched object (one of its kind) → what pitstop's handlers and kopf read of it."""


def _private(name: str) -> ModuleType | None:
    """One of kopf's private modules, or None (with the reason kept) if it moved."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        MISSING[name] = str(e)
        return None


MISSING: dict[str, str] = {}
"""kopf's private modules that could not be imported, and why."""
aiotoggles = _private("kopf._cogs.aiokits.aiotoggles")
watching = _private("kopf._cogs.clients.watching")
_ORIGINAL: Any = getattr(aiotoggles, "ToggleSet", object)
_ORIGINAL_WATCH: Any = getattr(watching, "infinite_watch", None)
OBJECT_EVENTS = frozenset({None, "ADDED", "MODIFIED", "DELETED"})
"""Events that carry an object: None is kopf's type for an object of the initial listing."""


class FlipToggleSet(_ORIGINAL):  # type: ignore[misc]
    """A `ToggleSet` that wakes its waiters only when its state flips; and, for an
    `all` set (kopf's start-up gate), calls `on_open` when it flips on."""

    on_open: Callable[[], None] | None = None
    """Set by install(): the start-up gate opened (pitstop.heap gives its peak back)."""

    async def make_toggle(self, __val: bool = False, *, name: str | None = None) -> Any:
        assert aiotoggles is not None  # install() uses this class only then
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            self._notify_if_flipped(before)
        return toggle

    async def drop_toggle(self, toggle: Any) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            self._notify_if_flipped(before)

    async def drop_toggles(self, toggles: Iterable[Any]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            self._notify_if_flipped(before)

    def _notify_if_flipped(self, before: bool) -> None:
        if self.is_on() != before:
            self._condition.notify_all()
            if not before and self._fn is all and FlipToggleSet.on_open is not None:
                FlipToggleSet.on_open()


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


def install(
    slimmers: Mapping[str, Slimmer], on_open: Callable[[], None] | None = None
) -> tuple[bool, bool]:
    """Put both in place where kopf looks them up at call time; `on_open` is called
    on the event loop whenever the start-up gate opens. Returns which took."""
    FlipToggleSet.on_open = on_open
    gate = False
    if aiotoggles is not None and _ORIGINAL is not object and hasattr(aiotoggles, "Toggle"):
        probe = _ORIGINAL(all)
        gate = all(hasattr(probe, a) for a in ("_condition", "_toggles", "is_on"))
    if gate:
        aiotoggles.ToggleSet = FlipToggleSet  # type: ignore[union-attr]
    else:
        logger.warning(
            f"kopf's ToggleSet is not where or as pitstop expects it{_why('aiotoggles')}: "
            "its start-up gate stays as kopf has it (slower on large clusters)."
        )
    watch = False
    if watching is not None and _ORIGINAL_WATCH is not None:
        params = inspect.signature(_ORIGINAL_WATCH).parameters
        watch = inspect.isasyncgenfunction(_ORIGINAL_WATCH) and "resource" in params
    if watch:
        watching.infinite_watch = slimming_watch(slimmers)  # type: ignore[union-attr]
    else:
        logger.warning(
            f"kopf's infinite_watch is not where or as pitstop expects it{_why('watching')}: "
            "watch events are kept whole."
        )
    return gate, watch


def _why(module: str) -> str:
    return "".join(f" ({reason})" for name, reason in MISSING.items() if name.endswith(module))
