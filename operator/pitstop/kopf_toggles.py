"""kopf's start-up gate, linear instead of quadratic in the objects it indexes.

Until every indexed object has been indexed once, kopf runs no handler and no
daemon: its watchers make a toggle per new object in one operator-wide
`ToggleSet(all)`, each object's worker drops its toggle once indexed and then
waits on the set. kopf (1.45) notifies every waiter on every toggle made or
dropped, and each waiter re-checks the whole set, so N objects cost about N²
wake-ups on the event loop: at 5,000 nodes and 20,000 pods, tens of seconds of
CPU during which a restarted or newly elected operator repairs nothing
(bench/README.md has the profile and the figures).

A waiter of a ToggleSet waits for the set's state (`is_on()`), and a toggle's own
waiters for that toggle's state, which adding or dropping another toggle never
changes. So waking them is only needed when the set's state flips; this subclass
does exactly that, and is installed in place of kopf's before kopf starts. It
keeps kopf's behaviour otherwise, reaches into two private attributes, and stands
down (kopf's own class stays) if a kopf release no longer has them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kopf._cogs.aiokits import aiotoggles

logger = logging.getLogger(__name__)

_ORIGINAL = aiotoggles.ToggleSet


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


def install() -> bool:
    """Put FlipToggleSet where kopf creates its toggle sets (it looks the class up in
    its module at call time). Returns whether it is in place."""
    probe = _ORIGINAL(all)
    if not all(hasattr(probe, a) for a in ("_condition", "_toggles")):
        logger.warning("kopf's ToggleSet changed shape: its start-up gate stays as kopf has it.")
        return False
    aiotoggles.ToggleSet = FlipToggleSet  # type: ignore[misc]
    return True
